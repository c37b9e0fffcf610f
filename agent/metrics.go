package agent

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metricsHandler serves GET /metrics in Prometheus' format: this agent's
// Raft state, the committed cluster state, every member's PostgreSQL as this
// agent last observed it, and the router's counters on the node serving it.
// Everything is read at scrape time; nothing is kept in global registries.
func (a *Agent) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(agentCollector{a})
	reg.MustRegister(routerCollector{a})
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

var (
	descRaftLeader    = prometheus.NewDesc("pgha_raft_leader", "1 if this agent is the Raft leader.", nil, nil)
	descRaftState     = prometheus.NewDesc("pgha_raft_state", "This agent's Raft state (1 for the current one).", []string{"state"}, nil)
	descRaftTerm      = prometheus.NewDesc("pgha_raft_term", "Current Raft term.", nil, nil)
	descRaftCommit    = prometheus.NewDesc("pgha_raft_commit_index", "Raft commit index.", nil, nil)
	descRaftApplied   = prometheus.NewDesc("pgha_raft_applied_index", "Raft index applied to this agent's cluster state.", nil, nil)
	descRaftContact   = prometheus.NewDesc("pgha_raft_last_contact_seconds", "Seconds since this follower last heard from the leader (0 on the leader).", nil, nil)
	descEpoch         = prometheus.NewDesc("pgha_cluster_epoch", "Committed epoch: it grows by one with every promotion (failover or switchover).", nil, nil)
	descPaused        = prometheus.NewDesc("pgha_cluster_paused", "1 while the cluster is paused (maintenance mode).", nil, nil)
	descMembers       = prometheus.NewDesc("pgha_cluster_members", "Members in the committed cluster state.", nil, nil)
	descLastBackup    = prometheus.NewDesc("pgha_last_backup_timestamp_seconds", "When the last backup pgha-agent backup took finished (Unix time; absent before the first).", []string{"tool"}, nil)
	descFenced        = prometheus.NewDesc("pgha_fenced", "1 while this agent is fenced (cut off from the Raft quorum).", nil, nil)
	descMemberPrimary = prometheus.NewDesc("pgha_member_primary", "1 for the committed primary.", []string{"member"}, nil)
	descMemberUp      = prometheus.NewDesc("pgha_member_agent_reachable", "1 if the member's agent answered this agent's last poll.", []string{"member"}, nil)
	descMemberPG      = prometheus.NewDesc("pgha_member_postgres_running", "1 if the member's PostgreSQL accepts connections.", []string{"member"}, nil)
	descMemberRecov   = prometheus.NewDesc("pgha_member_postgres_in_recovery", "1 if the member's PostgreSQL runs as a standby.", []string{"member"}, nil)
	descMemberTL      = prometheus.NewDesc("pgha_member_timeline", "The member's timeline.", []string{"member"}, nil)
	descMemberLagB    = prometheus.NewDesc("pgha_member_lag_bytes", "Standby replay lag behind the primary's last observed WAL position, in bytes.", []string{"member"}, nil)
	descMemberLagS    = prometheus.NewDesc("pgha_member_lag_seconds", "Standby replay lag in seconds: 0 when it has replayed all it received, else the age of its last replayed transaction.", []string{"member"}, nil)
	descMemberLSN     = prometheus.NewDesc("pgha_member_wal_position_bytes", "Primary: current WAL position; standby: replayed position.", []string{"member"}, nil)
)

type agentCollector struct{ a *Agent }

func (c agentCollector) Describe(ch chan<- *prometheus.Desc) {
	prometheus.DescribeByCollect(c, ch)
}

func (c agentCollector) Collect(ch chan<- prometheus.Metric) {
	a := c.a
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	if a.node == nil {
		return
	}
	gauge(descRaftLeader, b2f(a.node.IsLeader()))
	state := a.node.RaftState()
	for _, s := range []string{"leader", "follower", "candidate", "shutdown"} {
		gauge(descRaftState, b2f(s == state), s)
	}
	if term, err := strconv.ParseUint(a.node.Stats()["term"], 10, 64); err == nil {
		gauge(descRaftTerm, float64(term))
	}
	gauge(descRaftCommit, float64(a.node.CommitIndex()))
	gauge(descRaftApplied, float64(a.node.AppliedIndex()))
	if a.node.IsLeader() {
		gauge(descRaftContact, 0)
	} else if lc := a.node.LastContact(); !lc.IsZero() {
		gauge(descRaftContact, time.Since(lc).Seconds())
	}
	gauge(descFenced, b2f(a.fenced()))

	st := a.node.State()
	gauge(descEpoch, float64(st.Epoch))
	gauge(descPaused, b2f(st.Paused))
	gauge(descMembers, float64(len(st.Members)))
	if b := st.LastBackup; !b.Finished.IsZero() {
		gauge(descLastBackup, float64(b.Finished.Unix()), b.Tool)
	}
	obs := a.obs.snapshot()
	var primaryLSN float64
	if p, ok := obs[st.Primary]; ok && p.obs.Postgres.Running && !p.obs.Postgres.InRecovery {
		primaryLSN = float64(p.obs.Postgres.CurrentLSN)
	}
	for name := range st.Members {
		gauge(descMemberPrimary, b2f(name == st.Primary), name)
		v, ok := obs[name]
		if !ok {
			gauge(descMemberUp, 0, name)
			continue
		}
		pg := v.obs.Postgres
		gauge(descMemberUp, b2f(v.reachable), name)
		gauge(descMemberPG, b2f(pg.Running), name)
		gauge(descMemberRecov, b2f(pg.InRecovery), name)
		if pg.Timeline != 0 {
			gauge(descMemberTL, float64(pg.Timeline), name)
		}
		if !pg.Running {
			continue
		}
		if !pg.InRecovery {
			gauge(descMemberLSN, float64(pg.CurrentLSN), name)
			continue
		}
		gauge(descMemberLSN, float64(pg.ReplayedLSN), name)
		if primaryLSN > 0 {
			gauge(descMemberLagB, max(0, primaryLSN-float64(pg.ReplayedLSN)), name)
		}
		lagS := 0.0
		if pg.ReceivedLSN > pg.ReplayedLSN && !pg.ReplayTime.IsZero() {
			lagS = max(0, v.obs.At.Sub(pg.ReplayTime).Seconds())
		}
		gauge(descMemberLagS, lagS, name)
	}
}

// routerCollector forwards to the router's own collector while this node
// serves one; on other nodes it reports nothing.
type routerCollector struct{ a *Agent }

func (c routerCollector) Describe(chan<- *prometheus.Desc) {} // unchecked: the router comes and goes with leadership

func (c routerCollector) Collect(ch chan<- prometheus.Metric) {
	f := &c.a.front
	f.mu.Lock()
	rt := f.rt
	f.mu.Unlock()
	if rt != nil {
		rt.Collector().Collect(ch)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

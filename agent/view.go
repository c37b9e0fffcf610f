package agent

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
)

// ClusterView is the body of GET /cluster: Patroni's shape ({"members": [...],
// "pause": ...}) so existing scripts keep working, plus pgha's own fields.
type ClusterView struct {
	Scope        string   `json:"scope,omitempty"`
	ClusterID    string   `json:"cluster_id"`
	SystemID     string   `json:"system_identifier,omitempty"` // a string: 64-bit ids do not survive JSON numbers in JavaScript
	Epoch        uint64   `json:"epoch"`
	Pause        bool     `json:"pause"`
	SyncStandbys []string `json:"sync_standbys"`
	RaftLeader   string   `json:"raft_leader"`
	// RaftTerm is the Raft term as the answering agent knows it.
	RaftTerm uint64 `json:"raft_term,omitempty"`
	// VIPHolders are the members whose agents report the VIP on their
	// interface (more than one only while a frozen holder is taken over).
	VIPHolders []string       `json:"vip_holders,omitempty"`
	Members    []MemberStatus `json:"members"`
	Problems   []string       `json:"problems,omitempty"` // why the cluster is not converged, if known
	Waiting    string         `json:"waiting,omitempty"`  // why the leader holds back (no safe candidate, paused...)
	// ScheduledSwitchover is Patroni's: a switchover planned for later.
	ScheduledSwitchover *ScheduledSwitchoverView `json:"scheduled_switchover,omitempty"`
	// LastBackup is the last backup pgha-agent backup took (nil: none).
	LastBackup *consensus.BackupRecord `json:"last_backup,omitempty"`
}

// ScheduledSwitchoverView is ClusterView's scheduled switchover ("to" is
// empty for the best standby at that time).
type ScheduledSwitchoverView struct {
	At   time.Time `json:"at"`
	From string    `json:"from"`
	To   string    `json:"to,omitempty"`
}

// MemberStatus is one member in ClusterView. The first eight fields are Patroni's.
type MemberStatus struct {
	Name     string `json:"name"`
	Role     string `json:"role"`  // leader / sync_standby / replica
	State    string `json:"state"` // running / streaming / in archive recovery / starting / stopped / initdb / cloning / unknown
	APIURL   string `json:"api_url"`
	Host     string `json:"host"` // PostgreSQL address
	Port     int    `json:"port"`
	Timeline uint32 `json:"timeline,omitempty"`
	Lag      *Lag   `json:"lag,omitempty"` // bytes behind the primary's current LSN; "unknown" when it cannot be computed

	RaftRole    string       `json:"raft_role"`
	Reachable   bool         `json:"reachable"` // its agent answered the last poll
	LSN         postgres.LSN `json:"lsn"`       // current (primary) or replayed (standby) WAL position
	ReceivedLSN postgres.LSN `json:"received_lsn,omitempty"`
	ReplayedLSN postgres.LSN `json:"replayed_lsn,omitempty"`
	Epoch       uint64       `json:"epoch"` // the epoch this member's agent has applied
	NoFailover  bool         `json:"nofailover,omitempty"`
	NoSync      bool         `json:"nosync,omitempty"`
	NoLoadBal   bool         `json:"noloadbalance,omitempty"`
	CloneFrom   bool         `json:"clonefrom,omitempty"`
	Priority    int          `json:"priority,omitempty"`
	Activity    string       `json:"activity,omitempty"`
	Problem     string       `json:"problem,omitempty"`
	RejoinedBy  string       `json:"rejoined_by,omitempty"` // rewind, clone, or follow (no rewind needed): how it last rejoined after being primary
	// KeptDataDirs are data directories re-clones replaced, kept aside on
	// that host as evidence (paths there), oldest first.
	KeptDataDirs []string `json:"kept_data_dirs,omitempty"`
	// PendingRestart are PostgreSQL settings changed (the cluster-wide
	// configuration) that take effect only when this member restarts.
	PendingRestart []string `json:"pending_restart,omitempty"`
	// ScheduledRestart is Patroni's: a restart of this member planned for
	// later (pgha-agent restart --scheduled).
	ScheduledRestart *consensus.ScheduledRestart `json:"scheduled_restart,omitempty"`
	// CallbackProblem is the member's last callback failure (callbacks.go).
	CallbackProblem string `json:"callback_problem,omitempty"`
	// Fenced: its agent reports its lease ran out (PostgreSQL frozen).
	Fenced bool `json:"fenced,omitempty"`
	// Upstream is the member whose PostgreSQL this standby's WAL receiver
	// connects to ("" when none, or an address that is no member's).
	Upstream string `json:"upstream,omitempty"`
	// Backup is the member's backup run (pgha-agent backup): running, or
	// its last one.
	Backup *BackupStatus `json:"backup,omitempty"`
	// RaftSuffrage is "voter" or "nonvoter" in the Raft configuration the
	// answering agent knows, "" when the member is not in it.
	RaftSuffrage string `json:"raft_suffrage,omitempty"`
}

// Lag is a byte count, or unknown. It marshals as Patroni does: a number or "unknown".
type Lag struct {
	Bytes   int64
	Unknown bool
}

func (l Lag) MarshalJSON() ([]byte, error) {
	if l.Unknown {
		return []byte(`"unknown"`), nil
	}
	return []byte(strconv.FormatInt(l.Bytes, 10)), nil
}

func (l *Lag) UnmarshalJSON(b []byte) error {
	if string(b) == `"unknown"` {
		*l = Lag{Unknown: true}
		return nil
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("lag: want a number or \"unknown\", got %s", b)
	}
	*l = Lag{Bytes: n}
	return nil
}

func (l *Lag) String() string {
	if l == nil {
		return ""
	}
	if l.Unknown {
		return "unknown"
	}
	return strconv.FormatInt(l.Bytes, 10)
}

// buildView combines the committed state with the latest observations.
func buildView(scope, raftLeader string, st consensus.State, obs map[string]memberView) ClusterView {
	v := ClusterView{
		Scope:        scope,
		ClusterID:    st.ClusterID,
		Epoch:        st.Epoch,
		Pause:        st.Paused,
		SyncStandbys: append([]string{}, st.SyncStandbys...),
		RaftLeader:   raftLeader,
	}
	if st.SystemID != 0 {
		v.SystemID = strconv.FormatUint(st.SystemID, 10)
	}
	if sw := st.ScheduledSwitchover; !sw.At.IsZero() {
		v.ScheduledSwitchover = &ScheduledSwitchoverView{At: sw.At, From: sw.From, To: sw.To}
	}
	if b := st.LastBackup; !b.Finished.IsZero() {
		v.LastBackup = &b
	}
	if l, ok := obs[raftLeader]; ok && l.reachable {
		v.Waiting = l.obs.LeaderWaiting
	}
	var primaryLSN postgres.LSN
	if p, ok := obs[st.Primary]; ok && p.reachable && p.obs.Postgres.Running && !p.obs.Postgres.InRecovery {
		primaryLSN = p.obs.Postgres.CurrentLSN
	}
	for name, m := range st.Members {
		o := obs[name]
		if o.reachable && o.obs.VIPHeld {
			v.VIPHolders = append(v.VIPHolders, name)
		}
		ms := MemberStatus{
			Name:       name,
			Role:       roleOf(st, name),
			APIURL:     m.APIURL,
			Host:       m.PGHost,
			Port:       m.PGPort,
			Reachable:  o.reachable,
			RaftRole:   o.obs.RaftState,
			Epoch:      o.obs.Epoch,
			NoFailover: m.NoFailover,
			NoSync:     m.NoSync,
			NoLoadBal:  m.NoLoadBalance,
			CloneFrom:  m.CloneFrom,
			Priority:   m.Priority,
			Activity:   o.obs.Activity,
			Problem:    o.obs.Problem,
			RejoinedBy: o.obs.LastRejoin,

			KeptDataDirs:    o.obs.KeptDataDirs,
			PendingRestart:  o.obs.Postgres.PendingRestart,
			CallbackProblem: o.obs.CallbackProblem,
			Fenced:          o.reachable && o.obs.Fenced,
			Backup:          o.obs.Backup,
		}
		if sr, ok := st.ScheduledRestarts[name]; ok {
			ms.ScheduledRestart = &sr
		}
		pg := o.obs.Postgres
		ms.State = stateOf(o, name == st.Primary)
		if !o.reachable {
			ms.RaftRole = "unknown"
			if ms.Problem == "" && o.err != "" {
				ms.Problem = "agent unreachable: " + o.err
			}
		}
		if o.reachable && pg.Running && pg.InRecovery {
			ms.Upstream = memberAt(st, pg.UpstreamHost, pg.UpstreamPort)
		}
		if o.reachable && pg.Running {
			ms.Timeline = pg.Timeline
			if pg.InRecovery {
				ms.LSN = pg.ReplayedLSN
				ms.ReceivedLSN = pg.ReceivedLSN
				ms.ReplayedLSN = pg.ReplayedLSN
			} else {
				ms.LSN = pg.CurrentLSN
			}
		}
		if name != st.Primary {
			switch {
			case o.reachable && pg.Running && pg.InRecovery && primaryLSN != 0:
				lag := int64(primaryLSN) - int64(pg.ReplayedLSN)
				if lag < 0 {
					lag = 0
				}
				ms.Lag = &Lag{Bytes: lag}
			default:
				ms.Lag = &Lag{Unknown: true}
			}
		}
		if ms.Problem != "" {
			v.Problems = append(v.Problems, name+": "+ms.Problem)
		}
		v.Members = append(v.Members, ms)
	}
	sort.Slice(v.Members, func(i, j int) bool { return v.Members[i].Name < v.Members[j].Name })
	sort.Strings(v.Problems)
	sort.Strings(v.VIPHolders)
	if why := safetyDisagreement(obs); why != "" {
		v.Problems = append([]string{why}, v.Problems...)
	}
	if !st.Initialized() {
		v.Problems = append(v.Problems, "cluster not initialised yet: waiting for the Raft leader to choose the first primary")
	}
	return v
}

// memberAt is the member whose PostgreSQL listens at host:port, or "".
func memberAt(st consensus.State, host string, port int) string {
	if host == "" {
		return ""
	}
	for name, m := range st.Members {
		if m.PGHost == host && m.PGPort == port {
			return name
		}
	}
	return ""
}

func roleOf(st consensus.State, name string) string {
	if name == st.Primary {
		return "leader"
	}
	for _, s := range st.SyncStandbys {
		if s == name {
			return "sync_standby"
		}
	}
	return "replica"
}

func stateOf(o memberView, isPrimary bool) string {
	if !o.reachable {
		return "unknown"
	}
	if o.obs.Activity != "" {
		return o.obs.Activity
	}
	pg := o.obs.Postgres
	switch {
	case !pg.Running:
		return "stopped"
	case !pg.InRecovery:
		return "running"
	case pg.Streaming:
		return "streaming"
	case isPrimary:
		return "starting" // a primary still in recovery is being promoted
	default:
		return "in archive recovery"
	}
}

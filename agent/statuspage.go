package agent

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/pgha/pgha/agent/statuspage"
	"github.com/pgha/pgha/consensus"
)

// The status page (issue 22): GET / serves the page (agent/statuspage),
// GET /ui/{file} its script and style sheet, and GET /status the JSON it
// polls. All three are readable where /cluster is (guardInternal). The page
// changes nothing itself: its switchover, pause and resume buttons call
// POST /switchover, /pause and /resume, which need the token or a cluster
// certificate as for the CLI.

// statusEvents is how many timeline events GET /status sends.
const statusEvents = 100

// StatusReport is the body of GET /status.
type StatusReport struct {
	Node           string      `json:"node"` // the agent that answered
	AgentStarted   time.Time   `json:"agent_started"`
	HealthInterval float64     `json:"health_interval_seconds"`
	AuthRequired   bool        `json:"auth_required"` // control calls need the token or a cluster certificate
	Cluster        ClusterView `json:"cluster"`
	// Lag is every standby's lag history (laghistory.go) from the step
	// ?since= (Unix milliseconds) on, at most the last hour.
	Lag       map[string][]LagPoint `json:"lag"`
	LagWindow float64               `json:"lag_window_seconds"`
	// Events are the replicated history and this agent's observations,
	// newest first (events.go).
	Events []Event `json:"events"`
	// Router is the router's counters, from the Raft leader that runs it;
	// RouterError says why they are missing.
	Router      *RouterStatus `json:"router,omitempty"`
	RouterError string        `json:"router_error,omitempty"`
}

// RouterStatus is the router's counters (SHOW STATS, SHOW POOLS) as the
// status page shows them. They are totals since the router started (on
// this leader): the page turns them into rates between two polls.
type RouterStatus struct {
	Node             string       `json:"node"`
	At               time.Time    `json:"at"`
	ClientsActive    int          `json:"clients_active"`
	ReadsToStandby   int64        `json:"reads_to_standby"`
	ReadsToPrimary   int64        `json:"reads_to_primary"`
	WritesToPrimary  int64        `json:"writes_to_primary"`
	PoolWaits        int64        `json:"pool_waits"`
	PoolWaitTimeouts int64        `json:"pool_wait_timeouts"`
	Pools            []RouterPool `json:"pools"`
}

// RouterPool is one pool of server connections.
type RouterPool struct {
	Member       string  `json:"member,omitempty"` // whose PostgreSQL it connects to
	Backend      string  `json:"backend"`
	Database     string  `json:"database"`
	User         string  `json:"user"`
	Active       int     `json:"active"`
	Idle         int     `json:"idle"`
	Waiting      int64   `json:"waiting"` // clients queued for a connection now
	Waits        int64   `json:"waits"`   // acquisitions that queued, in total
	MaxWaitMS    float64 `json:"max_wait_ms"`
	Transactions int64   `json:"transactions"`
}

func (a *Agent) statusRoutes(mux *http.ServeMux) {
	// Exactly "/": every other unknown path keeps the JSON 404.
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		pageHeaders(w, "text/html; charset=utf-8")
		_, _ = w.Write(statuspage.Index())
	})
	mux.HandleFunc("GET /ui/{file}", func(w http.ResponseWriter, r *http.Request) {
		b, ct, ok := statuspage.Asset(r.PathValue("file"))
		if !ok {
			writeJSON(w, http.StatusNotFound, apiError{Error: "no such file: " + r.URL.Path})
			return
		}
		pageHeaders(w, ct)
		_, _ = w.Write(b)
	})
	mux.HandleFunc("GET /status", a.handleStatus)
	mux.HandleFunc("GET /internal/router", func(w http.ResponseWriter, r *http.Request) {
		rs := a.routerStatus()
		if rs == nil {
			writeJSON(w, http.StatusNotFound, apiError{Error: a.cfg.Name + " runs no router (only the Raft leader does)"})
			return
		}
		writeJSON(w, http.StatusOK, rs)
	})
}

// pageHeaders keep the page self-contained and unframeable: it may load
// nothing from anywhere but this agent (no CDN can slip in), and no other
// site may frame it to trick a click on its buttons.
func pageHeaders(w http.ResponseWriter, contentType string) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cache-Control", "no-cache") // a new binary's page is picked up at once
}

// clusterView is GET /cluster's body: the committed state and the latest
// observations (buildView), plus what only this agent's Raft node knows.
func (a *Agent) clusterView() ClusterView {
	leader, _ := a.node.Leader()
	v := buildView(a.cfg.Cluster.Name, leader, a.node.State(), a.obs.snapshot())
	v.RaftTerm = a.node.Term()
	if servers, err := a.node.Servers(); err == nil {
		suffrage := map[string]string{}
		for _, s := range servers {
			suffrage[s.ID] = "voter"
			if s.NonVoter {
				suffrage[s.ID] = "nonvoter"
			}
		}
		for i := range v.Members {
			v.Members[i].RaftSuffrage = suffrage[v.Members[i].Name]
		}
	}
	return v
}

func (a *Agent) handleStatus(w http.ResponseWriter, r *http.Request) {
	since, _ := strconv.ParseInt(r.URL.Query().Get("since"), 10, 64)
	now := time.Now()
	rep := StatusReport{
		Node:           a.cfg.Name,
		AgentStarted:   a.started,
		HealthInterval: a.timing().HealthInterval.Seconds(),
		AuthRequired:   a.authConfigured(),
		Cluster:        a.clusterView(),
		Lag:            a.lags.since(now, since),
		LagWindow:      lagWindow.Seconds(),
		Events:         timeline(a.node.State().History, a.events.recent(), statusEvents),
	}
	rep.Router, rep.RouterError = a.leaderRouterStatus(r.Context())
	// Compact, unlike the other endpoints: a page's first poll carries up
	// to an hour of points per standby, and indenting would triple it.
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(rep)
}

// leaderRouterStatus is the router's counters: this node's when it runs
// the router, else asked of the Raft leader (GET /internal/router, with
// this agent's own credentials: the caller was authorised for /status).
func (a *Agent) leaderRouterStatus(ctx context.Context) (*RouterStatus, string) {
	if rs := a.routerStatus(); rs != nil {
		return rs, ""
	}
	if a.node.IsLeader() {
		return nil, "the router is not serving on the leader (starting, or fenced)"
	}
	base, err := a.leaderAPI()
	if err != nil {
		return nil, err.Error()
	}
	// Short: the page must not wait on a leader that does not answer.
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var rs RouterStatus
	if err := getJSON(ctx, a.http, base+"/internal/router", &rs); err != nil {
		return nil, "router counters from the leader: " + err.Error()
	}
	return &rs, ""
}

// routerStatus is this node's router's counters, nil when it runs none.
func (a *Agent) routerStatus() *RouterStatus {
	a.front.mu.Lock()
	rt := a.front.rt
	a.front.mu.Unlock()
	if rt == nil {
		return nil
	}
	s := rt.Snapshot()
	st := a.node.State()
	rs := &RouterStatus{
		Node: a.cfg.Name, At: time.Now(), ClientsActive: s.ClientsActive,
		ReadsToStandby: s.ReadsToStandby, ReadsToPrimary: s.ReadsToPrimary, WritesToPrimary: s.WritesToPrimary,
		PoolWaits: s.PoolWaits, PoolWaitTimeouts: s.PoolWaitTimeouts, Pools: []RouterPool{},
	}
	for _, p := range s.Pools {
		rp := RouterPool{Backend: p.Backend, Database: p.Database, User: p.User, Active: p.Active, Idle: p.Idle,
			Waiting: p.Waiting, Waits: p.Waits, MaxWaitMS: float64(p.MaxWait) / float64(time.Millisecond), Transactions: p.Transactions}
		if host, port, err := net.SplitHostPort(p.Backend); err == nil {
			n, _ := strconv.Atoi(port)
			rp.Member = memberAt(st, host, n)
		}
		rs.Pools = append(rs.Pools, rp)
	}
	return rs
}

// recordStatus feeds the status page's memory from one observation round:
// the lag history and the observed events.
func (a *Agent) recordStatus(now time.Time, st consensus.State) {
	obs := a.obs.snapshot()
	a.lags.sample(now, st, obs)
	leader, _ := a.node.Leader()
	a.events.observe(now, factsOf(leader, a.node.Term(), obs))
}

package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
)

// The REST API. Health endpoints are Patroni's, with Patroni's status codes,
// so HAProxy and Kubernetes checks written for Patroni work unchanged; they
// answer GET, HEAD and OPTIONS (HAProxy's "option httpchk OPTIONS /primary").

const maxBody = 64 << 10 // REST request bodies are small JSON documents

type apiError struct {
	Error string `json:"error"`
}

func (a *Agent) routes() http.Handler {
	mux := http.NewServeMux()
	health := map[string]func(r *http.Request, h localHealth) bool{
		"/primary":   func(_ *http.Request, h localHealth) bool { return h.primaryOK() },
		"/leader":    func(_ *http.Request, h localHealth) bool { return h.primaryOK() },
		"/master":    func(_ *http.Request, h localHealth) bool { return h.primaryOK() },
		"/replica":   a.replicaCheck,
		"/read-only": func(_ *http.Request, h localHealth) bool { return h.primaryOK() || h.replicaOK() },
		"/health":    func(_ *http.Request, h localHealth) bool { return h.pg.Running },
		"/readiness": func(_ *http.Request, h localHealth) bool { return h.primaryOK() || (h.pg.Running && h.pg.InRecovery) },
	}
	for path, ok := range health {
		mux.HandleFunc(path, a.healthHandler(ok))
	}
	mux.HandleFunc("/liveness", a.handleLiveness)
	mux.HandleFunc("GET /cluster", a.handleCluster)
	mux.HandleFunc("GET /history", a.handleHistory)
	mux.HandleFunc("GET /config", a.handleConfig)
	mux.Handle("GET /metrics", a.metricsHandler())
	mux.HandleFunc("GET /internal/observation", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.observeSelf(r.Context()))
	})
	mux.HandleFunc("GET /internal/raft", func(w http.ResponseWriter, r *http.Request) {
		leader, _ := a.node.Leader()
		info := raftInfo{Name: a.cfg.Name, HasState: a.node.HasState(), State: a.node.RaftState(), Leader: leader, CommitIndex: a.node.CommitIndex(),
			LeaderContactAgo: time.Since(a.node.LeaderContact())}
		if term, err := strconv.ParseUint(r.URL.Query().Get("term"), 10, 64); err == nil {
			// A leader just elected in term asks about the leaders before it.
			info.LeaderContactAgo = time.Since(a.node.LeaderContactBefore(term))
		}
		if servers, err := a.node.Servers(); err == nil {
			for _, s := range servers {
				if s.NonVoter {
					info.NonVoters = append(info.NonVoters, s.ID)
				} else {
					info.Voters = append(info.Voters, s.ID)
				}
			}
		}
		writeJSON(w, http.StatusOK, info)
	})
	mux.HandleFunc("POST /internal/removed", a.authorized(func(w http.ResponseWriter, r *http.Request) {
		// A hint only: the register loop checks with the leader before it believes it.
		select {
		case a.removalHint <- struct{}{}:
		default:
		}
		writeJSON(w, http.StatusAccepted, map[string]string{"status": "checking"})
	}))
	mux.HandleFunc("POST /internal/join", a.authorized(a.handleJoin))
	// For router-only processes (topologyapi.go): a cluster certificate or the token.
	mux.HandleFunc("GET /router/topology", a.authorized(a.handleRouterTopology))
	a.controlRoutes(mux)
	a.statusRoutes(mux)
	mux.HandleFunc("DELETE /members/{name}", a.authorized(a.handleRemove))
	mux.HandleFunc("POST /members/{name}/voter", a.authorized(a.handleSuffrage(true)))
	mux.HandleFunc("DELETE /members/{name}/voter", a.authorized(a.handleSuffrage(false)))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, apiError{Error: fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path)})
	})
	return refuseCrossSite(a.guardInternal(mux)) // who may call what: auth.go
}

// refuseCrossSite refuses a state-changing call that a browser sends on
// behalf of another site's page (cross-site request forgery): since the
// status page, operators' browsers may hold the cluster's client
// certificate, which the browser would attach to a form another site
// posts here. The agents, the CLI and scripts send no Origin or
// Sec-Fetch-Site header and are not affected; the page's own calls are
// same-origin.
func refuseCrossSite(next http.Handler) http.Handler {
	p := http.NewCrossOriginProtection()
	p.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusForbidden, apiError{Error: fmt.Sprintf("refused %s %s: a cross-origin request from a browser (another site's page may not change the cluster)", r.Method, r.URL.Path)})
	}))
	return p.Handler(next)
}

// localHealth is what the health endpoints judge: this node's PostgreSQL
// right now and its view of the committed state.
type localHealth struct {
	name        string
	pg          postgres.Status
	st          consensus.State
	fenced      bool
	synchronous bool   // failover.synchronous_mode
	diverged    string // why this standby's WAL left the primary's history ("" if it did not)
}

// primaryOK is stricter than Patroni: 200 only while this node is the
// committed primary of the current epoch, holds its lease (not fenced), its
// PostgreSQL runs out of recovery, and in synchronous mode its
// synchronous_standby_names names only members of the committed set (DESIGN
// "No acknowledgement without the synchronous set"). (Patroni answers 200
// from a leader whose postmaster is dead; a load balancer would then send
// writes nowhere.)
func (h localHealth) primaryOK() bool {
	if h.st.Primary != h.name || h.fenced || !h.pg.Running || h.pg.InRecovery {
		return false
	}
	ok, _ := syncSafe(h.synchronous, h.st, h.name, h.pg.SyncStandbyNames)
	return ok
}

// replicaOK: a running standby that replays the committed primary's WAL:
// streaming from it, and not diverged from its timeline (DESIGN "Rewind
// before rejoin": a standby that is not replaying the current primary's WAL
// gets no 200 and no reads).
func (h localHealth) replicaOK() bool {
	if h.st.Primary == h.name || !h.pg.Running || !h.pg.InRecovery || h.diverged != "" {
		return false
	}
	return streamsFrom(h.pg, h.st)
}

// streamsFrom reports whether a standby's WAL receiver streams from the
// committed primary.
func streamsFrom(pg postgres.Status, st consensus.State) bool {
	p, ok := st.Members[st.Primary]
	return ok && pg.Streaming && pg.UpstreamHost == p.PGHost && pg.UpstreamPort == p.PGPort
}

func (a *Agent) localHealth(ctx context.Context) localHealth {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	diverged, _ := a.forked.Load().(string)
	pg := a.pgStatus(ctx)
	if a.replay.stalled(pg, time.Now()) != "" {
		pg.Streaming = false // receiving, not replaying: no reads from it
	}
	return localHealth{
		name:        a.cfg.Name,
		pg:          pg,
		st:          a.node.State(),
		fenced:      a.fenced(),
		synchronous: a.failover().Synchronous(),
		diverged:    diverged,
	}
}

func (a *Agent) healthHandler(ok func(*http.Request, localHealth) bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
		default:
			w.Header().Set("Allow", "GET, HEAD, OPTIONS")
			writeJSON(w, http.StatusMethodNotAllowed, apiError{Error: r.Method + " is not allowed on " + r.URL.Path})
			return
		}
		if err := r.ParseForm(); err != nil {
			writeJSON(w, http.StatusBadRequest, apiError{Error: err.Error()})
			return
		}
		if lag := r.Form.Get("lag"); lag != "" {
			if _, err := parseBytes(lag); err != nil {
				writeJSON(w, http.StatusBadRequest, apiError{Error: "lag: " + err.Error()})
				return
			}
		}
		h := a.localHealth(r.Context())
		code := http.StatusServiceUnavailable
		if ok(r, h) {
			code = http.StatusOK
		}
		writeJSON(w, code, a.healthBody(h))
	}
}

// replicaCheck is /replica: a running standby, and with ?lag=N no more than
// N bytes behind the primary's last observed position.
func (a *Agent) replicaCheck(r *http.Request, h localHealth) bool {
	// Tagged noloadbalance: load balancers send it no reads (as Patroni).
	if !h.replicaOK() || h.st.Members[h.name].NoLoadBalance {
		return false
	}
	raw := r.Form.Get("lag")
	if raw == "" {
		return true
	}
	max, _ := parseBytes(raw) // validated by the handler
	lag, known := a.replicationLag(h)
	return known && lag <= max
}

// replicationLag is how far this standby's replay is behind the primary's
// current LSN as last observed.
func (a *Agent) replicationLag(h localHealth) (int64, bool) {
	p, ok := a.obs.snapshot()[h.st.Primary]
	if !ok || !p.reachable || !p.obs.Postgres.Running || p.obs.Postgres.InRecovery {
		return 0, false
	}
	lag := int64(p.obs.Postgres.CurrentLSN) - int64(h.pg.ReplayedLSN)
	if lag < 0 {
		lag = 0
	}
	return lag, true
}

type healthBody struct {
	Name     string `json:"name"`
	State    string `json:"state"`
	Role     string `json:"role"`
	Epoch    uint64 `json:"epoch"`
	Timeline uint32 `json:"timeline,omitempty"`
	Fenced   bool   `json:"fenced,omitempty"`
	Lag      *Lag   `json:"lag,omitempty"`
}

func (a *Agent) healthBody(h localHealth) healthBody {
	b := healthBody{Name: h.name, Role: "replica", Epoch: h.st.Epoch, Fenced: h.fenced, Timeline: h.pg.Timeline}
	if h.st.Primary == h.name {
		b.Role = "primary"
	} else if lag, ok := a.replicationLag(h); ok {
		b.Lag = &Lag{Bytes: lag}
	}
	b.State = stateOf(memberView{reachable: true, obs: Observation{Postgres: h.pg}}, h.st.Primary == h.name)
	return b
}

func (a *Agent) handleLiveness(w http.ResponseWriter, r *http.Request) {
	last := time.Unix(0, a.lastLoop.Load())
	limit := 5*a.timing().LoopInterval + 10*time.Second
	if time.Since(last) > limit {
		writeJSON(w, http.StatusServiceUnavailable, apiError{Error: fmt.Sprintf("reconcile loop last ran %s ago", time.Since(last).Round(time.Millisecond))})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "alive"})
}

func (a *Agent) handleCluster(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.clusterView())
}

// HistoryEntry is one promotion as GET /history shows it (Patroni's
// history: timeline, LSN, reason, time, new leader; plus the epoch, the
// old primary and the kind).
type HistoryEntry struct {
	Epoch    uint64    `json:"epoch"`
	Timeline uint32    `json:"timeline,omitempty"`
	LSN      string    `json:"lsn,omitempty"`
	At       time.Time `json:"at,omitzero"`
	From     string    `json:"from,omitempty"`
	Primary  string    `json:"primary"`
	Kind     string    `json:"kind,omitempty"`
	Reason   string    `json:"reason,omitempty"`
}

// historyEntries turns the committed history into what GET /history shows.
func historyEntries(st consensus.State) []HistoryEntry {
	out := make([]HistoryEntry, 0, len(st.History))
	for _, p := range st.History {
		e := HistoryEntry{Epoch: p.Epoch, Timeline: p.Timeline, At: p.At, From: p.From, Primary: p.Primary, Kind: p.Kind, Reason: p.Reason}
		if p.LSN != 0 {
			e.LSN = postgres.LSN(p.LSN).String()
		}
		out = append(out, e)
	}
	return out
}

// handleHistory lists the committed promotions, oldest first.
func (a *Agent) handleHistory(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, historyEntries(a.node.State()))
}

// handleJoin adds a member; a follower forwards the request to the leader.
func (a *Agent) handleJoin(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	var m consensus.Member
	if err := json.Unmarshal(body, &m); err != nil || m.Name == "" || m.RaftAddr == "" {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "body must be a member: {\"name\", \"raft_addr\", \"api_url\", \"pg_host\", \"pg_port\"}"})
		return
	}
	if !nameRE.MatchString(m.Name) {
		writeJSON(w, http.StatusBadRequest, apiError{Error: fmt.Sprintf("member name %q is not valid", m.Name)})
		return
	}
	if !a.node.IsLeader() {
		a.forwardToLeader(w, r, body)
		return
	}
	if err := a.join(r.Context(), m); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"joined": m.Name})
}

func (a *Agent) handleRemove(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !a.node.IsLeader() {
		a.forwardToLeader(w, r, nil)
		return
	}
	if name == a.node.State().Primary {
		writeJSON(w, http.StatusConflict, apiError{Error: fmt.Sprintf("%s is the primary; switch over first", name)})
		return
	}
	if _, ok := a.node.State().Members[name]; !ok {
		writeJSON(w, http.StatusNotFound, apiError{Error: fmt.Sprintf("no member named %q", name)})
		return
	}
	if err := a.remove(r.Context(), name); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"removed": name})
}

// handleSuffrage gives a member a Raft vote (POST /members/NAME/voter) or
// takes it away (DELETE), on the leader (setSuffrage).
func (a *Agent) handleSuffrage(voter bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if !a.node.IsLeader() {
			a.forwardToLeader(w, r, nil)
			return
		}
		if _, ok := a.node.State().Members[name]; !ok {
			writeJSON(w, http.StatusNotFound, apiError{Error: fmt.Sprintf("no member named %q (a new node joins by starting its agent)", name)})
			return
		}
		msg, err := a.setSuffrage(r.Context(), name, voter)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, ControlResult{Message: msg})
	}
}

// forwardToLeader relays a state-changing request to the Raft leader's API,
// so any member can be asked. A request is forwarded at most once.
func (a *Agent) forwardToLeader(w http.ResponseWriter, r *http.Request, body []byte) {
	if r.Header.Get("X-Pgha-Forwarded") != "" {
		writeJSON(w, http.StatusServiceUnavailable, apiError{Error: "not the leader (leadership is changing); retry"})
		return
	}
	base, err := a.leaderAPI()
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, apiError{Error: err.Error()})
		return
	}
	a.forwardTo(w, r, base, body)
}

// forwardTo relays the request to another member's API and its answer back.
func (a *Agent) forwardTo(w http.ResponseWriter, r *http.Request, base string, body []byte) {
	req, err := http.NewRequestWithContext(r.Context(), r.Method, base+r.URL.RequestURI(), strings.NewReader(string(body)))
	if err != nil {
		writeError(w, err)
		return
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Pgha-Forwarded", a.cfg.Name)
	// Control calls wait for their outcome (a switchover takes seconds).
	// The agent's own transport carries its certificate and token: the
	// caller was authorised here (authorized runs before any forwarding).
	client := &http.Client{Transport: a.http.Transport, CheckRedirect: a.http.CheckRedirect, Timeout: a.timing().SwitchoverTimeout + 10*time.Second}
	resp, err := client.Do(req)
	if err != nil {
		writeJSON(w, http.StatusBadGateway, apiError{Error: "forward to " + base + ": " + err.Error()})
		return
	}
	defer resp.Body.Close()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, io.LimitReader(resp.Body, 1<<20))
}

func writeError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, consensus.ErrRefused):
		code = http.StatusConflict
	case errors.Is(err, consensus.ErrNotLeader):
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, apiError{Error: err.Error()})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// parseBytes parses Patroni's lag values: a byte count, optionally with a
// unit (kB, MB, GB, TB; powers of 1024 as in PostgreSQL).
func parseBytes(s string) (int64, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		m      int64
	}{{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"kB", 1 << 10}, {"KB", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.m
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a byte count such as 1048576 or 16MB", s)
	}
	return n * mult, nil
}

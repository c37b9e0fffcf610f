package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
)

// Control operations: switchover, failover, pause, resume, reinit (REST and
// CLI), and the agents' own permit and news calls. Any member answers; what
// must be decided is forwarded to the Raft leader.

// ControlRequest is the body of POST /switchover, /failover and /reinit.
// "leader" and "candidate" are Patroni's names for the same calls.
type ControlRequest struct {
	Leader    string `json:"leader,omitempty"`    // switchover: the current primary, if the caller wants to check it
	Candidate string `json:"candidate,omitempty"` // switchover/failover: who to promote
	Member    string `json:"member,omitempty"`    // reinit: who to re-clone
	// Force: failover even though the old primary may still be writable,
	// or to a candidate not known to hold every acknowledged commit.
	Force bool `json:"force,omitempty"`
	// InPlace: restart the primary itself, writes unavailable meanwhile,
	// instead of refusing (a rolling restart switches over first).
	InPlace bool `json:"in_place,omitempty"`
	// At: switchover or restart at this time instead of now (kept in
	// Raft; the leader of that time starts it).
	At *time.Time `json:"at,omitempty"`
	// Pending: a scheduled restart happens only if a setting is pending a
	// restart then.
	Pending bool `json:"pending,omitempty"`
}

// ControlResult is what the control calls answer.
type ControlResult struct {
	Primary string `json:"primary,omitempty"`
	Member  string `json:"member,omitempty"` // backup: where it runs
	Epoch   uint64 `json:"epoch,omitempty"`
	Message string `json:"message"`
}

type permitRequest struct {
	Member  string `json:"member"`
	Epoch   uint64 `json:"epoch"`
	Restart bool   `json:"restart"` // it ran as primary in this epoch and went down
}

func (a *Agent) controlRoutes(mux *http.ServeMux) {
	// Every one changes the cluster: authorized first (auth.go).
	mux.HandleFunc("POST /switchover", a.authorized(a.leaderOnly(a.handleSwitchover)))
	mux.HandleFunc("DELETE /switchover", a.authorized(a.leaderOnly(a.handleFlushSwitchover)))
	mux.HandleFunc("POST /failover", a.authorized(a.leaderOnly(a.handleFailover)))
	mux.HandleFunc("POST /pause", a.authorized(a.leaderOnly(func(w http.ResponseWriter, r *http.Request, _ []byte) { a.setPaused(w, r, true) })))
	mux.HandleFunc("POST /resume", a.authorized(a.leaderOnly(func(w http.ResponseWriter, r *http.Request, _ []byte) { a.setPaused(w, r, false) })))
	mux.HandleFunc("POST /reinit", a.authorized(a.handleReinit))
	mux.HandleFunc("PATCH /config", a.authorized(a.leaderOnly(a.handlePatchConfig)))
	mux.HandleFunc("POST /reload", a.authorized(a.handleReload))
	mux.HandleFunc("POST /restart", a.authorized(a.handleRestartOrSchedule))
	mux.HandleFunc("DELETE /restart", a.authorized(a.leaderOnly(a.handleFlushRestarts)))
	mux.HandleFunc("POST /tags", a.authorized(a.leaderOnly(a.handleTags)))
	mux.HandleFunc("POST /internal/permit", a.authorized(a.leaderOnly(a.handlePermit)))
	mux.HandleFunc("POST /internal/lease", a.authorized(a.leaderOnly(a.handleLease)))
	mux.HandleFunc("POST /internal/checkpoint", a.authorized(a.handleCheckpoint))
	mux.HandleFunc("POST /internal/drain", a.authorized(a.leaderOnly(a.handleDrain)))
	mux.HandleFunc("POST /internal/news", a.authorized(a.handleNews))
	mux.HandleFunc("POST /backup", a.authorized(a.handleBackup))
	mux.HandleFunc("POST /internal/backup", a.authorized(a.leaderOnly(a.handleRecordBackup)))
}

// leaderOnly reads the body and either handles the call (on the leader) or
// forwards it to the leader.
func (a *Agent) leaderOnly(h func(http.ResponseWriter, *http.Request, []byte)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, ok := readBody(w, r)
		if !ok {
			return
		}
		if !a.node.IsLeader() {
			a.forwardToLeader(w, r, body)
			return
		}
		h(w, r, body)
	}
}

// readBody reads a REST request's body (at most maxBody), answering 413
// itself when it cannot.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		writeJSON(w, http.StatusRequestEntityTooLarge, apiError{Error: err.Error()})
		return nil, false
	}
	return body, true
}

// readControl reads and decodes a control call's body (readBody,
// decodeControl), answering a bad one itself.
func readControl(w http.ResponseWriter, r *http.Request) ([]byte, ControlRequest, bool) {
	body, ok := readBody(w, r)
	if !ok {
		return nil, ControlRequest{}, false
	}
	req, ok := decodeControl(w, body)
	return body, req, ok
}

func decodeControl(w http.ResponseWriter, body []byte) (ControlRequest, bool) {
	var req ControlRequest
	if len(body) == 0 {
		return req, true
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "body must be JSON such as {\"candidate\": \"node2\"}: " + err.Error()})
		return req, false
	}
	return req, true
}

// refresh re-reads the named members' observations now, so an operator's
// call is judged on the cluster as it is, not as it was at the last poll.
// The members are polled at once, each bounded by pollTimeout.
func (a *Agent) refresh(ctx context.Context, st consensus.State, names ...string) {
	var wg sync.WaitGroup
	for _, n := range names {
		switch m, ok := st.Members[n]; {
		case n == a.cfg.Name:
			a.obs.set(n, a.selfView(ctx))
		case ok:
			wg.Add(1)
			go func() {
				defer wg.Done()
				a.pollMember(ctx, n, m.APIURL)
			}()
		}
	}
	wg.Wait()
}

func (a *Agent) handleSwitchover(w http.ResponseWriter, r *http.Request, body []byte) {
	req, ok := decodeControl(w, body)
	if !ok {
		return
	}
	if req.At != nil {
		a.scheduleSwitchover(w, r, req)
		return
	}
	cand, err := a.startSwitchover(r.Context(), req, "operator asked")
	if err != nil {
		writeError(w, err)
		return
	}
	a.awaitPrimary(w, r, cand, a.timing().SwitchoverTimeout+2*time.Second)
}

// startSwitchover checks that a switchover to req.Candidate (or the best
// standby) may start and starts it: the primary checkpoints, the router
// holds new transactions, the switchover is committed. It returns the
// candidate, or a consensus.ErrRefused error saying why not. On the leader.
func (a *Agent) startSwitchover(ctx context.Context, req ControlRequest, who string) (string, error) {
	st := a.node.State()
	a.refresh(ctx, st, st.Primary, req.Candidate)
	in := Inputs{State: st, Observations: a.obs.snapshot(), Now: time.Now(), Policy: a.policy()}
	refuse := func(format string, args ...any) error {
		return refusedError{"switchover refused: " + fmt.Sprintf(format, args...)}
	}
	switch {
	case st.Paused:
		return "", refuse("the cluster is paused; resume it first")
	case st.Switchover.Active():
		return "", refuse("a switchover to %s is already in progress", st.Switchover.To)
	case req.Leader != "" && req.Leader != st.Primary:
		return "", refuse("%s is not the primary (%s is)", req.Leader, st.Primary)
	}
	if p, ok := fresh(in, st.Primary); !ok || !p.obs.Postgres.Running || p.obs.Postgres.InRecovery {
		return "", refuse("the primary %s is not healthy; use failover", st.Primary)
	}
	cand := req.Candidate
	if cand == "" {
		cand = a.bestSwitchoverCandidate(in)
		if cand == "" {
			return "", refuse("no healthy streaming standby to switch over to")
		}
	}
	if why := a.switchoverCandidateProblem(in, cand); why != "" {
		return "", refuse("%s", why)
	}
	sw := consensus.Switchover{From: st.Primary, To: cand, Epoch: st.Epoch}
	a.checkpointPrimary(ctx, st)
	// Queue new transactions in the router and let running ones finish
	// before the old primary is told to stop.
	if err := a.holdForSwitchover(ctx); err != nil {
		a.log.Warn("switchover: transactions still running on the primary after router.drain_timeout; they will get an error", "err", err)
	}
	a.log.Info("decision", "command", "set_switchover", "epoch", st.Epoch, "reason", fmt.Sprintf("%s to switch over from %s to %s", who, sw.From, sw.To))
	if err := a.node.Apply(ctx, consensus.SetSwitchover(sw)); err != nil {
		a.releaseHold()
		return "", err
	}
	a.wake()
	return cand, nil
}

// TagsRequest is POST /tags: run-time tags of a member ("" removes one,
// and the member's file's value applies again).
type TagsRequest struct {
	Member string            `json:"member"`
	Tags   map[string]string `json:"tags"`
}

// handleTags commits run-time tags; the FSM checks keys and values.
func (a *Agent) handleTags(w http.ResponseWriter, r *http.Request, body []byte) {
	var req TagsRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || req.Member == "" || len(req.Tags) == 0 {
		writeJSON(w, http.StatusBadRequest, apiError{Error: `body must be {"member": "node2", "tags": {"nofailover": "true", "priority": ""}}`})
		return
	}
	a.log.Info("decision", "command", "set_tags", "member", req.Member, "tags", req.Tags, "reason", "operator request")
	if err := a.node.Apply(r.Context(), consensus.SetTags(req.Member, req.Tags)); err != nil {
		writeError(w, err)
		return
	}
	m := a.node.State().Members[req.Member]
	writeJSON(w, http.StatusOK, ControlResult{Message: fmt.Sprintf("%s: nofailover=%t nosync=%t noloadbalance=%t clonefrom=%t priority=%d", m.Name, m.NoFailover, m.NoSync, m.NoLoadBalance, m.CloneFrom, m.Priority)})
}

// refusedError is a control call refused for the reason it says (409).
type refusedError struct{ msg string }

func (e refusedError) Error() string        { return e.msg }
func (e refusedError) Is(target error) bool { return target == consensus.ErrRefused }

// scheduleSwitchover records a switchover for req.At; the leader of that
// time starts it (runScheduled). On the leader.
func (a *Agent) scheduleSwitchover(w http.ResponseWriter, r *http.Request, req ControlRequest) {
	st := a.node.State()
	switch {
	case !req.At.After(time.Now()):
		writeJSON(w, http.StatusBadRequest, apiError{Error: fmt.Sprintf("at %s is not in the future", req.At.Format(time.RFC3339))})
		return
	case req.Leader != "" && req.Leader != st.Primary:
		writeJSON(w, http.StatusConflict, apiError{Error: fmt.Sprintf("switchover refused: %s is not the primary (%s is)", req.Leader, st.Primary)})
		return
	}
	sw := consensus.ScheduledSwitchover{At: req.At.UTC(), From: st.Primary, To: req.Candidate}
	a.log.Info("decision", "command", "schedule_switchover", "at", sw.At, "from", sw.From, "to", sw.To, "reason", "operator request")
	if err := a.node.Apply(r.Context(), consensus.ScheduleSwitchover(sw)); err != nil {
		writeError(w, err)
		return
	}
	a.wake() // the leader's loop watches the time (runScheduled)
	to := sw.To
	if to == "" {
		to = "the best standby then"
	}
	writeJSON(w, http.StatusAccepted, ControlResult{Message: fmt.Sprintf("switchover from %s to %s scheduled at %s", sw.From, to, sw.At.Format(time.RFC3339))})
}

// handleFlushSwitchover cancels a scheduled switchover (DELETE /switchover).
func (a *Agent) handleFlushSwitchover(w http.ResponseWriter, r *http.Request, _ []byte) {
	sw := a.node.State().ScheduledSwitchover
	if sw.At.IsZero() {
		writeJSON(w, http.StatusNotFound, apiError{Error: "no switchover is scheduled"})
		return
	}
	a.log.Info("decision", "command", "schedule_switchover", "reason", "operator cancelled the switchover scheduled at "+sw.At.Format(time.RFC3339))
	if err := a.node.Apply(r.Context(), consensus.ScheduleSwitchover(consensus.ScheduledSwitchover{})); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ControlResult{Message: "the switchover scheduled at " + sw.At.Format(time.RFC3339) + " is cancelled"})
}

// runScheduled starts a scheduled switchover once it is due, on the
// leader, off the leader's loop (a switchover waits for a checkpoint and
// the router). The schedule is cleared first: a leader lost in between
// must not switch over twice. One that cannot start (the primary changed,
// no healthy standby) is logged and dropped, as Patroni does.
func (a *Agent) runScheduled(ctx context.Context, st consensus.State) {
	sw := st.ScheduledSwitchover
	if sw.At.IsZero() {
		return
	}
	if wait := time.Until(sw.At); wait > 0 {
		if wait <= a.timing().LoopInterval {
			a.wakeAt(ctx, sw.At) // on time, not at the next loop
		}
		return
	}
	if !a.scheduledRunning.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer a.scheduledRunning.Store(false)
		if err := a.node.Apply(ctx, consensus.ScheduleSwitchover(consensus.ScheduledSwitchover{})); err != nil {
			a.log.Warn("scheduled switchover: not cleared, will retry", "err", err)
			return
		}
		cand, err := a.startSwitchover(ctx, ControlRequest{Leader: sw.From, Candidate: sw.To}, fmt.Sprintf("switchover scheduled for %s", sw.At.Format(time.RFC3339)))
		if err != nil {
			a.log.Warn("scheduled switchover not done", "at", sw.At, "err", err)
			return
		}
		a.log.Info("scheduled switchover started", "at", sw.At, "from", sw.From, "to", cand)
	}()
}

// checkpointPrimary asks the primary for a CHECKPOINT before a switchover
// holds writes and stops it: its shutdown checkpoint then has little left
// to write, and writes stop for that much less (0.25-0.35 s of a 0.8 s
// switchover on the benchmark; Patroni does the same). Writes go on during
// this one. Failing or slow, it only costs that time: logged, never fatal.
func (a *Agent) checkpointPrimary(ctx context.Context, st consensus.State) {
	ctx, cancel := context.WithTimeout(ctx, checkpointTimeout)
	defer cancel()
	start := time.Now()
	var err error
	if st.Primary == a.cfg.Name {
		err = a.inst.Exec(ctx, "CHECKPOINT")
	} else if m, ok := st.Members[st.Primary]; ok && m.APIURL != "" {
		err = postJSON(ctx, a.http, m.APIURL+"/internal/checkpoint", nil, nil)
	}
	if err != nil {
		a.log.Warn("switchover: no checkpoint before the primary stops; its shutdown checkpoint writes everything", "primary", st.Primary, "err", err)
		return
	}
	a.log.Info("switchover: checkpoint done on the primary before it stops", "primary", st.Primary, "took", time.Since(start).Round(time.Millisecond).String())
}

// checkpointTimeout bounds the checkpoint before a switchover: one that
// takes longer (a large backlog of dirty buffers) is left to finish as the
// shutdown checkpoint.
const checkpointTimeout = 10 * time.Second

// handleCheckpoint runs a CHECKPOINT for the leader's switchover, on the
// committed primary only.
func (a *Agent) handleCheckpoint(w http.ResponseWriter, r *http.Request) {
	if st := a.node.State(); st.Primary != a.cfg.Name {
		writeJSON(w, http.StatusConflict, apiError{Error: fmt.Sprintf("%s is not the primary (%s is)", a.cfg.Name, st.Primary)})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), checkpointTimeout)
	defer cancel()
	if err := a.inst.Exec(ctx, "CHECKPOINT"); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, apiError{Error: "checkpoint: " + err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, ControlResult{Message: "checkpoint done"})
}

func (a *Agent) bestSwitchoverCandidate(in Inputs) string {
	var cands []string
	for name := range in.State.Members {
		if name != in.State.Primary && a.switchoverCandidateProblem(in, name) == "" {
			cands = append(cands, name)
		}
	}
	if len(cands) == 0 {
		return ""
	}
	sortByWAL(in, cands)
	return cands[0]
}

// switchoverCandidateProblem says why name cannot take over now, or "".
func (a *Agent) switchoverCandidateProblem(in Inputs, name string) string {
	m, ok := in.State.Members[name]
	switch {
	case !ok:
		return fmt.Sprintf("%s is not a member", name)
	case name == in.State.Primary:
		return fmt.Sprintf("%s is already the primary", name)
	case m.NoFailover:
		return fmt.Sprintf("%s is tagged nofailover", name)
	}
	o, ok := fresh(in, name)
	if !ok || !o.obs.Postgres.Running || !o.obs.Postgres.InRecovery || !o.obs.Postgres.Streaming {
		return fmt.Sprintf("%s is not a healthy streaming standby", name)
	}
	if p, ok := in.Observations[in.State.Primary]; ok {
		lag := int64(p.obs.Postgres.CurrentLSN) - int64(o.obs.Postgres.ReplayedLSN)
		if lag > a.failover().MaximumLagOnSwitchover {
			return fmt.Sprintf("%s lags %d bytes behind, more than failover.maximum_lag_on_switchover (%d)", name, lag, a.failover().MaximumLagOnSwitchover)
		}
	}
	return ""
}

// handleFailover forces a promotion when the primary is gone: the operator's
// override for a cluster that cannot (or, paused, may not) fail over itself.
// It takes the leader's lock and judges the old primary as the leader's own
// decisions do (lease, fence deadline, direct check): a forced failover
// while the old primary may still be writable, or to a candidate that may
// lack acknowledged commits, needs "force", which says what it risks.
func (a *Agent) handleFailover(w http.ResponseWriter, r *http.Request, body []byte) {
	req, ok := decodeControl(w, body)
	if !ok {
		return
	}
	if cand, ok := a.commitFailover(w, r, req); ok {
		a.awaitPrimary(w, r, cand, 30*time.Second)
	}
}

// commitFailover commits the promotion of handleFailover, or answers why
// not (false).
func (a *Agent) commitFailover(w http.ResponseWriter, r *http.Request, req ControlRequest) (string, bool) {
	refuse := func(format string, args ...any) {
		writeJSON(w, http.StatusConflict, apiError{Error: "failover refused: " + fmt.Sprintf(format, args...)})
	}
	a.lead.mu.Lock()
	defer a.lead.mu.Unlock()
	if err := a.beginTenure(r.Context()); err != nil {
		writeError(w, err)
		return "", false
	}
	st := a.node.State()
	a.refresh(r.Context(), st, st.Primary, req.Candidate)
	obs := a.obs.snapshot()
	in := Inputs{State: st, Observations: obs, Now: time.Now(), Policy: widenForPrimary(a.policy(), obs[st.Primary]), LeaderSince: a.lead.since,
		PriorLeases: a.lead.priorLeases, PrimaryLease: a.lead.lastLease(st.Primary, st.Epoch), Permits: a.lead.permitsOf(st.Epoch)}
	if p, ok := st.Members[st.Primary]; ok {
		if _, fresh := fresh(in, st.Primary); !fresh && !in.Now.Before(leaseDeadline(in, true)) {
			answers := a.directCheck(r.Context(), p)
			in.PrimaryAnswers = &answers
		}
	}
	if p, ok := fresh(in, st.Primary); ok && p.obs.Postgres.Running && !p.obs.Postgres.InRecovery && !req.Force {
		refuse("the primary %s is healthy; use switchover", st.Primary)
		return "", false
	}
	if failed, why := primaryFailed(in); !failed && !req.Force {
		if why == "" {
			why = "it is running"
		}
		refuse("the primary %s may still be writable (%s); promoting another now could leave two primaries and lose acknowledged commits: wait, or use --force to accept that", st.Primary, why)
		return "", false
	}
	cand := req.Candidate
	best, reason := chooseCandidate(in, st.Primary)
	if cand == "" {
		cand = best
	}
	if cand == "" {
		refuse("no member can be promoted safely: %s", reason)
		return "", false
	}
	o, ok := fresh(in, cand)
	if !ok || !o.obs.Postgres.Running || !o.obs.Postgres.InRecovery {
		refuse("%q is not a running standby", cand)
		return "", false
	}
	if cand != best && !req.Force {
		switch {
		case st.Members[cand].NoFailover:
			refuse("%s is tagged nofailover; use --force to promote it anyway", cand)
		case o.obs.Diverged:
			refuse("%s diverged from the primary's timeline and holds none of its recent WAL; use --force to promote it anyway", cand)
		case best == "":
			refuse("%s may lack acknowledged commits (%s); use --force to accept losing them", cand, reason)
		default:
			refuse("%s may lack acknowledged commits that %s holds (%s); use --force to accept losing them", cand, best, reason)
		}
		return "", false
	}
	why := "operator forced a failover to " + cand
	if req.Force {
		why += " (--force: the old primary may still be writable and commits only it held may be lost)"
	}
	d := promotion(in, cand, kindForcedFailover, why)
	a.log.Info("decision", "command", "promote", "epoch", st.Epoch, "reason", d.Reason)
	if err := a.node.Apply(r.Context(), d.Command); err != nil {
		writeError(w, err)
		return "", false
	}
	return cand, true
}

// awaitPrimary answers once name runs as the writable primary, or gives up.
func (a *Agent) awaitPrimary(w http.ResponseWriter, r *http.Request, name string, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		st := a.node.State()
		if st.Primary == name {
			if o, ok := a.obs.snapshot()[name]; ok && o.reachable && o.obs.Postgres.Running && !o.obs.Postgres.InRecovery {
				writeJSON(w, http.StatusOK, ControlResult{Primary: name, Epoch: st.Epoch, Message: name + " is the primary"})
				return
			}
		} else if !st.Switchover.Active() {
			writeJSON(w, http.StatusServiceUnavailable, apiError{Error: fmt.Sprintf("the switchover to %s was cancelled; %s is the primary", name, st.Primary)})
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	writeJSON(w, http.StatusServiceUnavailable, apiError{Error: fmt.Sprintf("%s is not the running primary after %s", name, timeout)})
}

func (a *Agent) setPaused(w http.ResponseWriter, r *http.Request, paused bool) {
	a.log.Info("decision", "command", "set_paused", "paused", paused, "reason", "operator request")
	if err := a.node.Apply(r.Context(), consensus.SetPaused(paused)); err != nil {
		writeError(w, err)
		return
	}
	msg := "automatic failover resumed"
	if paused {
		msg = "paused: no automatic failover until resume"
	}
	writeJSON(w, http.StatusOK, ControlResult{Message: msg})
}

// onMember reads a control call about one member and forwards it to that
// member's agent unless it is this one. It answers the call itself (and
// returns false) for a bad body, an unknown member, or a refusal that
// refuse returns ("" lets it through); on true the caller acts here.
func (a *Agent) onMember(w http.ResponseWriter, r *http.Request, verb string, refuse func(st consensus.State, req ControlRequest) string) (ControlRequest, consensus.State, bool) {
	body, req, ok := readControl(w, r)
	if !ok {
		return req, consensus.State{}, false
	}
	st := a.node.State()
	m, ok := st.Members[req.Member]
	switch {
	case req.Member == "":
		writeJSON(w, http.StatusBadRequest, apiError{Error: "body must name the member: {\"member\": \"node2\"}"})
		return req, st, false
	case !ok:
		writeJSON(w, http.StatusNotFound, apiError{Error: fmt.Sprintf("no member named %q", req.Member)})
		return req, st, false
	}
	if why := refuse(st, req); why != "" {
		writeJSON(w, http.StatusConflict, apiError{Error: verb + " refused: " + why})
		return req, st, false
	}
	if req.Member != a.cfg.Name {
		if r.Header.Get("X-Pgha-Forwarded") != "" {
			writeJSON(w, http.StatusServiceUnavailable, apiError{Error: verb + ": forwarded to the wrong member"})
		} else {
			a.forwardTo(w, r, m.APIURL, body)
		}
		return req, st, false
	}
	return req, st, true
}

// handleReinit re-clones a standby; it runs on that member's own agent.
func (a *Agent) handleReinit(w http.ResponseWriter, r *http.Request) {
	req, _, ok := a.onMember(w, r, "reinit", func(st consensus.State, req ControlRequest) string {
		if req.Member == st.Primary {
			return req.Member + " is the primary"
		}
		return ""
	})
	if !ok {
		return
	}
	a.log.Info("reinit requested", "reason", "operator request")
	a.reinit.Store(true)
	writeJSON(w, http.StatusAccepted, ControlResult{Message: "re-cloning " + req.Member + " from the primary"})
}

// handleReload makes the named member's PostgreSQL read its configuration
// files again (what pg_ctl reload does: an ALTER SYSTEM, an edit of
// postgresql.conf), after its agent has rewritten pgha.conf from the
// cluster-wide configuration; a call without a member is forwarded to each.
func (a *Agent) handleReload(w http.ResponseWriter, r *http.Request) {
	body, req, ok := readControl(w, r)
	if !ok {
		return
	}
	st := a.node.State()
	if req.Member == "" {
		var done, failed []string
		for _, name := range slices.Sorted(maps.Keys(st.Members)) {
			var err error
			if name == a.cfg.Name {
				err = a.reloadHere(r.Context(), st)
			} else {
				b, _ := json.Marshal(ControlRequest{Member: name})
				err = postJSON(r.Context(), a.http, st.Members[name].APIURL+"/reload", b, nil)
			}
			if err != nil {
				failed = append(failed, fmt.Sprintf("%s: %v", name, err))
				continue
			}
			done = append(done, name)
		}
		if len(failed) > 0 {
			writeJSON(w, http.StatusServiceUnavailable, apiError{Error: fmt.Sprintf("reloaded %s; not reloaded: %s", strings.Join(done, ", "), strings.Join(failed, "; "))})
			return
		}
		writeJSON(w, http.StatusOK, ControlResult{Message: "reloaded " + strings.Join(done, ", ")})
		return
	}
	// One member: as reinit and restart do (the body is read again there).
	r.Body = io.NopCloser(bytes.NewReader(body))
	if _, st, ok = a.onMember(w, r, "reload", func(consensus.State, ControlRequest) string { return "" }); !ok {
		return
	}
	if err := a.reloadHere(r.Context(), st); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, apiError{Error: "reload " + req.Member + ": " + err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, ControlResult{Message: "reloaded " + req.Member})
}

// handleRestart restarts the named member's PostgreSQL (fast shutdown, then
// start), answering once it runs again. A standby is drained in the
// leader's router first (drain.go), so its restart fails no read. The
// primary's restart makes writes unavailable, so it is refused unless
// in_place is asked for (pgha-agent restart switches over first, which
// restarts the old primary as a standby). The primary's restart
// holds a start permit, so the leader does not fail it over meanwhile.
func (a *Agent) handleRestart(w http.ResponseWriter, r *http.Request) {
	req, st, ok := a.onMember(w, r, "restart", func(st consensus.State, req ControlRequest) string {
		if req.Member == st.Primary && !req.InPlace {
			return req.Member + " is the primary; switch over first (pgha-agent restart does), or restart it in place (in_place, writes unavailable meanwhile)"
		}
		return ""
	})
	if !ok {
		return
	}
	ctx := r.Context()
	if st.Primary == a.cfg.Name {
		until, err := a.requestPermit(ctx, st.Epoch, true)
		if err != nil {
			writeJSON(w, http.StatusConflict, apiError{Error: "restart refused: " + err.Error()})
			return
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, until)
		defer cancel()
	}
	if st.Primary != a.cfg.Name {
		// Its reads finish first, and none starts meanwhile (drain.go).
		a.drainSelf(ctx, false)
		defer a.drainSelf(context.WithoutCancel(ctx), true)
	}
	a.log.Info("restarting PostgreSQL", "reason", "operator request")
	a.pgMu.Lock()
	err := a.inst.Restart(ctx, postgres.StopFast)
	a.pgMu.Unlock()
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, apiError{Error: "restart " + req.Member + ": " + err.Error()})
		return
	}
	if st.Primary != a.cfg.Name {
		// A rolling restart goes on to the next member only once this
		// one streams again: never two standbys down at once.
		deadline := time.Now().Add(time.Minute)
		for pg := a.inst.Status(ctx); !(pg.Running && pg.InRecovery && pg.Streaming); pg = a.inst.Status(ctx) {
			if time.Now().After(deadline) || ctx.Err() != nil {
				writeJSON(w, http.StatusServiceUnavailable, apiError{Error: "restarted " + req.Member + ", but it does not stream again within a minute"})
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	writeJSON(w, http.StatusOK, ControlResult{Message: "restarted " + req.Member})
}

// reloadHere signals this node's PostgreSQL to read its configuration.
func (a *Agent) reloadHere(ctx context.Context, st consensus.State) error {
	a.useClusterConfig(st)
	if err := a.inst.Reload(ctx); err != nil {
		return err
	}
	role := "replica"
	if st.Primary == a.cfg.Name {
		role = "primary"
	}
	a.log.Info("reloaded PostgreSQL", "reason", "operator request")
	a.callbacks.fire("on_reload", role, st)
	return nil
}

func (a *Agent) handlePermit(w http.ResponseWriter, r *http.Request, body []byte) {
	var req permitRequest
	if err := json.Unmarshal(body, &req); err != nil || req.Member == "" {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "body must be {\"member\", \"epoch\", \"restart\"}"})
		return
	}
	left, err := a.grantPermit(r.Context(), req.Member, req.Epoch, req.Restart)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, permitResult{Message: "granted", Grace: left, Lease: a.timing().FenceTimeout})
}

// permitResult answers a granted permit: how long its start grace has left,
// and how long the lease it renews lasts (leaseGrant).
type permitResult struct {
	Message string        `json:"message"`
	Grace   time.Duration `json:"grace_ns"`
	Lease   time.Duration `json:"lease_ns,omitempty"`
}

// requestPermit asks the leader for permission to start or promote this
// node's PostgreSQL as the primary of epoch (see grantPermit). The grant
// renews the lease; the answer is the time by which the start must be done
// (the end of the start grace, on this node's clock, counted from when the
// request was sent).
func (a *Agent) requestPermit(ctx context.Context, epoch uint64, restart bool) (time.Time, error) {
	sent := time.Now()
	var left time.Duration
	lease := a.timing().FenceTimeout
	if a.node.IsLeader() {
		var err error
		if left, err = a.grantPermit(ctx, a.cfg.Name, epoch, restart); err != nil {
			return time.Time{}, err
		}
	} else {
		base, err := a.leaderAPI()
		if err != nil {
			return time.Time{}, err
		}
		body, _ := json.Marshal(permitRequest{Member: a.cfg.Name, Epoch: epoch, Restart: restart})
		ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		var res permitResult
		if err := postJSON(ctx, a.http, base+"/internal/permit", body, &res); err != nil {
			return time.Time{}, err
		}
		left = res.Grace
		if res.Lease > 0 { // an older leader says nothing: its own file's, as this one's
			lease = res.Lease
		}
	}
	a.lease.renewed(epoch, sent, lease)
	a.saveLease()
	return sent.Add(left), nil
}

// handleNews takes an observation an agent pushed (after a step it took that
// the leader waits for) and wakes the leader's loop.
func (a *Agent) handleNews(w http.ResponseWriter, r *http.Request) {
	var o Observation
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&o); err != nil || o.Name == "" {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "body must be an observation"})
		return
	}
	if _, ok := a.node.State().Members[o.Name]; !ok {
		writeJSON(w, http.StatusNotFound, apiError{Error: "not a member: " + o.Name})
		return
	}
	a.obs.set(o.Name, memberView{obs: o, reachable: true, lastSeen: time.Now()})
	a.wake()
	writeJSON(w, http.StatusAccepted, ControlResult{Message: "noted"})
}

// pushObservation sends this node's observation to the leader at once, so a
// step the leader waits for (a switchover stop) is seen without a poll's delay.
func (a *Agent) pushObservation(ctx context.Context) {
	o := a.observeSelf(ctx)
	if a.node.IsLeader() {
		a.obs.set(o.Name, memberView{obs: o, reachable: true, lastSeen: time.Now()})
		a.wake()
		return
	}
	base, err := a.leaderAPI()
	if err != nil {
		return
	}
	body, _ := json.Marshal(o)
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := postJSON(ctx, a.http, base+"/internal/news", body, nil); err != nil && !errors.Is(err, context.Canceled) {
		a.log.Debug("push observation to leader", "err", err)
	}
}

func (a *Agent) wake() {
	select {
	case a.wakeLeader <- struct{}{}:
	default:
	}
}

package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/pgha/pgha/consensus"
)

// Scheduled restarts (pgha-agent restart --scheduled, POST /restart with
// "at"): kept in Raft per member, so they survive a change of leader, and
// run by the leader of that time, as a scheduled switchover is. Each is
// cleared before it runs, so a leader lost in between never restarts a
// member twice. Due ones run one at a time, standbys first, each back to
// streaming before the next (the member's own POST /restart waits for
// that); the primary last and in place, under a start permit so that it
// is not failed over meanwhile. A switchover first would move the primary,
// which an operator scheduling a restart of that member did not ask for.

// handleRestartOrSchedule restarts a member now (handleRestart, on its own
// agent) or, with "at", schedules it (on the leader).
func (a *Agent) handleRestartOrSchedule(w http.ResponseWriter, r *http.Request) {
	body, req, ok := readControl(w, r)
	if !ok {
		return
	}
	if req.At == nil {
		if req.Pending {
			writeJSON(w, http.StatusBadRequest, apiError{Error: "pending applies to a scheduled restart (with at); pgha-agent restart --pending picks the members itself"})
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		a.handleRestart(w, r)
		return
	}
	if !a.node.IsLeader() {
		a.forwardToLeader(w, r, body)
		return
	}
	a.scheduleRestart(w, r, req)
}

// scheduleRestart records a restart of req.Member at req.At. On the leader.
func (a *Agent) scheduleRestart(w http.ResponseWriter, r *http.Request, req ControlRequest) {
	st := a.node.State()
	_, member := st.Members[req.Member]
	switch {
	case req.Member == "":
		writeJSON(w, http.StatusBadRequest, apiError{Error: "body must name the member: {\"member\": \"node2\", \"at\": \"2026-12-24T03:00:00Z\"}"})
		return
	case !member:
		writeJSON(w, http.StatusNotFound, apiError{Error: fmt.Sprintf("no member named %q", req.Member)})
		return
	case !req.At.After(time.Now()):
		writeJSON(w, http.StatusBadRequest, apiError{Error: fmt.Sprintf("at %s is not in the future", req.At.Format(time.RFC3339))})
		return
	case req.Member == st.Primary && !req.InPlace:
		writeJSON(w, http.StatusConflict, apiError{Error: "restart refused: " + req.Member + " is the primary; a scheduled restart of the primary is in place (writes unavailable meanwhile): ask for it with in_place (pgha-agent restart --scheduled ... --no-switchover), or schedule a switchover"})
		return
	}
	sr := consensus.ScheduledRestart{At: req.At.UTC(), Pending: req.Pending}
	a.log.Info("decision", "command", "schedule_restart", "member", req.Member, "at", sr.At, "pending", sr.Pending, "reason", "operator request")
	if err := a.node.Apply(r.Context(), consensus.ScheduleRestart(req.Member, sr)); err != nil {
		writeError(w, err)
		return
	}
	a.wake() // the leader's loop watches the time (runScheduledRestarts)
	what := "restart"
	if sr.Pending {
		what = "restart (if a setting is pending then)"
	}
	writeJSON(w, http.StatusAccepted, ControlResult{Message: fmt.Sprintf("%s of %s scheduled at %s", what, req.Member, sr.At.Format(time.RFC3339))})
}

// handleFlushRestarts cancels scheduled restarts (DELETE /restart): the
// named member's, or every one.
func (a *Agent) handleFlushRestarts(w http.ResponseWriter, r *http.Request, body []byte) {
	req, ok := decodeControl(w, body)
	if !ok {
		return
	}
	st := a.node.State()
	var names []string
	for name := range st.ScheduledRestarts {
		if req.Member == "" || req.Member == name {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		writeJSON(w, http.StatusNotFound, apiError{Error: "no restart is scheduled"})
		return
	}
	sort.Strings(names)
	for _, name := range names {
		a.log.Info("decision", "command", "schedule_restart", "member", name, "reason", "operator cancelled the restart scheduled at "+st.ScheduledRestarts[name].At.Format(time.RFC3339))
		if err := a.node.Apply(r.Context(), consensus.ScheduleRestart(name, consensus.ScheduledRestart{})); err != nil {
			writeError(w, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, ControlResult{Message: fmt.Sprintf("scheduled restarts cancelled: %v", names)})
}

// runScheduledRestarts starts the due restarts, on the leader, off the
// leader's loop.
func (a *Agent) runScheduledRestarts(ctx context.Context, st consensus.State) {
	var due []string
	for name, sr := range st.ScheduledRestarts {
		if wait := time.Until(sr.At); wait > 0 {
			if wait <= a.timing().LoopInterval {
				a.wakeAt(ctx, sr.At)
			}
			continue
		}
		due = append(due, name)
	}
	if len(due) == 0 || !a.restartsRunning.CompareAndSwap(false, true) {
		return
	}
	// Standbys first, in name order; the primary last.
	slices.SortFunc(due, func(x, y string) int {
		switch {
		case x == st.Primary:
			return 1
		case y == st.Primary:
			return -1
		}
		return strings.Compare(x, y)
	})
	go func() {
		defer a.restartsRunning.Store(false)
		for _, name := range due {
			if err := a.runScheduledRestart(ctx, name, st.ScheduledRestarts[name]); err != nil {
				a.log.Warn("scheduled restart not done", "member", name, "err", err)
			}
		}
	}()
}

// runScheduledRestart clears one due restart and asks the member's agent to
// restart its PostgreSQL; with Pending, only if the member reports a
// setting pending a restart.
func (a *Agent) runScheduledRestart(ctx context.Context, name string, sr consensus.ScheduledRestart) error {
	if err := a.node.Apply(ctx, consensus.ScheduleRestart(name, consensus.ScheduledRestart{})); err != nil {
		return fmt.Errorf("not cleared, will retry: %w", err)
	}
	st := a.node.State()
	m, ok := st.Members[name]
	if !ok {
		return fmt.Errorf("%s is no longer a member", name)
	}
	if sr.Pending {
		a.refresh(ctx, st, name)
		if pending := a.obs.snapshot()[name].obs.Postgres.PendingRestart; len(pending) == 0 {
			a.log.Info("scheduled restart skipped", "member", name, "at", sr.At, "reason", "no setting is pending a restart")
			return nil
		}
	}
	a.log.Info("scheduled restart", "member", name, "at", sr.At, "primary", name == st.Primary)
	body, _ := json.Marshal(ControlRequest{Member: name, InPlace: name == st.Primary})
	// The member answers once it streams again (a minute at most): not
	// the agent's usual five-second client.
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	client := &http.Client{Transport: a.http.Transport, CheckRedirect: a.http.CheckRedirect}
	if err := postJSON(rctx, client, m.APIURL+"/restart", body, nil); err != nil {
		return err
	}
	a.log.Info("scheduled restart done", "member", name, "at", sr.At)
	return nil
}

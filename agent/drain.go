package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/pgha/pgha/router"
)

// A standby's restart (pgha-agent restart, a rolling restart of settings
// pending one) first drains it in the leader's router: no new read goes
// to it, the reads running on it finish (up to router.drain_timeout), and
// its idle server connections are closed, so the restart fails no
// client. The drain is a lease: it ends when the restarting agent lifts
// it, or by itself after drainLease, so an agent that dies in the middle
// of its restart does not keep a standby out of the reads for ever. A new
// leader's router knows nothing of it; the standby is then simply down
// for the moment it restarts.

// drainLease bounds a drain: a restart answers within a minute of
// streaming again (handleRestart), plus the stop and the start.
const drainLease = 2 * time.Minute

type drainRequest struct {
	Member string `json:"member"`
	Lift   bool   `json:"lift,omitempty"` // end the drain: the restart is over
}

// markDrainingLocked marks the members under a drain in bs. f.mu held.
func (f *front) markDrainingLocked(bs []router.Backend, now time.Time) []router.Backend {
	for i := range bs {
		if until, ok := f.drained[bs[i].Name]; ok {
			if now.After(until) {
				delete(f.drained, bs[i].Name)
				continue
			}
			bs[i].Draining = !bs[i].Primary
		}
	}
	return bs
}

// drainHere starts (or with lift ends) the drain of member in this
// node's router and, when starting, waits up to router.drain_timeout for
// what runs on it. The answer says how it went; it is not an error that
// reads still ran when the wait ended (the restart goes on: the operator
// asked for it).
func (a *Agent) drainHere(ctx context.Context, member string, lift bool) (string, error) {
	st := a.node.State()
	m, ok := st.Members[member]
	if !ok {
		return "", fmt.Errorf("not a member: %s", member)
	}
	if member == st.Primary && !lift {
		return "", fmt.Errorf("%s is the primary: a switchover drains it", member)
	}
	f := &a.front
	f.mu.Lock()
	if lift {
		delete(f.drained, member)
	} else {
		if f.drained == nil {
			f.drained = map[string]time.Time{}
		}
		f.drained[member] = time.Now().Add(drainLease)
	}
	rt := f.rt
	if rt != nil {
		a.updateTopologyLocked()
	}
	f.mu.Unlock()
	if lift {
		return "reads go to " + member + " again once it streams", nil
	}
	if rt == nil {
		return "this node serves no router: nothing to drain", nil
	}
	rc, _ := a.routerSettings()
	ctx, cancel := context.WithTimeout(ctx, rc.DrainTimeout)
	defer cancel()
	start := time.Now()
	addr := router.Backend{Host: m.PGHost, Port: m.PGPort}.Addr()
	inUse, err := rt.Drain(ctx, addr)
	took := time.Since(start).Round(time.Millisecond)
	if err != nil {
		a.log.Warn("drain for a restart: reads still running", "member", member, "in_use", inUse, "waited", took)
		return fmt.Sprintf("%s drained partly: %d server connections still in use after router.drain_timeout (%v)", member, inUse, rc.DrainTimeout), nil
	}
	a.log.Info("drained for a restart", "member", member, "took", took)
	return fmt.Sprintf("%s drained in %v", member, took), nil
}

func (a *Agent) handleDrain(w http.ResponseWriter, r *http.Request, body []byte) {
	var req drainRequest
	if err := json.Unmarshal(body, &req); err != nil || req.Member == "" {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "body must be {\"member\", \"lift\"}"})
		return
	}
	msg, err := a.drainHere(r.Context(), req.Member, req.Lift)
	if err != nil {
		writeJSON(w, http.StatusConflict, apiError{Error: err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, ControlResult{Message: msg})
}

// drainSelf asks the leader (which serves the router) to drain this
// node's standby, or with lift to end that; a failure is logged and the
// restart goes on without (the leader may be changing).
func (a *Agent) drainSelf(ctx context.Context, lift bool) {
	var msg string
	var err error
	if a.node.IsLeader() {
		msg, err = a.drainHere(ctx, a.cfg.Name, lift)
	} else {
		var base string
		if base, err = a.leaderAPI(); err == nil {
			body, _ := json.Marshal(drainRequest{Member: a.cfg.Name, Lift: lift})
			rc, _ := a.routerSettings()
			ctx, cancel := context.WithTimeout(ctx, rc.DrainTimeout+3*time.Second)
			defer cancel()
			var res ControlResult
			// Not a.http: its timeout is shorter than a long drain_timeout.
			client := &http.Client{Transport: a.http.Transport, CheckRedirect: a.http.CheckRedirect}
			err = postJSON(ctx, client, base+"/internal/drain", body, &res)
			msg = res.Message
		}
	}
	switch {
	case err != nil && !errors.Is(err, context.Canceled):
		a.log.Warn("drain for a restart: the leader's router could not be told; restarting anyway", "lift", lift, "err", err)
	case err == nil && !lift:
		a.log.Info("router drained for the restart", "result", msg)
	}
}

package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net/http"
	"time"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/router"
)

// GET /router/topology is what a router-only process (pgha-agent router,
// package routeronly) follows instead of being a Raft member: the
// backends exactly as the leader's own router has them
// (routerBackendsLocked), the cluster-wide router settings in force and
// the fence timeout, answered by the Raft leader after it confirmed its
// leadership with a quorum (VerifyLeader, as a lease grant is). Any member
// answers: a follower forwards the call to the leader, so the answer is
// never one member's stale copy.
//
// Long poll: ?version=V&wait=D answers as soon as the answer's version
// differs from V (a commit, an observation that changes a backend, a
// standby turning stale, a drain ending) or when D has passed, whichever
// comes first; D is at most maxTopologyWait. A failover so reaches every
// router the moment the leader knows of it, not a poll interval later.
//
// Who may ask: holders of a cluster certificate or the API token
// (authorized, rule 3 of auth.go): the answer names every server.
//
// What the answer proves: at some moment after the request arrived, the
// node that answered was the Raft leader and this was its state. The
// caller counts its confirmation from when it SENT the request (earlier
// than that moment), so the clock it fences by never runs ahead of the
// truth, whatever the network and the leader's queue delayed.

// maxTopologyWait bounds a long poll: below any forwarding timeout, and
// short enough that a router's confirmation is renewed often even when
// nothing changes (the router asks with less than a fence timeout).
const maxTopologyWait = 10 * time.Second

// RouterTopology is the answer of GET /router/topology.
type RouterTopology struct {
	// Version identifies this answer's content; pass it back as ?version=
	// to wait for a different one.
	Version string `json:"version"`
	// Leader is the Raft leader that verified its leadership for this
	// answer, in Term.
	Leader string `json:"leader"`
	Term   uint64 `json:"term"`
	// Index is the Raft index of the last entry that changed the state.
	Index   uint64 `json:"index"`
	Primary string `json:"primary"`
	Epoch   uint64 `json:"epoch"`
	// Backends are the leader's router's backends, in SHOW POOL_NODES order.
	Backends []router.Backend `json:"backends"`
	// ConfigVersion and Router are the cluster-wide configuration's version
	// and its router settings (nil before the cluster recorded any: each
	// router then uses its own file's).
	ConfigVersion uint64                    `json:"config_version"`
	Router        *consensus.RouterSettings `json:"router,omitempty"`
	// FenceTimeout is the timing.fence_timeout in force: how long a router
	// may route by this answer, counted from when it sent the request.
	FenceTimeout   time.Duration `json:"fence_timeout_ns"`
	HealthInterval time.Duration `json:"health_interval_ns"`
}

func (a *Agent) handleRouterTopology(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var wait time.Duration
	if s := q.Get("wait"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			writeJSON(w, http.StatusBadRequest, apiError{Error: fmt.Sprintf("wait=%q: give a duration such as 2s", s)})
			return
		}
		wait = min(d, maxTopologyWait)
	}
	if !a.node.IsLeader() {
		a.forwardToLeader(w, r, nil)
		return
	}
	t, ok := a.awaitTopology(r.Context(), q.Get("version"), time.Now().Add(wait))
	if !ok {
		writeJSON(w, http.StatusServiceUnavailable, apiError{Error: "this member stopped being the Raft leader while the request waited; ask again"})
		return
	}
	// The quorum round comes after the state was read: whatever this
	// leader held then was current at least until now.
	vctx, cancel := context.WithTimeout(r.Context(), time.Second)
	defer cancel()
	if err := a.node.VerifyLeader(vctx); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, apiError{Error: "cannot confirm Raft leadership with a quorum: " + err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, t)
}

// awaitTopology returns the leader's topology once its version differs
// from version or deadline has passed. ok is false when this node stops
// leading (or the caller goes away) meanwhile.
func (a *Agent) awaitTopology(ctx context.Context, version string, deadline time.Time) (RouterTopology, bool) {
	changed, unsubscribe := a.node.Watch()
	defer unsubscribe()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		observed := a.obs.nextSet() // taken before reading, so no change is missed
		t, next := a.routerTopology(time.Now())
		if t.Version != version || !time.Now().Before(deadline) {
			return t, true
		}
		timer.Reset(min(time.Until(deadline), time.Until(next)))
		select {
		case <-ctx.Done():
			return RouterTopology{}, false
		case <-changed:
		case <-observed:
		case <-timer.C:
		}
		if !a.node.IsLeader() {
			return RouterTopology{}, false
		}
	}
}

// routerTopology is this node's answer now, and when its backends change
// next by themselves (nextTopologyChangeLocked).
func (a *Agent) routerTopology(now time.Time) (RouterTopology, time.Time) {
	st := a.node.State()
	c := a.node.Config()
	tm := a.timing()
	a.front.mu.Lock()
	backends := a.routerBackendsLocked(now)
	next := a.nextTopologyChangeLocked()
	a.front.mu.Unlock()
	t := RouterTopology{
		Leader: a.cfg.Name, Term: a.node.Term(), Index: st.Index,
		Primary: st.Primary, Epoch: st.Epoch, Backends: backends,
		ConfigVersion: c.Version, Router: c.Router,
		FenceTimeout: tm.FenceTimeout, HealthInterval: tm.HealthInterval,
	}
	b, _ := json.Marshal(t) // Version is still empty: it hashes the rest
	h := fnv.New64a()
	h.Write(b)
	t.Version = fmt.Sprintf("%d-%016x", st.Index, h.Sum64())
	return t, next
}

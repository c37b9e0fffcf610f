package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/router"
	"github.com/pgha/pgha/vip"
)

// The front is what clients see of the cluster: the VIP and the router's
// two listeners. The Raft leader, and only the leader, owns it: the same
// ownership rule for both, so VIP:9999 always reaches a router that
// follows the committed state. A node that loses leadership (or fences
// itself, which a leader never is) closes its router, disconnecting its
// clients, and drops the VIP.
type front struct {
	mu      sync.Mutex
	rt      *router.Router  // non-nil while this node serves
	serving *sync.WaitGroup // the Serve goroutines of rt's two listeners (one per router: stopFront may leave an old one waiting)
	topo    *router.BackendSet
	// held is set while a switchover holds new transactions; sawSwitchover
	// once the committed state shows it (the hold starts before the commit).
	held, sawSwitchover bool
	heldSince           time.Time
	// complaint is the last problem logged, so a retry every tick logs once.
	complaint string
	// configVersion is the cluster-wide configuration version whose router
	// settings rt has (followRouterSettingsLocked).
	configVersion uint64
	// drained: standbys drained for a restart, until when (drain.go).
	drained map[string]time.Time
}

// frontLoop keeps the front on the leader. It reacts to leadership and state
// changes and to new observations at once; otherwise it sleeps until the
// next moment the topology changes by itself (a standby whose agent went
// silent turns stale, a drain ends), or frontRetry while something is
// being retried or held, never longer than frontIdle.
func (a *Agent) frontLoop(ctx context.Context) {
	changed, unsubscribe := a.node.Watch()
	defer unsubscribe()
	timer := time.NewTimer(frontIdle)
	defer timer.Stop()
	// A VIP left behind by an earlier run of this agent is not ours until
	// this node wins an election.
	a.releaseVIP("agent starting")
	defer func() {
		a.stopFront("agent stopping")
		a.releaseVIP("agent stopping")
	}()
	for {
		wait := frontIdle
		var observed <-chan struct{} // only the leader's router uses observations
		if a.node.IsLeader() {
			wait = a.ensureFront(ctx)
			observed = a.obs.changes()
		} else if a.frontUp() || a.vipHeld() {
			// The VIP first: closing the router can take seconds (its
			// connections to a host it cannot reach), and a new leader
			// may take the VIP meanwhile ("VIP on one host").
			a.releaseVIP("lost Raft leadership")
			a.stopFront("lost Raft leadership")
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-observed:
		case <-timer.C:
		}
	}
}

// frontRetry is how soon the front loop tries again what failed (the VIP,
// the listeners) and looks again during a switchover's hold; frontIdle
// bounds its sleep otherwise (a safety net: what changes the topology is an
// event or a deadline it computes).
const (
	frontRetry = 50 * time.Millisecond
	frontIdle  = time.Second
)

// mayTakeOverVIP: another host answers for the VIP although this node is
// the Raft leader ("VIP on one host" is about entitlement: only the leader
// may hold it). A holder that is alive drops it within the leader lease of
// losing leadership; one that still answers after this node has led for
// two election timeouts plus that lease is frozen or its agent is dead,
// and clients cannot reach a router through it. Leadership is confirmed
// with a quorum first.
func (a *Agent) mayTakeOverVIP(ctx context.Context) bool {
	lctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if a.lead.lock(lctx) != nil {
		return false // a decision in progress: ask again at the next tick
	}
	since := a.lead.since
	a.lead.mu.Unlock()
	wait := 2*a.cfg.Raft.ElectionTimeout + a.cfg.Raft.LeaderLeaseTimeout
	if since.IsZero() || time.Since(since) < wait {
		return false
	}
	vctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return a.node.VerifyLeader(vctx) == nil
}

func (a *Agent) frontUp() bool {
	a.front.mu.Lock()
	defer a.front.mu.Unlock()
	return a.front.rt != nil
}

// ensureFront brings the VIP and the router up on the leader, and keeps the
// router's topology current. It returns how soon it wants to run again
// without an event.
func (a *Agent) ensureFront(ctx context.Context) time.Duration {
	f := &a.front
	if a.vipConfigured() && !a.vipHeld() {
		err := a.vip.Acquire(ctx)
		if errors.Is(err, vip.ErrConflict) && a.mayTakeOverVIP(ctx) {
			err = a.vip.Takeover(ctx)
		}
		if err != nil {
			f.complain(a, "cannot take the VIP: "+err.Error())
			return frontRetry // the router listens on the VIP: nothing to bind yet
		}
		a.log.Info("took the VIP", "vip", a.cfg.VIP.Address, "interface", a.cfg.VIP.Interface, "reason", "this node is the Raft leader")
	}
	if !a.cfg.RouterEnabled() {
		return frontIdle
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rt == nil {
		if err := a.startRouterLocked(); err != nil {
			f.complainLocked(a, err.Error())
			return frontRetry
		}
		f.complaint = ""
	}
	a.followRouterSettingsLocked()
	a.updateTopologyLocked()
	if f.held {
		return frontRetry
	}
	return min(time.Until(a.nextTopologyChangeLocked()), frontIdle)
}

// nextTopologyChangeLocked is when the router's backends change with no
// event: a standby healthy now turns stale when its agent stays silent
// (backendsOf), a drain for a restart ends (drain.go). Zero: none.
func (a *Agent) nextTopologyChangeLocked() time.Time {
	var next time.Time
	earliest := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	now := time.Now()
	primary := a.node.State().Primary
	stale := a.timing().FenceTimeout
	for name, v := range a.obs.snapshot() {
		if name != primary && v.reachable && now.Sub(v.lastSeen) <= stale {
			earliest(v.lastSeen.Add(stale).Add(time.Millisecond)) // backendsOf keeps it at exactly stale
		}
	}
	for _, until := range a.front.drained {
		earliest(until.Add(time.Millisecond)) // markDrainingLocked keeps it until after until
	}
	if next.IsZero() {
		return now.Add(frontIdle)
	}
	return next
}

// followRouterSettingsLocked hands the running router a changed
// cluster-wide configuration's routing and pooling settings: they take
// effect without closing anyone's session (router.Reconfigure).
func (a *Agent) followRouterSettingsLocked() {
	f := &a.front
	c := a.node.Config()
	if c.Version == f.configVersion {
		return
	}
	f.configVersion = c.Version
	rc, err := routerOf(c, a.cfg.Router)
	if err != nil {
		f.complainLocked(a, err.Error())
		return
	}
	if err := f.rt.Reconfigure(rc.routerConfig()); err != nil {
		f.complainLocked(a, "router: cannot apply the cluster-wide settings: "+err.Error())
		return
	}
	a.log.Info("router settings applied", "version", c.Version, "pool_mode", rc.PoolMode, "pool_size", rc.PoolSize, "load_balance", rc.LoadBalance == nil || *rc.LoadBalance, "max_lag", rc.MaxLag)
}

// startRouterLocked creates the router and binds both listeners. Binding
// can fail for a moment after an election on a shared host (the demo),
// while the former leader still holds the ports: the caller retries.
func (a *Agent) startRouterLocked() error {
	f := &a.front
	f.configVersion = a.node.Config().Version
	rc, err := a.routerSettings()
	if err != nil {
		a.log.Error("router: using this node's file", "err", err)
	}
	rw, err := net.Listen("tcp", net.JoinHostPort(rc.Listen, strconv.Itoa(rc.Port)))
	if err != nil {
		return fmt.Errorf("router: cannot listen yet: %w", err)
	}
	ro, err := net.Listen("tcp", net.JoinHostPort(rc.Listen, strconv.Itoa(rc.ReadOnlyPort)))
	if err != nil {
		rw.Close()
		return fmt.Errorf("router: cannot listen yet: %w", err)
	}
	f.topo = router.NewBackendSet(a.routerBackendsLocked(time.Now())...)
	cfg := rc.routerConfig()
	cfg.Logger = a.log.With("component", "router")
	rt, err := router.New(cfg, f.topo)
	if err != nil {
		rw.Close()
		ro.Close()
		return fmt.Errorf("router: %w", err)
	}
	f.rt, f.held = rt, false
	serving := &sync.WaitGroup{}
	f.serving = serving
	for _, l := range []struct {
		ln   net.Listener
		role router.Role
	}{{rw, router.ReadWrite}, {ro, router.ReadOnly}} {
		serving.Add(1)
		go func() {
			defer serving.Done()
			if err := rt.Serve(context.Background(), l.ln, l.role); err != nil {
				a.log.Error("router listener stopped", "role", l.role.String(), "err", err)
			}
		}()
	}
	a.log.Info("router serving", "read_write", rw.Addr().String(), "read_only", ro.Addr().String(), "reason", "this node is the Raft leader")
	return nil
}

// stopFront closes the router: its listeners, its clients and its server
// connections, so no transaction keeps running through a node that is no
// longer the leader.
func (a *Agent) stopFront(reason string) {
	f := &a.front
	f.mu.Lock()
	rt, serving := f.rt, f.serving
	f.rt, f.topo, f.held, f.serving = nil, nil, false, nil
	f.mu.Unlock()
	if rt == nil {
		return
	}
	// Bounded: the front loop that waits here is the one that takes the
	// VIP and starts a router again if this node is elected again. Close
	// shuts the listeners and every client and server socket at once; a
	// session it still waits for can reach no server.
	closed := make(chan struct{})
	go func() {
		rt.Close()
		serving.Wait()
		close(closed)
	}()
	select {
	case <-closed:
		a.log.Info("router stopped", "reason", reason)
	case <-time.After(routerCloseWait):
		a.log.Error("router stopped without all its sessions: some did not end within the wait; they can reach no server", "reason", reason, "waited", routerCloseWait)
	}
}

// routerCloseWait bounds how long stopFront waits for the router's sessions.
const routerCloseWait = 5 * time.Second

func (a *Agent) vipConfigured() bool { return a.vip != nil }

func (a *Agent) vipHeld() bool { return a.vip != nil && a.vip.Held() }

func (a *Agent) releaseVIP(reason string) {
	if !a.vipConfigured() {
		return
	}
	held := a.vip.Held()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.vip.Release(ctx); err != nil {
		a.log.Error("cannot drop the VIP", "vip", a.cfg.VIP.Address, "err", err, "reason", reason)
		return
	}
	if held {
		a.log.Info("dropped the VIP", "vip", a.cfg.VIP.Address, "reason", reason)
	}
}

// updateTopologyLocked gives the router the current backends and ends a
// switchover's hold once the new primary serves (or the switchover is
// over some other way).
func (a *Agent) updateTopologyLocked() {
	f := &a.front
	next := a.routerBackendsLocked(time.Now())
	if !slices.Equal(next, f.topo.Backends()) {
		f.topo.Set(next...)
	}
	if !f.held {
		return
	}
	st := a.node.State()
	if st.Switchover.Active() {
		f.sawSwitchover = true
	}
	hasPrimary := slices.ContainsFunc(next, func(b router.Backend) bool { return b.Primary && b.Healthy })
	rc, _ := a.routerSettings()
	overdue := time.Since(f.heldSince) > a.timing().SwitchoverTimeout+rc.DrainTimeout+5*time.Second
	if (f.sawSwitchover && !st.Switchover.Active() && hasPrimary) || overdue {
		f.rt.Resume()
		f.held = false
		a.log.Info("router released held transactions", "primary", st.Primary, "held_for", time.Since(f.heldSince).Round(time.Millisecond).String())
	}
}

// holdForSwitchover is called on the leader before it commits a switchover:
// new transactions queue in the router, and those in flight on the primary
// get up to router.drain_timeout to finish, so the old primary stops with
// nothing running and clients in transaction mode see a wait, not an error.
// An error says transactions were still running when the drain timed out.
func (a *Agent) holdForSwitchover(ctx context.Context) error {
	f := &a.front
	f.mu.Lock()
	rt := f.rt
	if rt != nil && !f.held {
		f.held, f.sawSwitchover, f.heldSince = true, false, time.Now()
	}
	f.mu.Unlock()
	if rt == nil {
		return nil
	}
	rc, _ := a.routerSettings()
	ctx, cancel := context.WithTimeout(ctx, rc.DrainTimeout)
	defer cancel()
	return rt.Hold(ctx)
}

// releaseHold undoes holdForSwitchover when the switchover was not committed.
func (a *Agent) releaseHold() {
	f := &a.front
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rt != nil && f.held {
		f.rt.Resume()
		f.held = false
	}
}

func (f *front) complain(a *Agent, msg string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.complainLocked(a, msg)
}

func (f *front) complainLocked(a *Agent, msg string) {
	if f.complaint != msg {
		f.complaint = msg
		a.log.Warn("front not up", "problem", msg)
	}
}

// routerBackendsLocked is what every router of the cluster routes by: the
// leader's own (here) and the router-only processes, which get it from
// GET /router/topology (topologyapi.go) — one function, so the two never
// disagree. a.front.mu held.
func (a *Agent) routerBackendsLocked(now time.Time) []router.Backend {
	return a.front.markDrainingLocked(a.backends(), now)
}

// backends is the router's view of the members, from the committed state
// and this node's latest observations.
func (a *Agent) backends() []router.Backend {
	return backendsOf(a.node.State(), a.obs.snapshot(), time.Now(), a.timing().FenceTimeout, a.failover().Synchronous())
}

// backendsOf derives the router's backends. The committed state says who is
// the primary; observations say who is up:
//   - the primary is healthy until its last observation shows its
//     postmaster gone, in recovery or fenced. An unreachable agent does not
//     change that (agent death is not database death); the leader's
//     failover does;
//   - a standby is healthy while it runs in recovery and its agent answered
//     within stale, so reads leave a lost host quickly.
func backendsOf(st consensus.State, obs map[string]memberView, now time.Time, stale time.Duration, synchronous bool) []router.Backend {
	names := make([]string, 0, len(st.Members))
	for n := range st.Members {
		names = append(names, n)
	}
	sort.Strings(names) // stable node ids in SHOW POOL_NODES
	var primaryLSN uint64
	replicas := map[string]string{}
	syncStates := map[string]string{}
	if p, ok := obs[st.Primary]; ok {
		primaryLSN = uint64(p.obs.Postgres.CurrentLSN)
		for _, r := range p.obs.Postgres.Replication {
			replicas[r.ApplicationName] = r.State
			syncStates[r.ApplicationName] = r.SyncState
		}
	}
	out := make([]router.Backend, 0, len(names))
	for _, name := range names {
		m := st.Members[name]
		b := router.Backend{Name: name, Host: m.PGHost, Port: m.PGPort, Primary: name == st.Primary, NoLoadBalance: m.NoLoadBalance}
		v, seen := obs[name]
		pg := v.obs.Postgres
		if b.Primary {
			// Unhealthy only on evidence (no postmaster, in recovery,
			// fenced, a synchronous_standby_names outside the committed
			// set): a status query that failed on a loaded server is not
			// evidence, and marking the primary down retires every
			// connection to it, transactions in flight included.
			b.Healthy = seen && !v.obs.Fenced && !pg.InRecovery && (pg.Running || pg.PID != 0)
			if pg.Running {
				ok, _ := syncSafe(synchronous, st, name, pg.SyncStandbyNames)
				b.Healthy = b.Healthy && ok
			}
		} else {
			// Reads only from a standby that replays the primary's WAL now.
			b.Healthy = seen && v.reachable && now.Sub(v.lastSeen) <= stale && pg.Running && pg.InRecovery && !v.obs.Diverged && streamsFrom(pg, st)
			b.ReplayLSN = uint64(pg.ReplayedLSN)
			if primaryLSN > b.ReplayLSN {
				b.LagBytes = int64(primaryLSN - b.ReplayLSN)
			}
			b.ReplicationState = replicas[name]
			b.ReplicationSyncState = syncStates[name]
		}
		out = append(out, b)
	}
	return out
}

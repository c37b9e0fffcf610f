package agent

import (
	"context"
	"time"
)

// fenced reports whether this node must not accept writes nor claim to be
// the primary now.
//
//   - The committed primary is fenced when its lease has run out (lease.go):
//     only contact with the current Raft leader keeps a primary writable,
//     never reaching other members.
//   - Any other member is fenced when it has heard nothing from a Raft
//     leader for fence_timeout: its view of the committed state may be
//     stale, so it must not act on it.
//
// A leader is never fenced: it steps down by itself once it cannot reach a
// quorum (raft.leader_lease_timeout, shorter than fence_timeout); a primary
// that leads renews its lease with a quorum round trip like any other.
func (a *Agent) fenced() bool {
	st := a.node.State()
	now := time.Now()
	if st.Primary == a.cfg.Name && st.Initialized() {
		return !a.leaseHolds(st.Epoch, now)
	}
	return a.outOfContact(now)
}

// outOfContact reports whether this node has heard nothing from a Raft
// leader for fence_timeout: its view of the committed state may be stale.
// Never on the leader. The agent's start counts as contact.
func (a *Agent) outOfContact(now time.Time) bool {
	if a.node.IsLeader() {
		return false
	}
	last := a.node.LastContact()
	if last.Before(a.started) {
		last = a.started
	}
	return now.Sub(last) > a.cfg.Timing.FenceTimeout
}

// leaseHolds reports whether this primary's lease for epoch holds at now.
// The agent's start counts as a renewal: a restarted agent does not stop the
// primary it finds running before it could reach the leader (lease.go).
func (a *Agent) leaseHolds(epoch uint64, now time.Time) bool {
	return now.Before(a.leaseEnd(epoch))
}

// leaseEnd is when this primary's lease for epoch runs out.
func (a *Agent) leaseEnd(epoch uint64) time.Time {
	return a.lease.end(epoch, a.started, a.cfg.Timing.FenceTimeout)
}

// fenceLoop enforces the "One writer" rule on this node (DESIGN): a primary
// whose lease ran out stops its PostgreSQL before the leader's promotion
// deadline (fenceDeadline). It checks often, and it never waits for the
// reconcile loop's locks: the stop is a signal to the postmaster.
func (a *Agent) fenceLoop(ctx context.Context) {
	t := time.NewTicker(25 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st := a.node.State()
		if st.Primary != a.cfg.Name || !st.Initialized() || a.leaseHolds(st.Epoch, time.Now()) {
			continue
		}
		if budget := renewalBudget(a.leaseEnd(st.Epoch), time.Now(), a.leaseRoundTrip()); budget > 0 {
			if err := a.renewLeaseWithin(ctx, st, budget); err == nil {
				continue
			}
		}
		pid, _ := a.inst.PostmasterPID()
		if pid == 0 {
			continue
		}
		// A standby (this node about to be promoted, say) acknowledges no
		// commit: pg_control says so without a connection or a lock.
		cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		state, err := a.inst.ClusterState(cctx)
		cancel()
		if err == nil && state == "in archive recovery" {
			continue
		}
		a.log.Warn("fencing: stopping PostgreSQL at once", "reason", "the lease ran out: no contact with the Raft leader for fence_timeout", "fence_timeout", a.cfg.Timing.FenceTimeout, "epoch", st.Epoch, "pid", pid)
		// A fence is not a crash: if this node is still the primary when
		// it hears from the leader again, it starts in place.
		a.writableEpoch.Store(0)
		if err := a.inst.Kill(ctx, pid); err != nil {
			a.log.Error("fencing: could not stop PostgreSQL", "err", err)
		}
	}
}

// renewalBudget is how long the fence loop may spend on one last renewal
// before it stops a primary whose lease ended at end; zero: stop at once.
//
//   - Noticed within the fence margin (the normal case: this loop runs every
//     25 ms): the leader cannot promote before end + fenceMargin, so a try
//     that ends by end + 100 ms costs nothing and leaves the rest of the
//     margin to the stop; less than 20 ms left is not worth a round trip.
//   - Noticed later: this agent could not run for a while (a freeze, a long
//     stall) and the lease ran out meanwhile, which says nothing about the
//     cluster: if the leader kept this primary (its PostgreSQL answered the
//     direct check), one round trip renews the lease and spares a needless
//     failover; if it promoted someone, the renewal is refused. A lease
//     round trip at most.
func renewalBudget(end, now time.Time, roundTrip time.Duration) time.Duration {
	left := end.Add(100 * time.Millisecond).Sub(now)
	switch {
	case left >= 20*time.Millisecond:
		return min(left, roundTrip)
	case now.Sub(end) < fenceMargin:
		return 0
	default:
		return roundTrip
	}
}

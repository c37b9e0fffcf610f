package agent

import (
	"context"
	"time"

	"github.com/pgha/pgha/postgres"
)

// fenced reports whether this node has lost the Raft quorum for longer than
// fence_timeout: its view of the committed state may be stale, so it must
// not accept writes nor claim to be the primary. The clock starts no earlier
// than the agent itself, so a restarted agent does not fence the primary it
// finds running before it has had a chance to hear from the leader.
//
// Losing the leader is not losing the quorum: while the others elect a new
// leader, this node still reaches a majority of the members' agents and
// stays unfenced, so an election never stops a healthy primary.
func (a *Agent) fenced() bool {
	if a.node.IsLeader() {
		return false
	}
	last := a.node.LastContact()
	if last.Before(a.started) {
		last = a.started
	}
	if time.Since(last) <= a.cfg.Timing.FenceTimeout {
		return false
	}
	return !a.majorityReachable()
}

// majorityReachable reports whether this agent heard from a majority of the
// members (itself included) within fence_timeout.
func (a *Agent) majorityReachable() bool {
	members := a.node.State().Members
	if len(members) == 0 {
		return false
	}
	seen := a.obs.snapshot()
	n := 0
	for name := range members {
		if name == a.cfg.Name {
			n++
			continue
		}
		if v, ok := seen[name]; ok && v.reachable && time.Since(v.lastSeen) <= a.cfg.Timing.FenceTimeout {
			n++
		}
	}
	return n > len(members)/2
}

// fenceLoop enforces the "One writer" rule on this node (DESIGN): an agent
// that has lost contact with the quorum for fence_timeout stops its
// PostgreSQL from accepting writes. The leader promotes a replacement only
// after that deadline (see fenceDeadline), so the two never overlap.
func (a *Agent) fenceLoop(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !a.fenced() {
			continue
		}
		pg := a.pgStatus(ctx)
		if !pg.Running || pg.InRecovery {
			continue
		}
		a.log.Warn("fencing: stopping PostgreSQL", "reason", "no contact with the Raft quorum for fence_timeout", "fence_timeout", a.cfg.Timing.FenceTimeout)
		a.pgMu.Lock()
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		a.inst.Close()
		err := a.inst.Stop(sctx, postgres.StopFast)
		cancel()
		if err != nil {
			a.log.Warn("fencing: fast stop too slow, stopping immediately", "err", err)
			err = a.inst.Stop(ctx, postgres.StopImmediate)
		}
		a.pgMu.Unlock()
		if err != nil {
			a.log.Error("fencing: could not stop PostgreSQL", "err", err)
		}
	}
}

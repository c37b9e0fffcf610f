package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/internal/dirwatch"
	"github.com/pgha/pgha/postgres"
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
	return now.Sub(last) > a.timing().FenceTimeout
}

// leaseHolds reports whether this primary's lease for epoch holds at now.
// The agent's start counts as a renewal: a restarted agent does not stop the
// primary it finds running before it could reach the leader (lease.go).
func (a *Agent) leaseHolds(epoch uint64, now time.Time) bool {
	return now.Before(a.leaseEnd(epoch))
}

// leaseEnd is when this primary's lease for epoch runs out.
func (a *Agent) leaseEnd(epoch uint64) time.Time {
	return a.lease.end(epoch)
}

// fenceLoop enforces the "One writer" rule on this node (DESIGN): a primary
// whose lease ran out freezes its PostgreSQL before the leader's promotion
// deadline (fenceDeadline). It never waits for the reconcile loop's locks:
// the freeze is a signal to every process of the server.
//
// Freezing (SIGSTOP, postgres/freeze.go), not stopping: a frozen server
// acknowledges nothing, as a stopped one, but it resumes in place, with
// its clients' connections and transactions, when the lease is renewed
// after all. That is the common case of a lease that ran out: the Raft
// leader's host was lost, and the election of the next one took longer
// than the lease; the next leader keeps the primary and renews its lease.
// A stop turned that into a crash recovery and a restart under a permit
// (2.3 s of writes lost, against the election's time). A frozen server is
// killed when it is not to resume: the renewal was refused or did not come
// within frozenMax, or the committed state names another primary.
//
// It runs when the answer may have changed, not on a short tick (an idle
// agent costs no CPU): at the end of the lease that makes this node's
// server safe, on a change of the committed state or of the lease, and on
// a change of the data directory's entries (standby.signal removed by a
// promotion, postmaster.pid written by a start). Only while the answer is
// in flux (a server frozen, or leaving recovery) does it look every
// fencePoll; a data directory it cannot watch, too.
func (a *Agent) fenceLoop(ctx context.Context) {
	changed, unsubscribe := a.node.Watch()
	defer unsubscribe()
	f := fence{a: a}
	defer f.closeWatch()
	timer := time.NewTimer(0)
	defer timer.Stop()
	due := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-changed:
		case <-a.lease.changes():
		case <-f.dirChanged():
		}
		// late: how long after it was due this pass runs. A long one means
		// this agent did not run (frozen, starved), which the freeze's log
		// says.
		late := max(time.Since(due), 0)
		wait := f.pass(ctx, late)
		due = time.Now().Add(wait)
		timer.Reset(wait)
	}
}

// fencePoll is how often the fence looks while the answer is in flux;
// fenceIdle bounds a sleep that only events would end (a safety net: every
// change that matters is an event).
const (
	fencePoll = 25 * time.Millisecond
	fenceIdle = time.Second
)

// fence is the fence loop's state between passes.
type fence struct {
	a      *Agent
	frozen frozenServer
	// harmless is the last pass that found the server, past its lease, unable
	// to acknowledge anything (not running, a zombie, a standby): the lease
	// protects nothing there, so a freeze is late only from then on.
	harmless time.Time
	dir      *dirwatch.Watch // the data directory's entries; nil when not watched
}

// watchDir makes sure the data directory is watched and reports whether it
// is. It is called before the pass reads the directory, so that a change
// made after the read is an event.
func (f *fence) watchDir() bool {
	if f.dir != nil && !f.dir.Gone() {
		return true
	}
	f.closeWatch()
	w, err := dirwatch.New(f.a.cfg.Postgres.DataDir)
	if err != nil {
		return false // not there yet (a clone to come), or no inotify: poll
	}
	f.dir = w
	return true
}

func (f *fence) closeWatch() {
	if f.dir != nil {
		f.dir.Close()
		f.dir = nil
	}
}

func (f *fence) dirChanged() <-chan struct{} {
	if f.dir == nil {
		return nil
	}
	return f.dir.Changed()
}

// pass checks once, acts, and returns how long the answer is known to
// hold without an event.
func (f *fence) pass(ctx context.Context, late time.Duration) time.Duration {
	a := f.a
	watched := f.watchDir()
	// untilEvent: nothing but an event (or the safety net) changes the answer.
	untilEvent := fenceIdle
	if !watched {
		untilEvent = fencePoll
	}
	st := a.node.State()
	if f.frozen.pid != 0 {
		f.frozen = a.keepFrozen(ctx, st, f.frozen)
		if f.frozen.pid != 0 {
			return fencePoll
		}
		return 0 // thawed or killed: look again at once
	}
	// mine: the committed state names this node the primary; a server
	// it runs writable otherwise is fenced by unleasedElsewhere.
	now := time.Now()
	mine := st.Primary == a.cfg.Name && st.Initialized()
	if mine && a.leaseHolds(st.Epoch, now) {
		return min(a.leaseEnd(st.Epoch).Sub(now), fenceIdle)
	}
	if !mine && !a.unleasedElsewhere(st, now) {
		if end := a.lease.anyEnd(); end.After(now) {
			return min(end.Sub(now), fenceIdle)
		}
		return fenceIdle // not initialised: the state's change is an event
	}
	// Not the committed primary here: a standby this agent starts
	// (standby.signal written first) reads "in production" in
	// pg_control until its startup process begins recovery (a fresh
	// base backup carries the primary's), yet acknowledges nothing
	// before a promotion removes the signal. Checked first: one stat.
	// PostgreSQL removes the signal before it accepts a write, so the
	// removal is an event of the watched directory.
	if !mine && a.inst.HasStandbySignal() {
		f.harmless = time.Now()
		return untilEvent
	}
	// A postmaster that is gone, or killed and not reaped yet (its
	// postmaster.pid names a zombie), acknowledges nothing; nor does a
	// standalone backend (pg_rewind's crash recovery of a deposed
	// primary, run by this agent), which has no listening socket:
	// frozen and killed, it failed every rewind. A postmaster that starts
	// writes postmaster.pid anew: an event.
	pid, standalone, _ := a.inst.LockFileOwner()
	if pid == 0 || standalone || postgres.Exited(pid) {
		f.harmless = time.Now()
		return untilEvent
	}
	// A standby (this node about to be promoted, say) acknowledges no
	// commit: pg_control says so, read in place (no process to start:
	// everything before the freeze must fit in the fence margin on a
	// loaded host). Without its signal file it may be leaving recovery
	// now: look again soon.
	if state, err := a.inst.ClusterStateNow(); err == nil && state == "in archive recovery" {
		f.harmless = time.Now()
		return fencePoll
	}
	reason, epoch := "the lease ran out: no contact with the Raft leader for fence_timeout", st.Epoch
	if !mine {
		reason, epoch = fmt.Sprintf("it runs as a primary while the committed state this agent knows names %q (epoch %d), and no lease of any epoch holds", st.Primary, st.Epoch), 0
	}
	if err := a.inst.Freeze(pid, a.reaperAfter()); err != nil {
		a.log.Error("fencing: could not freeze PostgreSQL; stopping it", "err", err, "pid", pid)
		a.stopFenced(ctx, pid, reason)
		return fencePoll
	}
	// How long a server that could acknowledge commits stayed unfrozen
	// past its lease (what the leader's margin must cover).
	end := a.leaseEnd(st.Epoch)
	if !mine {
		end = a.lease.anyEnd()
	}
	if f.harmless.After(end) {
		end = f.harmless
	}
	if a.started.After(end) {
		end = a.started // a dead agent freezes nothing: counted from its start
	}
	a.log.Warn("fencing: PostgreSQL frozen (SIGSTOP)", "reason", reason, "fence_timeout", a.timing().FenceTimeout, "epoch", st.Epoch, "pid", pid,
		"after_lease_end", time.Since(end).Round(time.Millisecond), "pass_late", late.Round(time.Millisecond), "resumes", "if the lease is renewed within "+a.frozenMax().String())
	f.frozen = frozenServer{pid: pid, epoch: epoch, at: time.Now()}
	// Freeze first, ask after: one renewal round trip now thaws at once
	// a server whose agent only could not run for a while (a freeze of
	// the agent, a long stall) while the leader kept it the primary.
	// Asked before the freeze, that round trip would come out of the
	// margin the leader leaves for the freeze itself.
	if mine {
		if err := a.renewLeaseWithin(ctx, st, a.leaseRoundTrip()); err == nil {
			f.frozen = a.keepFrozen(ctx, a.node.State(), f.frozen)
		}
	}
	return fencePoll
}

// unleasedElsewhere reports whether a writable server on this node must be
// fenced although the committed state this agent knows does not name it
// the primary: no lease of any epoch holds (neither a renewal nor the
// agent's start). That state may lag: an agent restarted beside the
// primary it runs applies the log's tail only once a leader tells it how
// far the log is committed, and cut off from the leader it never hears;
// its server would write on without a lease. A server it runs writable
// while the state is current is a deposed primary, which must not write
// either. Not before the cluster is initialised on a node that had no Raft
// state when it started: a new member adopting a running server is no
// member's writer yet.
func (a *Agent) unleasedElsewhere(st consensus.State, now time.Time) bool {
	if !st.Initialized() && !a.restarted {
		return false
	}
	return !now.Before(a.lease.anyEnd())
}

// frozenServer is the fence's record of the PostgreSQL it froze.
type frozenServer struct {
	pid   int
	epoch uint64    // the epoch whose lease ran out; 0: frozen by unleasedElsewhere
	at    time.Time // when it was frozen
}

// frozenMax is how long a frozen primary waits for its lease to be renewed
// before it is killed: twice the lease, for an election that took long.
// Past it, its clients are better served by an error than by a hang.
func (a *Agent) frozenMax() time.Duration {
	return 2 * a.timing().FenceTimeout
}

// reaperAfter is when the freeze ends by itself if this agent cannot end
// it (it died, or hangs): a little after frozenMax, so that normally the
// agent's own kill, logged with its reason, comes first.
func (a *Agent) reaperAfter() time.Duration {
	return a.frozenMax() + fenceMargin
}

// keepFrozen decides, on every pass of the fence loop, what becomes of the
// server it froze, and returns the record to keep (zero: none).
//   - The lease of the same epoch holds again (a renewal granted by the
//     leader after a quorum check, which pushed its promotion deadline past
//     the lease's end): thaw it. A renewal is what makes a running primary
//     writable, so it makes a frozen one writable too.
//   - The committed state names another primary or epoch, or frozenMax has
//     passed: kill it.
//   - Otherwise keep it frozen (again: something may have resumed a part
//     of it; SIGCONT is not only ours to send).
func (a *Agent) keepFrozen(ctx context.Context, st consensus.State, f frozenServer) frozenServer {
	now := time.Now()
	if pid, _ := a.inst.PostmasterPID(); pid != f.pid {
		return frozenServer{} // gone: killed, or crashed
	}
	if f.epoch == 0 {
		// Frozen while this agent did not know itself the primary: a
		// lease granted since (by a leader that checked the committed
		// state) is the proof it is; none within frozenMax, a kill.
		switch {
		case st.Primary == a.cfg.Name && st.Initialized() && a.leaseHolds(st.Epoch, now):
			if err := a.inst.Thaw(f.pid); err != nil {
				a.stopFenced(ctx, f.pid, "it could not be thawed")
				return frozenServer{}
			}
			a.log.Info("fence lifted: PostgreSQL thawed", "reason", "a lease was granted: this node is the primary", "epoch", st.Epoch, "frozen_for", now.Sub(f.at).Round(time.Millisecond))
			return frozenServer{}
		case now.Sub(f.at) > a.frozenMax():
			a.stopFenced(ctx, f.pid, "no lease was granted within "+a.frozenMax().String())
			return frozenServer{}
		}
		if err := a.inst.Freeze(f.pid, a.reaperAfter()); err != nil {
			a.stopFenced(ctx, f.pid, "it could not be kept frozen")
			return frozenServer{}
		}
		return f
	}
	mine := st.Primary == a.cfg.Name && st.Epoch == f.epoch
	switch {
	case mine && a.leaseHolds(f.epoch, now):
		if err := a.inst.Thaw(f.pid); err != nil {
			a.log.Error("fencing: could not thaw PostgreSQL; stopping it", "err", err, "pid", f.pid)
			a.stopFenced(ctx, f.pid, "it could not be thawed")
			return frozenServer{}
		}
		a.log.Info("fence lifted: PostgreSQL thawed", "reason", "the lease was renewed", "epoch", f.epoch, "frozen_for", now.Sub(f.at).Round(time.Millisecond))
		return frozenServer{}
	case !mine:
		a.stopFenced(ctx, f.pid, fmt.Sprintf("the committed primary is now %s (epoch %d)", st.Primary, st.Epoch))
		return frozenServer{}
	case now.Sub(f.at) > a.frozenMax():
		a.stopFenced(ctx, f.pid, "the lease was not renewed within "+a.frozenMax().String())
		return frozenServer{}
	}
	if err := a.inst.Freeze(f.pid, a.reaperAfter()); err != nil {
		a.log.Error("fencing: could not keep PostgreSQL frozen; stopping it", "err", err, "pid", f.pid)
		a.stopFenced(ctx, f.pid, "it could not be kept frozen")
		return frozenServer{}
	}
	return f
}

// stopFenced kills the fenced server. A fence is not a crash: if this node
// is still the primary when it hears from the leader again, it starts in
// place under a permit.
func (a *Agent) stopFenced(ctx context.Context, pid int, reason string) {
	a.log.Warn("fencing: stopping PostgreSQL at once", "reason", reason, "pid", pid)
	a.writableEpoch.Store(0)
	if err := a.inst.Kill(ctx, pid); err != nil {
		a.log.Error("fencing: could not stop PostgreSQL", "err", err)
	}
}

// killFrozenAtStart kills a PostgreSQL this agent finds frozen when it
// starts: an earlier run of it fenced the server and died before the lease
// was renewed. Only a renewal granted after the freeze may thaw a server,
// and this run has no record of when that was: a crash is the safe reading
// (the start as primary then needs the leader's permit, as after any crash).
func (a *Agent) killFrozenAtStart() {
	pid, err := a.inst.PostmasterPID()
	if err != nil || pid == 0 || !postgres.Stopped(pid) {
		return
	}
	a.log.Warn("stopping PostgreSQL", "reason", "it is frozen (SIGSTOP), as the fence of an earlier run of this agent left it", "pid", pid)
	if err := a.inst.Kill(context.Background(), pid); err != nil {
		a.log.Error("could not stop the frozen PostgreSQL", "err", err)
	}
}

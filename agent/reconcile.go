package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
	"github.com/pgha/pgha/recovery"
)

// errWaiting marks a state the agent waits out rather than a problem.
type errWaiting struct{ why string }

func (e errWaiting) Error() string { return e.why }

// reconcileLoop converges the local PostgreSQL to the committed state, one
// step per pass, every loop_interval and whenever the committed state changes.
// It is the only goroutine that starts, promotes, rewinds or re-clones
// PostgreSQL; the fence loop only stops it, by signal (fence.go), and Run
// stops it on shutdown once the loops have ended.
func (a *Agent) reconcileLoop(ctx context.Context) {
	changes, unsubscribe := a.node.Watch()
	defer unsubscribe()
	t := newTicker(a.timing().LoopInterval)
	defer t.Stop()
	failures := 0
	for {
		t.follow(a.timing().LoopInterval)
		err := a.reconcileOnce(ctx)
		var w errWaiting
		switch {
		case err == nil, ctx.Err() != nil:
			a.setProblem("")
		case errors.As(err, &w):
			a.setProblem("")
			a.setActivity("")
		default:
			a.setProblem(err.Error())
		}
		a.lastLoop.Store(time.Now().UnixNano())
		// Back off while the same step keeps failing (a clone the primary
		// refuses, say), but react at once to a change of committed state.
		if err != nil && !errors.As(err, &w) {
			failures = min(failures+1, 5)
		} else {
			failures = 0
		}
		var backoff <-chan time.Time
		if failures > 0 {
			backoff = time.After(time.Duration(1<<failures) * 100 * time.Millisecond)
		}
		select {
		case <-ctx.Done():
			return
		case <-changes:
		case <-backoff:
		case <-t.C:
			if backoff != nil {
				select {
				case <-ctx.Done():
					return
				case <-changes:
				case <-backoff:
				}
			}
		}
	}
}

func (a *Agent) reconcileOnce(ctx context.Context) error {
	if !a.inSync(ctx) {
		// Decisions are committed first, and an agent acts only on what is
		// committed now: a restarted agent replaying an old epoch could
		// rewind from a former primary or start as one. (DESIGN)
		return errWaiting{"catching up with the Raft log"}
	}
	st := a.node.State()
	if !st.Initialized() {
		return errWaiting{"waiting for the Raft leader to initialise the cluster"}
	}
	if _, ok := st.Members[a.cfg.Name]; !ok {
		return errWaiting{"waiting to be registered as a member"}
	}
	a.useClusterConfig(st)
	dds, err := a.inst.DataDirState()
	if err != nil {
		return fmt.Errorf("inspect postgres.data_dir: %w", err)
	}
	// Whatever this first step does, asking for a start permit included,
	// it is done when it returns: from then on a stopped PostgreSQL on the
	// committed primary is the leader's to judge.
	defer a.acted.Store(true)
	if dds == postgres.DataDirInvalid {
		return fmt.Errorf("postgres.data_dir %s is not empty and not a PostgreSQL data directory; pgha never touches it: move it away or fix postgres.data_dir", a.cfg.Postgres.DataDir)
	}
	if st.Primary == a.cfg.Name {
		return a.convergePrimary(ctx, st, dds)
	}
	return a.convergeStandby(ctx, st, dds)
}

// inSync reports whether this node's FSM holds everything the leader had
// committed when asked: always on the leader; on a follower, once its applied
// index reaches the leader's commit index (checked at most once a second
// while in sync, at every pass while not).
func (a *Agent) inSync(ctx context.Context) bool {
	if a.node.IsLeader() {
		return true
	}
	// Contact with the leader, not the primary's lease: a member just
	// named the primary holds no lease for its new epoch until the leader
	// grants it a permit, which this pass is about to ask for.
	if a.outOfContact(time.Now()) {
		a.syncedAt = time.Time{}
		return false
	}
	if time.Since(a.syncedAt) < time.Second {
		return true
	}
	base, err := a.leaderAPI()
	if err != nil {
		return false
	}
	var info raftInfo
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := getJSON(cctx, a.http, base+"/internal/raft", &info); err != nil || info.State != "leader" {
		return false
	}
	// The change that woke this pass may be one entry short of what the
	// leader has committed (the leader commits, then tells the followers
	// at its next append): wait for it a moment rather than a whole
	// loop_interval.
	for a.node.AppliedIndex() < info.CommitIndex {
		select {
		case <-cctx.Done():
			return false
		case <-time.After(5 * time.Millisecond):
		}
	}
	a.syncedAt = time.Now()
	return true
}

// convergePrimary makes this node the running, writable primary.
func (a *Agent) convergePrimary(ctx context.Context, st consensus.State, dds postgres.DataDirState) error {
	// A reinit request is for the standby it was made to; one pending when
	// this node became the primary must not wipe its data after a demotion.
	a.reinit.Store(false)
	if dds.IsEmpty() {
		if st.SystemID != 0 {
			return fmt.Errorf("this node is the committed primary but its data directory is empty; the cluster's data (system identifier %d) is on the other members", st.SystemID)
		}
		a.log.Info("running initdb", "reason", "this node was chosen as the first primary and has no data directory", "pgdata", a.cfg.Postgres.DataDir)
		a.setActivity("initdb")
		err := a.inst.Initdb(ctx)
		a.setActivity("")
		if err != nil {
			return fmt.Errorf("initdb: %w", err)
		}
	} else if err := a.checkSystemID(ctx, st); err != nil {
		return err
	}
	if sw := st.Switchover; sw.Active() && sw.From == a.cfg.Name {
		return a.stepDown(ctx, st)
	}
	a.forked.Store("") // a timeline it could not follow is its own now
	pg := a.pgStatus(ctx)
	if pg.Unresponsive {
		// Dead means gone: a postmaster that does not answer may still
		// acknowledge commits. Never start or promote beside it.
		return fmt.Errorf("PostgreSQL runs (pid %d) but does not answer: %s", pg.PID, pg.Error)
	}
	if !pg.Running || pg.InRecovery {
		if err := a.becomeWritable(ctx, st, pg); err != nil {
			return err
		}
		// The router on the leader serves writes once the leader sees
		// this primary running: tell it now, not at its next poll (up to
		// a health interval of writes refused after every failover).
		a.pushObservation(ctx)
		pg = a.pgStatus(ctx)
	}
	names := a.syncNames(st, pg)
	change, err := a.inst.Configure(nil, names)
	if err != nil {
		return fmt.Errorf("configure primary: %w", err)
	}
	switch {
	case change.NeedsRestart:
		until, err := a.requestPermit(ctx, st.Epoch, false)
		if err != nil {
			return fmt.Errorf("not restarting PostgreSQL: %w", err)
		}
		a.log.Info("restarting PostgreSQL", "reason", "a setting that needs a restart changed", "changed", change.What)
		rctx, cancel := context.WithDeadline(ctx, until)
		a.pgMu.Lock()
		err = a.inst.Restart(rctx, postgres.StopFast)
		a.pgMu.Unlock()
		cancel()
		if err != nil {
			return err
		}
	case change.Changed:
		if err := a.inst.Reload(ctx); err != nil {
			return err
		}
		a.callbacks.fire("on_reload", "primary", st)
	}
	pg = a.pgStatus(ctx)
	if !pg.Running || pg.InRecovery {
		return fmt.Errorf("PostgreSQL is not running as the primary yet: %s", pg.Error)
	}
	a.writableEpoch.Store(st.Epoch)
	if err := a.keepSyncInForce(ctx, st, pg); err != nil {
		return err
	}
	a.dbMu.Lock()
	defer a.dbMu.Unlock()
	qctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	if slices.Contains(change.What, "synchronous_standby_names") && len(names) > 0 {
		// Commits that waited for a standby the setting no longer names
		// go through now, not at that standby's next report.
		if err := a.inst.ReleaseSyncWaiters(qctx, names); err != nil {
			a.log.Warn("commits waiting for a synchronous standby wait for its next report", "err", err)
		}
	}
	// Roles once per postmaster: their GRANTs write WAL even when nothing changes.
	if a.rolesPID != pg.PID {
		if err := a.inst.EnsureRoles(qctx); err != nil {
			return fmt.Errorf("create roles: %w", err)
		}
		a.rolesPID = pg.PID
	}
	if err := a.inst.EnsureSlots(qctx, a.slotsOfOthers(st)); err != nil {
		return fmt.Errorf("replication slots: %w", err)
	}
	return nil
}

// queryTimeout bounds every statement the agent runs on its PostgreSQL
// beyond the status query (which has its own second): a stalled backend
// must never stall the agent.
const queryTimeout = 5 * time.Second

// slotsOfOthers are the replication slots of every other member.
func (a *Agent) slotsOfOthers(st consensus.State) []string {
	var slots []string
	for name := range st.Members {
		if name != a.cfg.Name {
			slots = append(slots, SlotName(name))
		}
	}
	sort.Strings(slots)
	return slots
}

// keepSyncInForce checks, on every pass, that the running primary's
// synchronous_standby_names is what the committed set allows (DESIGN "No
// acknowledgement without the synchronous set"). An ALTER SYSTEM, a reload
// that failed or a file pgha could not write leave it otherwise; the
// router and /primary stop treating the node as writable meanwhile
// (syncSafe), and this puts pgha's value back in force.
func (a *Agent) keepSyncInForce(ctx context.Context, st consensus.State, pg postgres.Status) error {
	ok, why := syncSafe(a.failover().Synchronous(), st, a.cfg.Name, pg.SyncStandbyNames)
	if ok {
		return nil
	}
	a.log.Warn("synchronous_standby_names is not in force", "reason", why, "epoch", st.Epoch)
	qctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	if err := a.inst.ResetAlteredSetting(qctx, "synchronous_standby_names"); err != nil {
		return fmt.Errorf("not writable: %s; resetting it failed: %w", why, err)
	}
	return fmt.Errorf("not writable: %s (reset an ALTER SYSTEM override and reloaded)", why)
}

// syncSafe reports whether a primary whose synchronous_standby_names is
// observed may be treated as writable: in synchronous mode it must name at
// least one standby and only members of the committed synchronous set, so
// every commit it acknowledges is on a member the leader knows of. A
// cluster with no other member has nobody to wait for.
func syncSafe(synchronous bool, st consensus.State, self, observed string) (bool, string) {
	if !synchronous {
		return true, ""
	}
	if len(st.Members) <= 1 {
		return true, ""
	}
	sn, err := postgres.ParseSyncStandbyNames(observed)
	if err != nil {
		return false, err.Error()
	}
	if len(sn.Names) == 0 {
		return false, "synchronous_standby_names is empty: commits would be acknowledged without any standby"
	}
	allowed := st.SyncStandbys
	if len(allowed) == 0 {
		// No set recorded for this epoch yet (a version-1 promotion): any
		// other member, as syncNames names them.
		for name := range st.Members {
			if name != self {
				allowed = append(allowed, name)
			}
		}
	}
	for _, n := range sn.Names {
		if !slices.Contains(allowed, n) {
			return false, fmt.Sprintf("synchronous_standby_names %q names %s, which is not in the synchronous set (%s)", observed, n, strings.Join(allowed, ","))
		}
	}
	return true, ""
}

// becomeWritable starts or promotes PostgreSQL as the primary of st.Epoch,
// but only with the Raft leader's permit: the leader serialises permits with
// its failover decisions, so a primary never comes back up while the leader
// promotes someone else. (DESIGN "One writer".) The start must be done
// within the permit's grace; past it the leader fails over, so a start that
// is still going then is stopped.
//
// A standby's data directory is started as a standby and then promoted, so
// it moves to a new timeline; only a former primary starts as a primary.
// Before the promotion, in this order:
//  1. synchronous_standby_names is written and in force (the server shows
//     it): a promoted server acknowledges no commit that no member of the
//     committed set has (DESIGN "No acknowledgement without the synchronous
//     set"); if that cannot be done, no promotion;
//  2. the replication slots of the others exist, so they stream at once;
//  3. the history files of every timeline up to the one this promotion
//     reserved exist, so PostgreSQL takes that one.
func (a *Agent) becomeWritable(ctx context.Context, st consensus.State, pg postgres.Status) error {
	crashed := !pg.Running && a.writableEpoch.Load() == st.Epoch
	until, err := a.requestPermit(ctx, st.Epoch, crashed)
	if err != nil {
		return fmt.Errorf("not starting PostgreSQL as the primary: %w", err)
	}
	// Say so at once: a new leader that sees "starting" does not fail over.
	a.setActivity("starting")
	defer a.setActivity("")
	ctx, cancel := context.WithDeadline(ctx, until)
	defer cancel()
	a.pgMu.Lock()
	defer a.pgMu.Unlock()
	err = a.startAndPromote(ctx, st, pg)
	if err != nil && ctx.Err() != nil {
		// Past the grace the leader fails over: nothing of this start may
		// stay up.
		if pid, _ := a.inst.PostmasterPID(); pid != 0 {
			a.log.Warn("stopping PostgreSQL", "reason", "it did not start within the permit's grace; the leader fails over", "pid", pid)
			_ = a.inst.Kill(context.Background(), pid)
		}
	}
	return err
}

func (a *Agent) startAndPromote(ctx context.Context, st consensus.State, pg postgres.Status) error {
	if !pg.Running {
		if !a.inst.HasStandbySignal() {
			if _, err := a.inst.Configure(nil, a.syncNames(st, pg)); err != nil {
				return fmt.Errorf("configure primary: %w", err)
			}
		}
		a.log.Info("starting PostgreSQL", "role", "primary", "epoch", st.Epoch, "reason", "the leader's permit for this epoch")
		if err := a.inst.Start(ctx); err != nil {
			return err
		}
	}
	pg = a.pgStatus(ctx)
	if !pg.InRecovery {
		return nil
	}
	if err := a.syncBeforePromote(ctx, st, pg); err != nil {
		return fmt.Errorf("not promoting: %w", err)
	}
	// Usually there already (slotsAhead): judged on pg, no query.
	a.slotsAhead(ctx, st, pg)
	if st.Timeline > pg.Timeline {
		if err := a.inst.ReserveTimeline(pg.Timeline, st.Timeline); err != nil {
			a.log.Error("cannot reserve the committed timeline; PostgreSQL takes the next free one", "timeline", st.Timeline, "err", err)
		}
	}
	a.log.Info("promoting", "epoch", st.Epoch, "timeline", st.Timeline, "reason", "committed state names this node the primary")
	a.setActivity("promoting")
	if err := a.inst.Promote(ctx); err != nil {
		return err
	}
	if after := a.pgStatus(ctx); st.Timeline != 0 && after.Running && after.Timeline != st.Timeline {
		a.log.Error("promoted onto another timeline than the committed one", "timeline", after.Timeline, "committed", st.Timeline)
	}
	return nil
}

// syncBeforePromote makes sure the server's synchronous_standby_names names
// only members of the new epoch's synchronous set before it is promoted.
// What the standby keeps there (standbySyncNames) usually is; otherwise it
// writes the names for the new epoch, reloads, and waits until the server
// shows them. The primary's loop writes the exact names after the promotion.
func (a *Agent) syncBeforePromote(ctx context.Context, st consensus.State, pg postgres.Status) error {
	names := a.syncNames(st, pg)
	want := syncNamesValue(names)
	if ok, why := syncSafe(a.failover().Synchronous(), st, a.cfg.Name, want); !ok {
		return errors.New(why)
	}
	// pg is the server's status of a moment ago: no query of its own (a
	// new connection to a loaded standby can take 60 ms).
	if ok, _ := syncSafe(true, st, a.cfg.Name, pg.SyncStandbyNames); ok && pg.Running && a.failover().Synchronous() {
		return nil
	}
	if err := a.inst.SetSyncStandbyNames(names); err != nil {
		return err
	}
	if err := a.inst.Reload(ctx); err != nil {
		return fmt.Errorf("reload synchronous_standby_names: %w", err)
	}
	start, reset := time.Now(), false
	for {
		got, err := a.inst.ShowSetting(ctx, "synchronous_standby_names")
		if err == nil && got == want {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("the server shows %q, not %q", got, want)
			if !reset && time.Since(start) > 200*time.Millisecond {
				// Not the reload's delay: an ALTER SYSTEM override wins
				// over pgha.conf.
				reset = true
				a.log.Warn("removing an ALTER SYSTEM override of synchronous_standby_names before promotion", "shown", got)
				_ = a.inst.ResetAlteredSetting(ctx, "synchronous_standby_names")
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("synchronous_standby_names not in force: %w", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// stepDown stops this primary cleanly for a planned switchover. A clean
// (fast) shutdown sends all WAL to the connected standbys before it ends, so
// the candidate can take over with everything.
func (a *Agent) stepDown(ctx context.Context, st consensus.State) error {
	pg := a.pgStatus(ctx)
	if pg.Running {
		a.log.Info("stopping PostgreSQL", "reason", "switchover to "+st.Switchover.To, "epoch", st.Epoch)
		a.pgMu.Lock()
		a.inst.Close()
		stopped := make(chan struct{})
		go a.reportShutDown(ctx, stopped)
		err := a.inst.Stop(ctx, postgres.StopFast)
		close(stopped)
		a.pgMu.Unlock()
		if err != nil {
			return fmt.Errorf("stop for switchover: %w", err)
		}
		// A planned stop is not a crash: if the switchover is cancelled,
		// this node starts again as primary.
		a.writableEpoch.Store(0)
		a.pushObservation(ctx)
	}
	return errWaiting{"stopped for the switchover to " + st.Switchover.To}
}

// reportShutDown tells the leader as soon as pg_control says "shut down",
// until stopped is closed. The shutdown checkpoint is written by then and
// no backend is left: the WAL ends there and nothing more can be
// acknowledged. The postmaster still waits for its WAL senders to hand the
// last of it to the standbys (0.2 s on the benchmark), which the leader
// checks on the candidate's side anyway before it promotes.
func (a *Agent) reportShutDown(ctx context.Context, stopped <-chan struct{}) {
	for {
		select {
		case <-stopped:
			return
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Millisecond):
		}
		// pg_control read in place: no pg_controldata run every 10 ms.
		state, err := a.inst.ClusterStateNow()
		if err == nil && state == "shut down" {
			a.pushObservation(ctx)
			return
		}
	}
}

// syncNames is what the primary names in synchronous_standby_names: a subset
// of the committed synchronous set, so every acknowledged commit is on a
// member the leader knows of (see syncDecisions). The first member of the set
// that streams; if none does, the whole set (writes wait for one of them);
// if the set is empty (a new primary), every other member.
func (a *Agent) syncNames(st consensus.State, pg postgres.Status) []string {
	if !a.failover().Synchronous() {
		return nil
	}
	streaming := map[string]bool{}
	for _, r := range pg.Replication {
		if r.State == "streaming" {
			streaming[r.ApplicationName] = true
		}
	}
	for _, s := range st.SyncStandbys {
		if streaming[s] {
			return []string{s}
		}
	}
	if len(st.SyncStandbys) > 0 {
		return st.SyncStandbys
	}
	return a.otherMembers(st)
}

// standbySyncNames is what a standby keeps in synchronous_standby_names in
// synchronous mode: every other member. A standby ignores the setting; kept
// there, it is already safe for a promotion whose synchronous set holds
// every other member (a switchover with all members healthy), which then
// needs no write and reload between the leader's decision and pg_ctl
// promote. And the server waits for a standby from its first commit on:
// its checkpointer published long ago that names are set (PostgreSQL's
// sync_standbys_defined, which each commit checks), where a reload just
// before the promotion races with it.
func (a *Agent) standbySyncNames(st consensus.State) []string {
	if !a.failover().Synchronous() {
		return nil
	}
	return a.otherMembers(st)
}

// otherMembers are the members but this one, sorted.
func (a *Agent) otherMembers(st consensus.State) []string {
	var others []string
	for name := range st.Members {
		if name != a.cfg.Name {
			others = append(others, name)
		}
	}
	sort.Strings(others)
	return others
}

// convergeStandby makes this node a hot standby streaming from the primary:
// cloning it when there is no data directory, rewinding it when it was last
// a primary, re-cloning it when asked to or when rewind is impossible.
func (a *Agent) convergeStandby(ctx context.Context, st consensus.State, dds postgres.DataDirState) error {
	p, ok := st.Members[st.Primary]
	if !ok {
		return errWaiting{"waiting for the primary to register"}
	}
	if st.SystemID == 0 {
		return errWaiting{"waiting for the primary to finish initdb"}
	}
	if a.reinit.Load() && !dds.IsEmpty() {
		if err := a.reinitFrom(ctx, st, p, "an operator asked for it"); err != nil {
			return err
		}
		a.reinit.Store(false)
		dds = postgres.DataDirValid
	}
	if dds.IsEmpty() {
		a.setActivity("cloning")
		from, err := a.cloneByMethods(ctx, st, p, "no data directory: a new standby starts from a base backup", func(src recovery.Source) error {
			return recovery.Clone(ctx, a.cfg.Postgres.BinDir, a.cfg.Postgres.DataDir, src, a.cfg.Postgres.RunAs, a.progress("cloning"))
		})
		a.setActivity("")
		if err != nil {
			return fmt.Errorf("clone from %s: %w", from, err)
		}
		a.log.Info("clone finished", "from", from)
	} else if err := a.checkSystemID(ctx, st); err != nil {
		return err
	}
	pg := a.pgStatus(ctx)
	if (pg.Running || pg.Unresponsive) && !pg.InRecovery {
		// A writable server that is not the committed primary: stop it
		// first, whether or not it answers SQL (DESIGN "Dead means gone":
		// one that does not answer may still acknowledge commits). It must
		// be rewound onto the primary's timeline before it may stream.
		a.log.Warn("stopping a writable server that is not the committed primary", "primary", st.Primary, "epoch", st.Epoch, "pid", pg.PID, "answers", pg.Running)
		if err := a.stopWritable(ctx, pg); err != nil {
			return err
		}
		pg = a.pgStatus(ctx)
	}
	if pg.Unresponsive {
		return fmt.Errorf("PostgreSQL runs (pid %d) as a standby but does not answer: %s", pg.PID, pg.Error)
	}
	if !pg.Running {
		why, err := a.rewindReason(ctx, st)
		if err != nil {
			return err
		}
		if why != "" {
			// Rewind before rejoin: a former primary never serves or streams
			// before it is on the new primary's timeline. (DESIGN)
			if err := a.rewindFrom(ctx, st, p, why); err != nil {
				return err
			}
		}
	}
	change, err := a.inst.Configure(a.standbyOf(p), a.standbySyncNames(st))
	if err != nil {
		return fmt.Errorf("configure standby: %w", err)
	}
	switch {
	case !pg.Running:
		a.log.Info("starting PostgreSQL", "role", "standby", "upstream", st.Primary, "epoch", st.Epoch)
		a.pgMu.Lock()
		err := a.inst.Start(ctx)
		a.pgMu.Unlock()
		if err != nil {
			return err
		}
	case change.NeedsRestart:
		a.log.Info("restarting PostgreSQL", "reason", "a setting that needs a restart changed")
		if err := a.inst.Restart(ctx, postgres.StopFast); err != nil {
			return err
		}
	case change.Changed:
		a.log.Info("reloading PostgreSQL", "reason", "replication settings changed", "upstream", st.Primary)
		if err := a.inst.Reload(ctx); err != nil {
			return err
		}
		if slices.Contains(change.What, "primary_conninfo") {
			a.followNewUpstream(ctx, p)
		}
		a.callbacks.fire("on_reload", "replica", st)
	}
	if pg.Running {
		a.slotsAhead(ctx, st, pg)
		return a.rewindIfForked(ctx, st, p, pg)
	}
	return nil
}

// followNewUpstream wakes this standby's startup process until it streams
// from its new upstream p, for up to five seconds, in the background: after
// every failover and switchover it fails at least once (the old upstream
// went away, or p was still being promoted) and would otherwise sleep
// wal_retrieve_retry_interval before trying again, while the new primary's
// first commits wait for a synchronous standby.
func (a *Agent) followNewUpstream(ctx context.Context, p consensus.Member) {
	if !a.wakingReceiver.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer a.wakingReceiver.Store(false)
		a.inst.WakeUntilStreaming(ctx, p.PGHost, p.PGPort, 5*time.Second)
	}()
}

// slotsAhead keeps, on a running standby, the replication slots of every
// other member, as Patroni's permanent slots do: once this standby is
// promoted the others find their slots at once, instead of failing and
// retrying after wal_retrieve_retry_interval while the first commits wait
// for a synchronous standby. The slots reserve no WAL until used.
func (a *Agent) slotsAhead(ctx context.Context, st consensus.State, pg postgres.Status) {
	want := a.slotsOfOthers(st)
	have := map[string]bool{}
	for _, s := range pg.Slots {
		have[s.Name] = true
	}
	if !slices.ContainsFunc(want, func(s string) bool { return !have[s] }) {
		return
	}
	qctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	if err := a.inst.CreateMissingSlots(qctx, want); err != nil {
		a.log.Warn("cannot create replication slots ahead of a promotion; the standbys retry until they exist", "err", err)
	}
}

// stopWritable stops a writable server that is not the committed primary:
// a fast shutdown (clean, so it may follow without pg_rewind) for at most
// two seconds, then by signal, without waiting for any lock but pgMu's
// (the reconcile loop's own).
func (a *Agent) stopWritable(ctx context.Context, pg postgres.Status) error {
	a.pgMu.Lock()
	defer a.pgMu.Unlock()
	if pg.Running {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := a.inst.Stop(sctx, postgres.StopFast)
		cancel()
		if err == nil {
			return nil
		}
		a.log.Warn("fast stop too slow, stopping by signal", "err", err)
	}
	pid, err := a.inst.PostmasterPID()
	if err != nil {
		return err
	}
	return a.inst.Kill(ctx, pid)
}

// rewindReason says why a stopped data directory must be rewound before it
// starts as a standby, or "" if it need not.
func (a *Agent) rewindReason(ctx context.Context, st consensus.State) (string, error) {
	wasStandby, err := a.wasStandby(ctx)
	if err != nil {
		return "", err
	}
	if !wasStandby {
		if at, ok, err := a.followsWithoutRewind(ctx, st); err != nil {
			return "", err
		} else if ok {
			a.log.Info("following the new primary without pg_rewind", "primary", st.Primary, "reason", "this former primary shut down cleanly and its WAL ends at "+at+", on the new primary's history")
			a.lastRejoin.Store("follow")
			return "", nil
		}
		return "this data directory was last a primary; it must join the new primary's timeline", nil
	}
	// A standby stopped after its WAL went past the fork (stopped by
	// rewindIfForked, say, before a pg_rewind that failed): PostgreSQL
	// would refuse to start it on the new timeline, or retry forever.
	tli, hist, ok := a.primaryTimeline(st)
	if !ok {
		return "", nil
	}
	ends, err := a.inst.StoppedWALEnds(ctx)
	if err != nil {
		return "", err
	}
	for _, pos := range ends {
		if why := postgres.ForkedOff(tli, hist, pos); why != "" {
			a.forked.Store(why)
			return forkedReason + why, nil
		}
	}
	return "", nil
}

// followsWithoutRewind tells whether a former primary can start as a
// standby of the new primary as it is: it shut down cleanly (a switchover's
// fast stop), so its WAL ends with the shutdown checkpoint, and the new
// primary's timeline left this one at or after that end (the candidate had
// received everything before it was promoted). Such a server replays
// nothing the new primary lacks; pg_rewind would find nothing to undo.
// Patroni skips the rewind in the same case. Until the new primary runs and
// publishes its timeline it waits (a rewind would wait for the same); a
// crashed server, or WAL past the fork, means rewind.
func (a *Agent) followsWithoutRewind(ctx context.Context, st consensus.State) (string, bool, error) {
	state, err := a.inst.ClusterState(ctx)
	if err != nil || state != "shut down" {
		return "", false, err
	}
	tli, hist, ok := a.primaryTimeline(st)
	if !ok {
		return "", false, errWaiting{"waiting for " + st.Primary + " to run as the primary: this former primary follows it without pg_rewind if its WAL ends on the new timeline's history"}
	}
	w, err := a.inst.StoppedWAL(ctx)
	if err != nil {
		return "", false, err
	}
	if !postgres.OnHistory(tli, hist, w.End) {
		return "", false, nil
	}
	return w.End.String(), true, nil
}

// rewindIfForked rewinds a running standby whose WAL went past the point
// where the primary's timeline forked off its own: it received WAL the
// promoted standby never had (it was ahead of it, or lagged less). Such a
// standby can never stream from the new primary, and PostgreSQL retries
// forever, so it is stopped (a clean shutdown in recovery, which pg_rewind
// accepts) and rewound like a former primary. A standby that is merely
// behind, or briefly disconnected, is left alone: its WAL stops at or before
// the fork.
func (a *Agent) rewindIfForked(ctx context.Context, st consensus.State, p consensus.Member, pg postgres.Status) error {
	tli, hist, ok := a.primaryTimeline(st)
	// pg.Timeline (the WAL receiver's, else the last restartpoint's) reaches
	// the primary's once this standby follows it: then nothing to check.
	if !ok || !pg.InRecovery || pg.Timeline == tli {
		return nil
	}
	pos, err := a.inst.StandbyWALEnd(ctx)
	if err != nil {
		return fmt.Errorf("check that this standby can follow timeline %d of %s: %w", tli, st.Primary, err)
	}
	why := postgres.ForkedOff(tli, hist, pos)
	if why == "" {
		return nil
	}
	a.forked.Store(why)
	why = forkedReason + why
	a.log.Warn("stopping PostgreSQL", "reason", why, "primary", st.Primary)
	a.pgMu.Lock()
	a.inst.Close()
	err = a.inst.Stop(ctx, postgres.StopFast)
	a.pgMu.Unlock()
	if err != nil {
		return err
	}
	return a.rewindFrom(ctx, st, p, why)
}

const forkedReason = "this standby's WAL went past the fork of the primary's timeline: "

// primaryTimeline is the committed primary's timeline and its history, as
// its agent last published them while running as the primary of this epoch.
func (a *Agent) primaryTimeline(st consensus.State) (uint32, []postgres.TimelineSwitch, bool) {
	o, ok := a.obs.snapshot()[st.Primary]
	if !ok || !o.reachable || o.obs.Epoch != st.Epoch || !o.obs.Postgres.Running || o.obs.Postgres.InRecovery || o.obs.Postgres.Timeline == 0 {
		return 0, nil, false
	}
	return o.obs.Postgres.Timeline, o.obs.TimelineHistory, true
}

// rewindFrom runs pg_rewind against the primary; if rewinding is impossible
// it re-clones, keeping the old data directory until the clone is in place.
func (a *Agent) rewindFrom(ctx context.Context, st consensus.State, p consensus.Member, why string) error {
	runsAsPrimary := func() bool {
		o, ok := a.obs.snapshot()[st.Primary]
		return ok && o.reachable && o.obs.Postgres.Running && !o.obs.Postgres.InRecovery
	}
	if !runsAsPrimary() {
		// A restarted agent has not polled anyone yet, and the primary
		// may have finished its promotion since the last poll: ask now
		// rather than wait a loop_interval.
		a.refresh(ctx, st, st.Primary)
	}
	if !runsAsPrimary() {
		// Let the new primary finish its promotion first: the checkpoint
		// below would otherwise be a restartpoint that slows it down.
		return errWaiting{"waiting for " + st.Primary + " to run as the primary before pg_rewind"}
	}
	if pid, _ := a.inst.PostmasterPID(); pid != 0 {
		// The crashed postmaster (or its last children) has not gone yet.
		return errWaiting{fmt.Sprintf("waiting for the old postmaster (pid %d) to exit before pg_rewind", pid)}
	}
	a.log.Info("rewinding", "from", st.Primary, "epoch", st.Epoch, "reason", why, "restore_target_wal", a.inst.WrittenRestoreCommand() != "")
	a.setActivity("rewinding")
	if err := a.checkpointSource(ctx, p); err != nil {
		a.setActivity("")
		return fmt.Errorf("rewind from %s: %w", st.Primary, err)
	}
	a.pgMu.Lock()
	// With an archive, WAL this former primary recycled before the fork
	// comes from there (pg_rewind asks the target's own restore_command,
	// which its pgha.conf holds) instead of making the rewind impossible.
	restore := a.inst.WrittenRestoreCommand() != ""
	err := recovery.Rewind(ctx, a.cfg.Postgres.BinDir, a.cfg.Postgres.DataDir, recovery.RewindSource{
		Host: p.PGHost, Port: p.PGPort, User: a.cfg.Postgres.Rewind.User, PassFile: a.passfile(), Database: "postgres",
		RestoreTargetWAL: restore,
	}, a.cfg.Postgres.RunAs, a.progress("rewinding"))
	a.pgMu.Unlock()
	a.setActivity("")
	if err != nil && !errors.Is(err, recovery.ErrRewindImpossible) {
		// A target that keeps failing (its crash recovery cannot find a
		// checkpoint, say) would never rejoin: after a few tries, re-clone.
		// The old data stays aside until the clone is in place.
		a.rewindFailures++
		if a.rewindFailures >= 3 {
			err = fmt.Errorf("%w: failed %d times, last: %v", recovery.ErrRewindImpossible, a.rewindFailures, err)
		}
	}
	switch {
	case err == nil:
		a.rewindFailures = 0
		a.lastRejoin.Store("rewind")
		a.forked.Store("")
		a.log.Info("rewind finished", "from", st.Primary)
		return nil
	case errors.Is(err, recovery.ErrRewindImpossible):
		a.rewindFailures = 0
		a.log.Warn("rewind impossible, re-cloning", "err", err)
		return a.reinitFrom(ctx, st, p, "pg_rewind could not rewind it: "+err.Error())
	default:
		return fmt.Errorf("rewind from %s: %w", st.Primary, err)
	}
}

// checkpointSource makes the new primary write a checkpoint before pg_rewind
// reads it: until its first checkpoint after promotion, its pg_control still
// names the old timeline, and pg_rewind would see no divergence and leave the
// former primary's extra WAL in place.
func (a *Agent) checkpointSource(ctx context.Context, p consensus.Member) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	rw := a.cfg.Postgres.Rewind
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d dbname=postgres sslmode=prefer connect_timeout=2", p.PGHost, p.PGPort))
	if err != nil {
		return err
	}
	cfg.User, cfg.Password = rw.User, rw.Password()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect to the new primary for a checkpoint: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		return fmt.Errorf("checkpoint on the new primary: %w", err)
	}
	return nil
}

// reinitFrom replaces the data directory with a fresh clone of the primary.
func (a *Agent) reinitFrom(ctx context.Context, st consensus.State, p consensus.Member, why string) error {
	a.setActivity("reinit")
	defer a.setActivity("")
	a.pgMu.Lock()
	defer a.pgMu.Unlock()
	a.inst.Close()
	if err := a.inst.Stop(ctx, postgres.StopFast); err != nil {
		return err
	}
	from, err := a.cloneByMethods(ctx, st, p, "re-clone: "+why, func(src recovery.Source) error {
		kept, err := recovery.ReinitKeeping(ctx, a.cfg.Postgres.BinDir, a.cfg.Postgres.DataDir, src, a.cfg.Postgres.RunAs, a.keepReplaced(), a.progress("reinit"))
		a.logKept(kept, why)
		return err
	})
	if err != nil {
		return fmt.Errorf("re-clone from %s: %w", from, err)
	}
	a.lastRejoin.Store("clone")
	a.forked.Store("")
	a.log.Info("re-clone finished", "from", from)
	return nil
}

// cloneByMethods runs clone with each clone method in force in turn
// (backup.clone_methods, as Patroni's create_replica_methods) until one
// succeeds: the backup tool's restore of its latest backup (the standby
// then replays the WAL since from the archive), or pg_basebackup from the
// best member (cloneFromBest). It returns what the clone came from.
func (a *Agent) cloneByMethods(ctx context.Context, st consensus.State, p consensus.Member, why string, clone func(recovery.Source) error) (string, error) {
	b := a.backup()
	var err error
	from := ""
	for _, m := range b.CloneMethods {
		if m == MethodBaseBackup {
			if from, err = a.cloneFromBest(ctx, st, p, why, clone); err == nil {
				return from, nil
			}
			continue
		}
		tool := b.restoreTool()
		if tool == nil || m != b.Tool {
			continue // validated away; an agent with other rules
		}
		from = m + " backup"
		a.log.Info("cloning", "from", from, "method", m, "reason", why)
		src := recovery.Source{Tool: tool, SystemID: st.SystemID}
		if err = clone(src); err == nil {
			return from, nil
		}
		a.log.Warn("clone method failed; trying the next one", "method", m, "err", err)
	}
	if from == "" {
		return "", errors.New("no clone method in backup.clone_methods")
	}
	return from, err
}

// cloneFromBest runs clone against the best source of a base backup:
// first each member tagged clonefrom that streams from the primary p right
// now (as its agent reports: a backup of a standby that lags or follows
// another timeline would only need a rewind after), then the primary if
// those fail. It returns the name of the last source tried.
//
// A standby source is cloned without a slot: a new member's slot may not
// be on the standbys yet. The WAL the clone needs comes in the backup
// (-X stream); what follows it the primary keeps in this member's slot
// there, which reserves WAL from its creation, before any clone.
func (a *Agent) cloneFromBest(ctx context.Context, st consensus.State, p consensus.Member, why string, clone func(recovery.Source) error) (string, error) {
	var err error
	for _, name := range a.cloneFromTagged(ctx, st, p) {
		m := st.Members[name]
		src := a.cloneSource(m)
		src.SlotName = ""
		a.log.Info("cloning", "from", name, "tag", "clonefrom", "primary", st.Primary, "reason", why)
		if err = clone(src); err == nil {
			return name, nil
		}
		a.log.Warn("clone from a clonefrom member failed; trying the next source", "from", name, "err", err)
	}
	a.log.Info("cloning", "from", st.Primary, "slot", SlotName(a.cfg.Name), "reason", why)
	return st.Primary, clone(a.cloneSource(p))
}

// cloneFromTagged lists the members tagged clonefrom, other than this one
// and the primary, whose agents say now that they stream from p in the
// current epoch; in name order.
func (a *Agent) cloneFromTagged(ctx context.Context, st consensus.State, p consensus.Member) []string {
	var out []string
	for _, name := range slices.Sorted(maps.Keys(st.Members)) {
		m := st.Members[name]
		if !m.CloneFrom || name == a.cfg.Name || name == st.Primary || m.APIURL == "" {
			continue
		}
		octx, cancel := context.WithTimeout(ctx, time.Second)
		var o Observation
		err := getJSON(octx, a.http, m.APIURL+"/internal/observation", &o)
		cancel()
		pg := o.Postgres
		switch {
		case err != nil:
			a.log.Info("not cloning from a clonefrom member", "member", name, "reason", "its agent does not answer: "+err.Error())
		case o.Epoch != st.Epoch || !pg.Running || !pg.InRecovery || !pg.Streaming || pg.UpstreamHost != p.PGHost || pg.UpstreamPort != p.PGPort:
			a.log.Info("not cloning from a clonefrom member", "member", name, "reason", "it does not stream from the primary "+st.Primary+" in this epoch")
		default:
			out = append(out, name)
		}
	}
	return out
}

// progress turns pg_basebackup / pg_rewind progress lines into the activity
// shown in /cluster and list ("cloning 42%").
func (a *Agent) progress(what string) func(string) {
	return func(line string) {
		if pct := progressPercent(line); pct != "" {
			a.setActivity(what + " " + pct)
		}
		a.log.Debug(what, "progress", line)
	}
}

// progressPercent is the percentage a progress line ends its parenthesis
// with: pg_basebackup's "1234/5678 kB (21%), 0/1 tablespace", pg_rewind's
// "(21%)", pgBackRest's "restore file ... (8KB, 21.50%) checksum ..."; ""
// when it has none.
func progressPercent(line string) string {
	i := strings.Index(line, "%)")
	if i <= 0 {
		return ""
	}
	j := strings.LastIndexAny(line[:i], "( ")
	if j < 0 {
		return ""
	}
	n := line[j+1 : i]
	if n == "" || strings.Trim(n, "0123456789.") != "" {
		return ""
	}
	return n + "%"
}

// wasStandby reports whether a stopped data directory was last a standby (or
// is a fresh base backup): only then may it start as a standby without rewind.
func (a *Agent) wasStandby(ctx context.Context) (bool, error) {
	if recovery.RewindIncomplete(a.cfg.Postgres.DataDir) {
		return false, nil // an interrupted pg_rewind: Rewind refuses, and it is re-cloned
	}
	if a.inst.HasBackupLabel() {
		return true, nil
	}
	state, err := a.inst.ClusterState(ctx)
	if err != nil {
		return false, err
	}
	switch state {
	case "shut down in recovery", "in archive recovery":
		return true, nil
	}
	return false, nil
}

// checkSystemID refuses a data directory that belongs to another cluster.
func (a *Agent) checkSystemID(ctx context.Context, st consensus.State) error {
	if st.SystemID == 0 {
		return nil
	}
	id, err := a.inst.SystemID(ctx)
	if err != nil {
		return fmt.Errorf("read system identifier: %w", err)
	}
	if id != st.SystemID {
		return fmt.Errorf("postgres.data_dir %s belongs to another cluster (system identifier %d, this cluster's is %d); pgha will neither start nor wipe it: move it away and this node will clone a fresh copy", a.cfg.Postgres.DataDir, id, st.SystemID)
	}
	return nil
}

func (a *Agent) pgStatus(ctx context.Context) postgres.Status {
	a.dbMu.Lock()
	defer a.dbMu.Unlock()
	return a.inst.Status(ctx)
}

func (a *Agent) cloneSource(p consensus.Member) recovery.Source {
	return recovery.Source{
		Host:     p.PGHost,
		Port:     p.PGPort,
		User:     a.cfg.Postgres.Replication.User,
		PassFile: a.passfile(),
		SlotName: SlotName(a.cfg.Name),
	}
}

func (a *Agent) standbyOf(p consensus.Member) *postgres.Standby {
	return &postgres.Standby{
		PrimaryHost:     p.PGHost,
		PrimaryPort:     p.PGPort,
		User:            a.cfg.Postgres.Replication.User,
		PassFile:        a.passfile(),
		SlotName:        SlotName(a.cfg.Name),
		ApplicationName: a.cfg.Name,
	}
}

// SlotName is the physical replication slot the primary keeps for a member.
func SlotName(member string) string {
	b := []byte("pgha_" + member)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			b[i] = '_'
		}
	}
	return string(b)
}

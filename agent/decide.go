package agent

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
)

// Policy is the part of the configuration the leader's decisions depend on.
type Policy struct {
	Synchronous          bool
	MaxLagOnFailover     int64
	FenceTimeout         time.Duration
	HealthInterval       time.Duration
	PrimaryRestartWindow time.Duration
	SwitchoverTimeout    time.Duration
}

// Inputs is everything the leader's policy looks at. decide never does I/O,
// so every branch is covered by table tests with a fake clock.
type Inputs struct {
	State        consensus.State
	Observations map[string]memberView
	Now          time.Time
	Self         string   // the Raft leader making the decision
	Voters       []string // Raft's current voters
	NewClusterID string   // used if the cluster is initialised now
	// BootstrapConfig is committed as the cluster-wide configuration's
	// version 1 when there is none (the leader's own file's values).
	BootstrapConfig consensus.ClusterConfig
	Policy          Policy

	// LeaderSince is when this node became leader.
	LeaderSince time.Time
	// PriorLeases bounds when the leases granted before this node became
	// leader were renewed: LeaderSince, or earlier when a quorum of members
	// said when they last heard from a leader (priorLeaseBound). The fence
	// deadline of a primary this leader has not renewed counts from then.
	// Zero: LeaderSince.
	PriorLeases time.Time
	// Permits holds when the primary's agent was first allowed to start or
	// promote its PostgreSQL in the current epoch, since it last ran.
	Permits map[string]time.Time
	// PrimaryAnswers is the leader's direct check of the primary's
	// PostgreSQL when its agent does not answer: nil when not checked.
	PrimaryAnswers *bool
	// SyncMark records when the primary's synchronous_standby_names last
	// narrowed, and its LSN then (see syncDecisions).
	SyncMark syncMark
	// SwitchoverSince is when the leader first saw the current switchover.
	SwitchoverSince time.Time
	// EpochSince is when the leader first saw the current epoch: a primary
	// just named is given time to be promoted before it is judged.
	EpochSince time.Time
	// PrimaryLease is when this leader last granted the primary a lease
	// renewal in the current epoch (zero if it has not).
	PrimaryLease time.Time
	// StartingUpSince is when this leader first saw the primary's agent
	// report that it is starting up (Observation.StartingUp) in this epoch;
	// zero if it has not. It bounds how long a starting agent holds back a
	// failover, so one that restarts over and over cannot hold it forever.
	StartingUpSince time.Time
}

// syncMark: since At, the primary's synchronous_standby_names has named only
// Names, and LSN is the primary's position a settling delay after At (zero
// until then). Walsenders adopt a reloaded setting at their next loop, so a
// standby that was just dropped from the setting may still acknowledge a
// commit or two; every such commit lies before LSN.
type syncMark struct {
	Epoch uint64
	Names string
	At    time.Time
	LSN   postgres.LSN
}

// syncSettle is how long after the primary's setting changed its walsenders
// are taken to have all adopted it.
const syncSettle = time.Second

// leaderMemory is what the Raft leader remembers between rounds of its loop:
// what it granted (start permits, lease renewals) and when it first noticed
// something (its election, an epoch, a switchover, a narrowed
// synchronous_standby_names, the primary's agent starting up). None of it is
// in the Raft log: a node that becomes leader starts from elected, and
// decide accounts for what it cannot know.
//
// It is a plain value. inputs and the helpers below return a new one and
// never write to the maps of the one they are given (a map is copied before
// it changes), so a copy handed to decide, or kept by a test, never changes
// under its holder. The leader keeps the current one in leader, under
// leader.mu.
type leaderMemory struct {
	since       time.Time            // when this node became leader (zero: not leader)
	term        uint64               // the Raft term it leads in since then
	priorLeases time.Time            // Inputs.PriorLeases
	permits     map[string]time.Time // first start/promote permit granted since the member last ran, by member, for permitEpoch
	permitEpoch uint64
	leases      map[string]time.Time // last lease renewal granted, by member, for leaseEpoch (lease.go)
	leaseEpoch  uint64
	syncMark    syncMark
	// switchoverSince is when the leader first saw switchoverOf.
	switchoverSince time.Time
	switchoverOf    consensus.Switchover
	// epochSince is when the leader first saw epochSeen begin (zero if it
	// inherited it on election); epochSeen is zero until its first round.
	epochSeen       uint64
	epochSince      time.Time
	startingUpSince time.Time // when the primary's agent was first seen starting up in epochSeen
}

// elected is the memory of a node that has just become leader at now. What
// it granted as an earlier leader, or before its first round as this one, is
// forgotten: its permits and lease renewals start empty (a lease granted
// before now ends by LeaderSince's fence deadline), and the current epoch
// counts as inherited (no grace; see inputs).
//
// The sync mark goes too: it was taken under a setting that another leader
// may have changed since, and narrowing on it could drop the member that
// holds the last commits. A new mark is taken from the next rounds.
func (m leaderMemory) elected(now time.Time, term uint64) leaderMemory {
	m.since, m.term, m.priorLeases = now, term, now
	m.permits = map[string]time.Time{}
	m.leases = map[string]time.Time{}
	m.syncMark = syncMark{}
	m.epochSeen = 0
	return m
}

// notePermit records a start (or promote) permit granted to member in epoch
// at now, and returns when member was first granted one since its
// PostgreSQL last ran in epoch: the start grace counts from then, so asking
// again does not extend it.
func (m leaderMemory) notePermit(member string, epoch uint64, now time.Time) (leaderMemory, time.Time) {
	if m.permitEpoch != epoch || m.permits == nil {
		m.permits, m.permitEpoch = map[string]time.Time{}, epoch
	} else if first, ok := m.permits[member]; ok {
		return m, first
	} else {
		m.permits = maps.Clone(m.permits)
	}
	m.permits[member] = now
	return m, now
}

// permitsOf is the permits of epoch (nil for another epoch).
func (m leaderMemory) permitsOf(epoch uint64) map[string]time.Time {
	if m.permitEpoch != epoch {
		return nil
	}
	return m.permits
}

// noteLease records a lease renewal granted to member in epoch at at.
func (m leaderMemory) noteLease(member string, epoch uint64, at time.Time) leaderMemory {
	if m.leaseEpoch != epoch || m.leases == nil {
		m.leases, m.leaseEpoch = map[string]time.Time{}, epoch
	} else {
		m.leases = maps.Clone(m.leases)
	}
	m.leases[member] = at
	return m
}

// lastLease is when this leader last granted member a lease in epoch (zero
// if it has not).
func (m leaderMemory) lastLease(member string, epoch uint64) time.Time {
	if m.leaseEpoch != epoch {
		return time.Time{}
	}
	return m.leases[member]
}

// inputs is the leader's bookkeeping for one round, without I/O: given the
// committed state, the observations and the time, it brings the leader's
// memory up to date and returns the Inputs that come from it, with State,
// Observations and Now. The caller adds what it gathered by I/O (Self,
// Voters, NewClusterID, Policy, PrimaryAnswers).
//
//  1. Permits are those of the current epoch; a permit covers one start, and
//     so does a start-up of the primary's agent: once the primary runs
//     writable, neither holds a failover back any longer.
//  2. The sync mark follows the primary's synchronous_standby_names
//     (nextSyncMark).
//  3. A switchover is timed from when this leader first saw it.
//  4. An epoch this leader saw begin gets the grace (EpochSince); one it
//     inherited on election is judged at once (zero). A new epoch forgets
//     that the primary's agent was starting up.
//  5. StartingUpSince is when the primary's agent was first seen starting
//     up in this epoch.
func inputs(st consensus.State, obs map[string]memberView, now time.Time, mem leaderMemory) (Inputs, leaderMemory) {
	if mem.permitEpoch != st.Epoch {
		mem.permits, mem.permitEpoch = map[string]time.Time{}, st.Epoch
	}
	p := obs[st.Primary] // the zero view, unreachable, if it has none
	if p.reachable && p.obs.Postgres.Running && !p.obs.Postgres.InRecovery {
		if _, ok := mem.permits[st.Primary]; ok {
			mem.permits = maps.Clone(mem.permits)
			delete(mem.permits, st.Primary)
		}
		mem.startingUpSince = time.Time{}
	}
	mem.syncMark = nextSyncMark(mem.syncMark, st, p, now)
	if st.Switchover != mem.switchoverOf {
		mem.switchoverOf, mem.switchoverSince = st.Switchover, now
	}
	if st.Epoch != mem.epochSeen {
		since := now
		if mem.epochSeen == 0 {
			since = time.Time{}
		}
		mem.epochSeen, mem.epochSince = st.Epoch, since
		mem.startingUpSince = time.Time{}
	}
	if p.reachable && p.obs.StartingUp && mem.startingUpSince.IsZero() {
		mem.startingUpSince = now
	}
	return Inputs{
		State:           st,
		Observations:    obs,
		Now:             now,
		LeaderSince:     mem.since,
		PriorLeases:     mem.priorLeases,
		Permits:         mem.permits,
		PrimaryLease:    mem.lastLease(st.Primary, st.Epoch),
		SyncMark:        mem.syncMark,
		SwitchoverSince: mem.switchoverSince,
		EpochSince:      mem.epochSince,
		StartingUpSince: mem.startingUpSince,
	}, mem
}

// nextSyncMark notes when the primary p's synchronous_standby_names changed
// in epoch st.Epoch, and its LSN once the change has settled. A primary
// that is not seen running writable leaves the mark as it is.
func nextSyncMark(m syncMark, st consensus.State, p memberView, now time.Time) syncMark {
	if !p.reachable || !p.obs.Postgres.Running || p.obs.Postgres.InRecovery {
		return m
	}
	names := p.obs.Postgres.SyncStandbyNames
	switch {
	case m.Epoch != st.Epoch || m.Names != names:
		return syncMark{Epoch: st.Epoch, Names: names, At: now}
	case m.LSN == 0 && now.Sub(m.At) >= syncSettle && p.asked.After(m.At.Add(syncSettle)):
		// Both times on the leader's clock, never the primary's: the
		// observation was asked for after the settling delay, so its LSN
		// is from after it.
		m.LSN = p.obs.Postgres.CurrentLSN
	}
	return m
}

// Decision is one command for the Raft log and the reason, logged once.
type Decision struct {
	Command consensus.Command
	Reason  string
}

// Plan is decide's answer: commands to commit, or why nothing is done.
type Plan struct {
	Decisions []Decision
	Waiting   string // why the leader is holding back, if it is (shown in /cluster)
	Retry     bool   // worth deciding again in a moment rather than at the next tick
}

// restartGrace is how long a start permit keeps the leader from failing over
// a primary whose agent is alive, unless failover.primary_restart_window says
// otherwise.
const restartGrace = 10 * time.Second

func startGrace(p Policy) time.Duration {
	if p.PrimaryRestartWindow > 0 {
		return p.PrimaryRestartWindow
	}
	return restartGrace
}

// decide is the leader's policy: given the committed state and the members'
// observations, which commands to commit now. Only the Raft leader calls it,
// and it only proposes: the FSM still checks every precondition on apply.
func decide(in Inputs) Plan {
	st := in.State
	if !st.Initialized() {
		return firstPrimaryPlan(in) // adopt.go
	}
	if st.SystemID == 0 {
		if p, ok := in.Observations[st.Primary]; ok && p.reachable && p.obs.Postgres.Running && p.obs.Postgres.SystemID != 0 {
			return Plan{Decisions: []Decision{{
				Command: consensus.SetSystemID(p.obs.Postgres.SystemID),
				Reason:  "the first primary is up: record its PostgreSQL system identifier so no other cluster's data is ever joined",
			}}}
		}
		return Plan{Waiting: "waiting for the first primary to start"}
	}
	if st.Switchover.Active() {
		return switchoverDecisions(in)
	}
	failed, why := primaryFailed(in)
	if failed {
		if st.Paused {
			return Plan{Waiting: "the primary has failed (" + why + ") but the cluster is paused: no automatic failover"}
		}
		name, reason := chooseCandidate(in, st.Primary)
		if name == "" {
			return Plan{Waiting: "the primary has failed (" + why + ") but no member can be promoted safely: " + reason}
		}
		return Plan{Decisions: []Decision{promotion(in, name, kindFailover, fmt.Sprintf("failover: %s; %s", why, reason))}}
	}
	if why != "" {
		return Plan{Waiting: why}
	}
	if p := syncDecisions(in); len(p.Decisions) > 0 || st.Config.Version != 0 {
		return p
	}
	return Plan{Decisions: []Decision{{
		Command: consensus.SetConfig(0, in.BootstrapConfig),
		Reason:  "no cluster-wide configuration yet: record this leader's (postgres.parameters from its file) as version 1",
	}}}
}

// fresh reports whether a member's agent answered within the fence timeout.
func fresh(in Inputs, name string) (memberView, bool) {
	o, ok := in.Observations[name]
	return o, ok && o.reachable && in.Now.Sub(o.lastSeen) <= in.Policy.FenceTimeout
}

// primaryFailed decides whether the committed primary has failed. The second
// result explains a failure, or why the leader is still waiting.
//
// Safety (DESIGN "One writer", "Dead means gone"):
//   - A primary whose agent does not answer is declared failed only after
//     the fence deadline has passed since the last sign of its lease (its
//     last renewal this leader granted, or its last answer): by then its
//     lease has run out and its agent has fenced its PostgreSQL. And if the
//     leader can still reach that PostgreSQL directly, it is alive: agent
//     death is not database death, there is no failover.
//   - A primary whose agent answers that its postmaster is gone has failed,
//     unless a start permit of this epoch is outstanding: then its agent may
//     be starting it, and the leader waits for the start grace, counted from
//     the first permit of the epoch (so retries cannot extend it), and after
//     it for the lease to run out (renewals are refused past the grace).
//   - A postmaster that lives but does not answer its agent's queries is a
//     live server: no failover.
func primaryFailed(in Inputs) (bool, string) {
	st := in.State
	p := st.Primary
	grace := startGrace(in.Policy)
	permit, permitted := in.Permits[p]
	starting := permitted && in.Now.Sub(permit) < grace
	if starting {
		// A permit within the grace (granted under the leader's lock, like
		// this decision) means p's agent is alive and starting PostgreSQL as
		// the primary of this epoch, whatever the observations, which may
		// predate it: failing over now would make two writers.
		return false, fmt.Sprintf("primary %s is starting PostgreSQL", p)
	}
	o, ok := fresh(in, p)
	if ok {
		pg := o.obs.Postgres
		switch {
		case pg.Running && !pg.InRecovery:
			return false, ""
		case pg.Unresponsive:
			return false, fmt.Sprintf("primary %s's PostgreSQL runs (pid %d) but does not answer its agent (%s): a live server is not failed over", p, pg.PID, pg.Error)
		case permitted:
			// Past the grace: renewals are refused, so its lease runs out.
			if d := leaseDeadline(in, false); in.Now.Before(d) {
				return false, fmt.Sprintf("primary %s did not start PostgreSQL within %s of its first permit; waiting for its lease to run out (%s)", p, grace, d.Sub(in.Now).Round(time.Millisecond))
			}
			return true, fmt.Sprintf("PostgreSQL on %s did not start within %s of its first start permit", p, grace)
		case o.obs.Activity != "":
			return false, fmt.Sprintf("primary %s is %s", p, o.obs.Activity)
		case !in.EpochSince.IsZero() && in.Now.Sub(in.EpochSince) < grace:
			return false, fmt.Sprintf("primary %s was named for epoch %d moments ago and is being promoted", p, st.Epoch)
		case o.obs.StartingUp && !in.StartingUpSince.IsZero() && in.Now.Sub(in.StartingUpSince) < grace:
			// A restart of every agent: the primary's agent waits for a
			// Raft leader before it may ask to start its PostgreSQL, and
			// the leader it waits for must not fail it over meanwhile.
			return false, fmt.Sprintf("primary %s's agent has just started: it starts PostgreSQL once it has caught up with the Raft log", p)
		}
		if pg.Running {
			return true, fmt.Sprintf("PostgreSQL on %s runs in recovery but %s is the committed primary", p, p)
		}
		return true, fmt.Sprintf("PostgreSQL on %s is not running", p)
	}
	deadline := leaseDeadline(in, true)
	if in.Now.Before(deadline) {
		return false, fmt.Sprintf("primary %s's agent does not answer; waiting for its fence deadline (%s)", p, deadline.Sub(in.Now).Round(time.Millisecond))
	}
	if in.PrimaryAnswers == nil {
		return false, fmt.Sprintf("primary %s's agent does not answer; checking its PostgreSQL directly", p)
	}
	if *in.PrimaryAnswers {
		return false, fmt.Sprintf("primary %s's agent does not answer but its PostgreSQL does: no failover (agent death is not database death)", p)
	}
	return true, fmt.Sprintf("%s is unreachable: its agent and its PostgreSQL do not answer", p)
}

// leaseDeadline is when the primary's lease has certainly run out and its
// agent has fenced: the fence deadline after the latest of the last renewal
// this leader granted and the bound on the renewals earlier leaders granted
// (PriorLeases). With lastSeen, the primary's last answer counts too (a
// silent agent: the later, the safer).
func leaseDeadline(in Inputs, lastSeen bool) time.Time {
	last := in.PriorLeases
	if last.IsZero() {
		last = in.LeaderSince
	}
	if in.PrimaryLease.After(last) {
		last = in.PrimaryLease
	}
	if seen := in.Observations[in.State.Primary].lastSeen; lastSeen && seen.After(last) {
		last = seen
	}
	return last.Add(fenceDeadline(in.Policy))
}

// fenceDeadline is how long after the old primary's last renewal the leader
// may promote: its lease lasts fence_timeout from the renewal's start, and
// fenceMargin covers its fence loop noticing (25 ms) and the freeze itself:
// reading postmaster.pid and pg_control, then signals (fence.go).
func fenceDeadline(p Policy) time.Duration {
	return p.FenceTimeout + fenceMargin
}

// fenceMargin is what the fence deadline adds to the lease.
const fenceMargin = 250 * time.Millisecond

// chooseCandidate picks the standby to promote instead of exclude.
//
//  1. Candidates are members whose agents answer, whose PostgreSQL runs as a
//     standby, not tagged nofailover.
//  2. Synchronous mode: every acknowledged commit is on at least one member
//     of the committed synchronous set. All of them must report, and only
//     they are candidates; the one that has received the most WAL holds
//     every acknowledged commit. If one of them is silent, it may hold
//     commits the others lack: nothing is promoted.
//  3. Asynchronous mode: candidates within maximum_lag_on_failover of the
//     primary's last known position.
//  4. Among candidates: most WAL received, then most replayed, then the
//     highest priority, then the name.
//
// A standby whose agent reports it diverged (its WAL went past the fork of
// the primary's timeline) is never a candidate: its LSN is on the old
// timeline and would compare as more WAL than it really holds.
func chooseCandidate(in Inputs, exclude string) (string, string) {
	st := in.State
	var cands []string
	for name, m := range st.Members {
		if name == exclude || m.NoFailover {
			continue
		}
		o, ok := fresh(in, name)
		if !ok || !o.obs.Postgres.Running || !o.obs.Postgres.InRecovery || o.obs.Diverged {
			continue
		}
		cands = append(cands, name)
	}
	if in.Policy.Synchronous {
		if len(st.SyncStandbys) == 0 {
			return "", "synchronous mode, and no synchronous standby is recorded: no standby is known to hold every acknowledged commit"
		}
		for _, s := range st.SyncStandbys {
			if _, ok := fresh(in, s); !ok {
				return "", fmt.Sprintf("synchronous standby %s does not report; it may hold acknowledged commits the others lack", s)
			}
		}
		// The synchronous standby with the most WAL holds every acknowledged
		// commit; promote it, or nothing (one tagged nofailover or down
		// could be the only one holding them).
		// A diverged one holds none of the current timeline's WAL, so none
		// of its acknowledged commits, however far its LSN on the old
		// timeline goes.
		best := slices.DeleteFunc(slices.Clone(st.SyncStandbys), func(s string) bool { return in.Observations[s].obs.Diverged })
		if len(best) == 0 {
			return "", "every synchronous standby diverged from the primary's timeline and waits for its rewind"
		}
		sortByWAL(in, best)
		if ahead := aheadOfSyncSet(in, cands, best); ahead != "" {
			return ahead, fmt.Sprintf("promoting %s, which holds all the WAL of synchronous standby %s (so every acknowledged commit) and more: no standby is left past the new timeline's fork", ahead, best[0])
		}
		if !slices.Contains(cands, best[0]) {
			return "", fmt.Sprintf("synchronous standby %s holds the most WAL but cannot be promoted (not running as a standby, or nofailover)", best[0])
		}
		return best[0], fmt.Sprintf("promoting synchronous standby %s, which holds every acknowledged commit", best[0])
	}
	var primaryLSN postgres.LSN
	if p, ok := in.Observations[exclude]; ok {
		primaryLSN = p.obs.Postgres.CurrentLSN
	}
	var ok []string
	for _, c := range cands {
		lag := int64(primaryLSN) - int64(in.Observations[c].obs.Postgres.ReceivedLSN)
		if lag <= in.Policy.MaxLagOnFailover {
			ok = append(ok, c)
		}
	}
	if len(ok) == 0 {
		return "", fmt.Sprintf("no standby is running within maximum_lag_on_failover (%d bytes)", in.Policy.MaxLagOnFailover)
	}
	sortByWAL(in, ok)
	return ok[0], fmt.Sprintf("promoting %s, the most up-to-date standby (asynchronous mode)", ok[0])
}

// aheadOfSyncSet returns the candidate with strictly more WAL than the
// synchronous standby that has the most (syncByWAL[0]), if there is one it
// can be sure of; "" otherwise.
//
// A standby's WAL is a prefix of the primary's (a diverged one is no
// candidate), so one with at least the synchronous standby's WAL holds
// every commit that standby acknowledged, and every acknowledged commit.
// Promoting the synchronous standby instead would leave this one with WAL
// past the new timeline's fork: it needs pg_rewind, and the new primary's
// commits wait for it meanwhile when it is the only other standby.
//
// Sure means: every synchronous standby was observed after the primary's
// PostgreSQL was certainly down (a poll asked after the answer that said it
// stopped, or after its lease's fence deadline), so none has acknowledged
// anything since; an earlier observation may understate what it holds.
func aheadOfSyncSet(in Inputs, cands, syncByWAL []string) string {
	p := in.Observations[in.State.Primary]
	downBy := leaseDeadline(in, true)
	if p.reachable && !p.obs.Postgres.Running && !p.obs.Postgres.Unresponsive {
		downBy = p.lastSeen
	}
	for _, s := range in.State.SyncStandbys {
		if o := in.Observations[s]; o.asked.IsZero() || o.asked.Before(downBy) {
			return ""
		}
	}
	most := walEnd(in.Observations[syncByWAL[0]].obs.Postgres)
	var ahead []string
	for _, c := range cands {
		if walEnd(in.Observations[c].obs.Postgres) > most {
			ahead = append(ahead, c)
		}
	}
	if len(ahead) == 0 {
		return ""
	}
	sortByWAL(in, ahead)
	return ahead[0]
}

// syncCandidates orders names for the synchronous set, most WAL first,
// and leaves out the members that may not be synchronous (tagged
// nofailover or nosync) if one that may streams; non-voters that may not
// be promoted always (consensus.Member.SyncAllowed).
func syncCandidates(in Inputs, names []string, streaming func(string) bool) []string {
	names = slices.DeleteFunc(slices.Clone(names), func(n string) bool { return !in.State.Members[n].SyncAllowed() })
	sortByWAL(in, names)
	if slices.ContainsFunc(names, func(n string) bool { return in.State.Members[n].SyncEligible() && streaming(n) }) {
		return slices.DeleteFunc(slices.Clone(names), func(n string) bool { return !in.State.Members[n].SyncEligible() })
	}
	return names
}

// walEnd is how far a standby's WAL reaches: the greater of what it
// received and what it replayed (a restarted standby's receive position
// starts over at its replay position, or is unknown).
func walEnd(pg postgres.Status) postgres.LSN {
	return max(pg.ReceivedLSN, pg.ReplayedLSN)
}

func sortByWAL(in Inputs, names []string) {
	sort.Slice(names, func(i, j int) bool {
		a, b := in.Observations[names[i]].obs.Postgres, in.Observations[names[j]].obs.Postgres
		if ea, eb := walEnd(a), walEnd(b); ea != eb {
			return ea > eb
		}
		if a.ReplayedLSN != b.ReplayedLSN {
			return a.ReplayedLSN > b.ReplayedLSN
		}
		pa, pb := in.State.Members[names[i]].Priority, in.State.Members[names[j]].Priority
		if pa != pb {
			return pa > pb
		}
		return names[i] < names[j]
	})
}

// promotion is the command that promotes cand for the next epoch, with the
// new epoch's synchronous set and a timeline no server has used.
//
// The set is committed with the promotion, not after it: the new primary
// writes it into synchronous_standby_names before it is promoted, so from
// its first commit every acknowledged commit is on a member of a recorded
// set, and if it fails at once a survivor of that set can be promoted
// without waiting for a dead node (DESIGN "No acknowledged write lost").
// It holds the standbys that are healthy now (they will follow cand), and
// after a switchover the old primary, which stopped cleanly and follows
// too; failing all of them, every other member (writes wait for one).
//
// The timeline is one above every timeline recorded or observed: the
// history file of a short-lived timeline may never have reached cand, and
// PostgreSQL would then take that timeline's ID again.
func promotion(in Inputs, cand string, kind promotionKind, reason string) Decision {
	st := in.State
	switchover := kind == kindSwitchover
	var set []string
	if in.Policy.Synchronous {
		set = []string{}
		for name := range st.Members {
			if name == cand || name == st.Primary {
				continue
			}
			if o, ok := fresh(in, name); ok && o.obs.Postgres.Running && o.obs.Postgres.InRecovery && !o.obs.Diverged {
				set = append(set, name)
			}
		}
		set = syncCandidates(in, set, func(string) bool { return true })
		if switchover && st.Primary != cand {
			set = append(set, st.Primary)
		}
		if len(set) == 0 {
			for name, m := range st.Members {
				if name != cand && m.SyncAllowed() {
					set = append(set, name)
				}
			}
			sort.Strings(set)
		}
	}
	tli := st.Timeline
	for _, o := range in.Observations {
		tli = max(tli, o.obs.Postgres.Timeline)
	}
	rec := consensus.PromotionRecord{Kind: string(kind), From: st.Primary, Reason: reason, At: in.Now}
	if o, ok := in.Observations[cand]; ok {
		rec.LSN = uint64(walEnd(o.obs.Postgres))
	}
	return Decision{
		Command: consensus.PromoteRecorded(cand, st.Epoch+1, set, tli+1, rec),
		Reason:  reason,
	}
}

// promotionKind is what the history calls a promotion.
type promotionKind string

const (
	kindFailover       promotionKind = "failover"        // the leader's, on evidence
	kindSwitchover     promotionKind = "switchover"      // planned: the old primary stopped cleanly
	kindForcedFailover promotionKind = "forced failover" // an operator's POST /failover
)

// syncDecisions keeps the synchronous set right while the primary is healthy.
//
// Invariant: every acknowledged commit is on at least one member of the
// committed set S. The primary's agent only ever names a subset of S in
// synchronous_standby_names (the first member of S that streams, else all of
// S), so the set is recorded in Raft before PostgreSQL's setting changes:
//
//  1. S empty (new primary): S = every other member, best first.
//  2. No member of S streams but another standby B does: S = [B] + S, and the
//     primary moves its setting to B, so writes do not block on a dead standby.
//  3. The primary's setting names only S[0], and S[0] has received the WAL
//     the primary had written when the setting narrowed: every commit
//     acknowledged through the others is on S[0] too, so S = [S[0]].
func syncDecisions(in Inputs) Plan {
	st := in.State
	if !in.Policy.Synchronous {
		if len(st.SyncStandbys) > 0 {
			return Plan{Decisions: []Decision{{Command: consensus.SetSyncStandbys(nil, st.Epoch), Reason: "asynchronous mode: no synchronous standbys"}}}
		}
		return Plan{}
	}
	var others []string
	for name := range st.Members {
		if name != st.Primary {
			others = append(others, name)
		}
	}
	if len(others) == 0 {
		return Plan{}
	}
	// Here a standby streams only while its agent answers every poll: one
	// that has missed two health intervals is likely gone (a poll of a lost
	// host fails only at its timeout, a second), and every commit waits
	// for it meanwhile. Taking a live one for gone only moves the
	// synchronous name to another streaming standby, the set grown first.
	streaming := func(name string) bool {
		o, ok := fresh(in, name)
		overdue := in.Policy.HealthInterval > 0 && in.Now.Sub(o.lastSeen) > 2*in.Policy.HealthInterval
		return ok && !overdue && o.obs.Postgres.Running && o.obs.Postgres.InRecovery && o.obs.Postgres.Streaming
	}
	S := st.SyncStandbys
	if len(S) == 0 {
		if others = syncCandidates(in, others, streaming); len(others) == 0 {
			return Plan{Waiting: "synchronous mode: no standby may be synchronous (every other member is a non-voter that may not be promoted)"}
		}
		return Plan{Decisions: []Decision{{
			Command: consensus.SetSyncStandbys(others, st.Epoch),
			Reason:  "synchronous mode: no synchronous standby recorded for this epoch; record every standby, then narrow to one",
		}}}
	}
	if !slices.ContainsFunc(S, streaming) {
		// Widening is for a primary whose commits block: one seen running
		// after the standbys were seen not streaming. When the primary
		// dies, its standbys stop streaming before its agent reports it
		// gone; widening then would only add a member that must report
		// before the failover may promote anyone.
		p, pok := fresh(in, st.Primary)
		if !pok || !p.obs.Postgres.Running || p.obs.Postgres.InRecovery {
			return Plan{Waiting: fmt.Sprintf("no synchronous standby is streaming (%s) and the primary does not run as one", strings.Join(S, ","))}
		}
		for _, name := range S {
			if o, ok := in.Observations[name]; ok && o.reachable && o.lastSeen.After(p.lastSeen) {
				return Plan{Waiting: fmt.Sprintf("no synchronous standby is streaming (%s): waiting to see the primary still running before widening the set", strings.Join(S, ","))}
			}
		}
		var spare []string
		for _, o := range others {
			if !slices.Contains(S, o) && streaming(o) {
				spare = append(spare, o)
			}
		}
		if spare = syncCandidates(in, spare, streaming); len(spare) > 0 {
			return Plan{Decisions: []Decision{{
				Command: consensus.SetSyncStandbys(append([]string{spare[0]}, S...), st.Epoch),
				Reason:  fmt.Sprintf("synchronous standby %s is not streaming; add %s so the primary's writes do not block", strings.Join(S, ","), spare[0]),
			}}}
		}
		return Plan{Waiting: fmt.Sprintf("no synchronous standby is streaming (%s): commits wait until one is back", strings.Join(S, ","))}
	}
	// 2b. S[0] does not stream but another member B of S does: put B first.
	// The primary names the first member of S that streams in its own
	// pg_stat_replication, where a standby cut off from it stays
	// "streaming" until wal_sender_timeout (60s by default), and every
	// commit waits for it meanwhile. The set is the same: the invariant holds.
	if len(S) > 1 && !streaming(S[0]) {
		for _, b := range S[1:] {
			if streaming(b) {
				next := append([]string{b}, slices.DeleteFunc(slices.Clone(S), func(s string) bool { return s == b })...)
				return Plan{Decisions: []Decision{{
					Command: consensus.SetSyncStandbys(next, st.Epoch),
					Reason:  fmt.Sprintf("synchronous standby %s is not streaming but %s is; name %s first so the primary's writes do not wait for %s", S[0], b, b, S[0]),
				}}}
			}
		}
	}
	// 2c. S[0] may not be synchronous (tagged nofailover or nosync) while
	// a member that may streams: put it first, adding it to S if needed
	// (growing S keeps the invariant), so the set narrows to it. A
	// nofailover synchronous standby can be the only member holding every
	// acknowledged commit, and then nobody may be promoted.
	if !st.Members[S[0]].SyncEligible() {
		var ok []string
		for _, o := range others {
			if st.Members[o].SyncEligible() && streaming(o) {
				ok = append(ok, o)
			}
		}
		if len(ok) > 0 {
			sortByWAL(in, ok)
			b := ok[0]
			next := append([]string{b}, slices.DeleteFunc(slices.Clone(S), func(s string) bool { return s == b })...)
			return Plan{Decisions: []Decision{{
				Command: consensus.SetSyncStandbys(next, st.Epoch),
				Reason:  fmt.Sprintf("synchronous standby %s is tagged nofailover or nosync and %s streams: name %s first", S[0], b, b),
			}}}
		}
	}
	if len(S) > 1 {
		m := in.SyncMark
		target, tok := fresh(in, S[0])
		if m.Epoch == st.Epoch && m.Names == syncNamesValue([]string{S[0]}) && tok && target.obs.Postgres.ReceivedLSN >= m.LSN && m.LSN != 0 {
			return Plan{Decisions: []Decision{{
				Command: consensus.SetSyncStandbys([]string{S[0]}, st.Epoch),
				Reason:  fmt.Sprintf("%s is the synchronous standby and has every commit acknowledged before; narrow the set to it", S[0]),
			}}}
		}
	}
	return Plan{}
}

// syncNamesValue is synchronous_standby_names as the primary's agent writes it.
func syncNamesValue(names []string) string {
	return postgres.SyncStandbyNames(1, names)
}

// switchoverDecisions drives a planned switchover: the old primary stops
// cleanly (its agent does that when it sees the switchover); once it is down
// and the candidate has received everything up to its shutdown checkpoint,
// the candidate is promoted. Past switchover_timeout it is cancelled and the
// old primary starts again.
func switchoverDecisions(in Inputs) Plan {
	st := in.State
	sw := st.Switchover
	since := in.SwitchoverSince
	if since.IsZero() {
		since = in.Now
	}
	if in.Now.Sub(since) > in.Policy.SwitchoverTimeout {
		return Plan{Decisions: []Decision{{Command: consensus.SetSwitchover(consensus.Switchover{}), Reason: fmt.Sprintf("switchover to %s did not complete in %s: cancelled, %s stays primary", sw.To, in.Policy.SwitchoverTimeout, sw.From)}}}
	}
	from, ok := fresh(in, sw.From)
	if !ok || from.obs.Postgres.Running || from.obs.StoppedLSN == 0 {
		return Plan{Waiting: fmt.Sprintf("switchover: waiting for %s to stop cleanly", sw.From)}
	}
	to, ok := fresh(in, sw.To)
	if !ok || !to.obs.Postgres.Running || !to.obs.Postgres.InRecovery {
		return Plan{Waiting: fmt.Sprintf("switchover: candidate %s is not running as a standby", sw.To)}
	}
	if to.obs.Postgres.ReceivedLSN <= from.obs.StoppedLSN {
		// Poll again soon: the leader's loop is woken by news, not by this.
		return Plan{Retry: true, Waiting: fmt.Sprintf("switchover: %s has received %s, waiting for %s", sw.To, to.obs.Postgres.ReceivedLSN, from.obs.StoppedLSN)}
	}
	return Plan{Decisions: []Decision{promotion(in, sw.To, kindSwitchover, fmt.Sprintf("switchover: %s stopped cleanly at %s and %s has received all of it", sw.From, from.obs.StoppedLSN, sw.To))}}
}

package agent

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/consensus"
)

// steadyMemory is the memory of a leader that has led for an hour through
// epoch 4 of state3: n1 the primary, renewed 5 s ago, no permit out, the
// primary naming n2 alone since a minute ago (its LSN then: 900).
func steadyMemory() leaderMemory {
	return leaderMemory{
		since:       t0.Add(-time.Hour),
		permits:     map[string]time.Time{},
		permitEpoch: 4,
		leases:      map[string]time.Time{"n1": t0.Add(-5 * time.Second)},
		leaseEpoch:  4,
		syncMark:    syncMark{Epoch: 4, Names: primaryUp.SyncStandbyNames, At: t0.Add(-time.Minute), LSN: 900},
		epochSeen:   4,
		epochSince:  t0.Add(-30 * time.Minute),
	}
}

// memEvent is something the leader did between two rounds: won an election
// (leadOnce) or granted a permit or a lease renewal (grantPermit,
// grantLease), through the same pure helpers.
type memEvent struct {
	kind   string // "elected", "permit" or "lease"
	member string
	epoch  uint64
	at     time.Time
}

func electedAt(at time.Time) memEvent { return memEvent{kind: "elected", at: at} }
func permitAt(member string, epoch uint64, at time.Time) memEvent {
	return memEvent{"permit", member, epoch, at}
}
func priorContactAt(at time.Time) memEvent { return memEvent{kind: "prior", at: at} }
func leaseAt(member string, epoch uint64, at time.Time) memEvent {
	return memEvent{"lease", member, epoch, at}
}

func (e memEvent) apply(m leaderMemory) leaderMemory {
	switch e.kind {
	case "elected":
		return m.elected(e.at, m.term+1)
	case "permit":
		m, _ = m.notePermit(e.member, e.epoch, e.at)
		return m
	case "lease":
		return m.noteLease(e.member, e.epoch, e.at)
	case "prior":
		m.priorLeases = e.at
		return m
	}
	panic("unknown event " + e.kind)
}

// cloneMemory is a deep copy: the helpers must never write to the maps of
// the memory they are given.
func cloneMemory(m leaderMemory) leaderMemory {
	m.permits, m.leases = maps.Clone(m.permits), maps.Clone(m.leases)
	return m
}

// cluster3 is state3's three members as observed, with the primary's view
// replaced by p (n2 and n3 stream, n2 with all of n1's WAL).
func cluster3(p memberView) map[string]memberView {
	return map[string]memberView{"n1": p, "n2": obsAt(t0, standbyAt(1000)), "n3": obsAt(t0, standbyAt(900))}
}

// askedAt is v as the answer to a poll sent at at.
func askedAt(v memberView, at time.Time) memberView {
	v.asked = at
	return v
}

// primaryIn is state3 with another primary and epoch.
func primaryIn(primary string, epoch uint64, sync ...string) consensus.State {
	st := state3(sync...)
	st.Primary, st.Epoch = primary, epoch
	return st
}

// withSwitchover is st with sw in progress.
func withSwitchover(st consensus.State, sw consensus.Switchover) consensus.State {
	st.Switchover = sw
	return st
}

// rel shows t as an offset from t0, for failure messages.
func rel(t time.Time) string {
	if t.IsZero() {
		return "zero"
	}
	return fmt.Sprintf("t0%+v", t.Sub(t0))
}

func relMap(m map[string]time.Time) string {
	if m == nil {
		return "nil"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+":"+rel(m[k]))
	}
	return "{" + strings.Join(parts, " ") + "}"
}

// memoryText shows m for failure messages.
func memoryText(m leaderMemory) string {
	return fmt.Sprintf("since=%s prior=%s term=%d permits=%s@%d leases=%s@%d mark={%d %s %s %d} switchover=%v@%s epoch=%d@%s startingUp=%s",
		rel(m.since), rel(m.priorLeases), m.term, relMap(m.permits), m.permitEpoch, relMap(m.leases), m.leaseEpoch,
		m.syncMark.Epoch, m.syncMark.Names, rel(m.syncMark.At), m.syncMark.LSN,
		m.switchoverOf, rel(m.switchoverSince), m.epochSeen, rel(m.epochSince), rel(m.startingUpSince))
}

// memoryPart is the part of in that comes from the leader's memory.
func memoryPart(in Inputs) string {
	return fmt.Sprintf("LeaderSince=%s PriorLeases=%s Permits=%s PrimaryLease=%s SyncMark={%d %s %s %d} SwitchoverSince=%s EpochSince=%s StartingUpSince=%s",
		rel(in.LeaderSince), rel(in.PriorLeases), relMap(in.Permits), rel(in.PrimaryLease), in.SyncMark.Epoch, in.SyncMark.Names, rel(in.SyncMark.At), in.SyncMark.LSN,
		rel(in.SwitchoverSince), rel(in.EpochSince), rel(in.StartingUpSince))
}

func planText(p Plan) string {
	var b strings.Builder
	b.WriteString(p.Waiting)
	for _, d := range p.Decisions {
		fmt.Fprintf(&b, " | %s: %s", d.Command.Type, d.Reason)
	}
	return b.String()
}

// TestInputs covers the leader's bookkeeping between rounds. Each case
// starts from steadyMemory changed by mem, applies events as the leader
// would between rounds, runs one round of inputs at t0, and expects that
// starting memory with want applied: the whole memory is compared, so a
// change nobody asked for fails too, and neither the events nor inputs may
// write to the memory they were given. The Inputs must be the
// memory's, and decides, when set, is a part of what decide then does
// (Waiting or a decision's reason): what the bookkeeping is for.
func TestInputs(t *testing.T) {
	now := t0
	swN2 := consensus.Switchover{From: "n1", To: "n2", Epoch: 4}
	swN3 := consensus.Switchover{From: "n1", To: "n3", Epoch: 4}
	unreachableButUp := memberView{reachable: false, lastSeen: now.Add(-2 * time.Second), obs: Observation{DataDir: "valid", Postgres: primaryUp}}
	cases := []struct {
		name    string
		mem     func(*leaderMemory) // changes to steadyMemory before the events
		events  []memEvent
		st      consensus.State
		obs     map[string]memberView
		want    func(*leaderMemory) // changes to steadyMemory expected after the round; nil: none
		decides string
	}{
		// Start permits.
		{
			name: "a healthy primary in a steady cluster: nothing changes",
			st:   state3("n2"), obs: cluster3(obsAt(now, primaryUp)),
		},
		{
			name:   "a permit of this epoch holds a failover back while the primary's PostgreSQL is down",
			events: []memEvent{permitAt("n1", 4, now.Add(-3*time.Second))},
			st:     state3("n2"), obs: cluster3(obsAt(now, pgDown)),
			want:    func(m *leaderMemory) { m.permits = map[string]time.Time{"n1": now.Add(-3 * time.Second)} },
			decides: "primary n1 is starting PostgreSQL",
		},
		{
			name:   "the start grace runs from the first permit: asking again does not extend it",
			events: []memEvent{permitAt("n1", 4, now.Add(-12*time.Second)), permitAt("n1", 4, now.Add(-time.Second))},
			st:     state3("n2"), obs: cluster3(obsAt(now, pgDown)),
			want:    func(m *leaderMemory) { m.permits = map[string]time.Time{"n1": now.Add(-12 * time.Second)} },
			decides: "PostgreSQL on n1 did not start within 10s of its first start permit",
		},
		{
			name: "a permit of another epoch is dropped",
			mem: func(m *leaderMemory) {
				m.permits, m.permitEpoch = map[string]time.Time{"n1": now.Add(-2 * time.Second)}, 3
			},
			st: state3("n2"), obs: cluster3(obsAt(now, pgDown)),
			want:    func(m *leaderMemory) { m.permits, m.permitEpoch = map[string]time.Time{}, 4 },
			decides: "failover: PostgreSQL on n1 is not running",
		},
		{
			name:   "a permit granted in the epoch before this round's is dropped",
			events: []memEvent{permitAt("n1", 3, now.Add(-2*time.Second))},
			st:     state3("n2"), obs: cluster3(obsAt(now, pgDown)),
			want:    func(m *leaderMemory) {},
			decides: "failover: PostgreSQL on n1 is not running",
		},
		{
			name:   "the primary running writable has used its permit; a standby's permit stays",
			events: []memEvent{permitAt("n1", 4, now.Add(-2*time.Second)), permitAt("n2", 4, now.Add(-time.Second))},
			st:     state3("n2"), obs: cluster3(obsAt(now, primaryUp)),
			want: func(m *leaderMemory) { m.permits = map[string]time.Time{"n2": now.Add(-time.Second)} },
		},
		{
			name:   "a primary running in recovery (being promoted) keeps its permit",
			events: []memEvent{permitAt("n1", 4, now.Add(-2*time.Second))},
			st:     state3("n2"), obs: cluster3(obsAt(now, standbyAt(1000))),
			want: func(m *leaderMemory) { m.permits = map[string]time.Time{"n1": now.Add(-2 * time.Second)} },
		},
		{
			name:   "an unreachable primary keeps its permit, whatever it last reported",
			events: []memEvent{permitAt("n1", 4, now.Add(-2*time.Second))},
			st:     state3("n2"), obs: cluster3(unreachableButUp),
			want:    func(m *leaderMemory) { m.permits = map[string]time.Time{"n1": now.Add(-2 * time.Second)} },
			decides: "primary n1 is starting PostgreSQL",
		},

		// Election.
		{
			name:   "an election forgets permits and leases, and the epoch counts as inherited",
			mem:    func(m *leaderMemory) { m.epochSince = now.Add(-2 * time.Second) },
			events: []memEvent{permitAt("n1", 4, now.Add(-3*time.Second)), leaseAt("n1", 4, now.Add(-time.Second)), electedAt(now.Add(-100 * time.Millisecond))},
			st:     state3("n2"), obs: cluster3(obsAt(now, pgDown)),
			want: func(m *leaderMemory) {
				m.term, m.syncMark = 1, syncMark{} // forgotten; the silent primary gives no new one
				m.since, m.priorLeases = now.Add(-100*time.Millisecond), now.Add(-100*time.Millisecond)
				m.leases = map[string]time.Time{}
				m.epochSince = time.Time{}
			},
			decides: "failover: PostgreSQL on n1 is not running",
		},
		{
			name:   "an election forgets the renewals granted before it: the primary's lease counts from the election",
			events: []memEvent{leaseAt("n1", 4, now.Add(-4*time.Second)), electedAt(now.Add(-3 * time.Second))},
			st:     state3("n2"), obs: cluster3(silentSince(now.Add(-5 * time.Second))),
			want: func(m *leaderMemory) {
				m.term, m.syncMark = 1, syncMark{} // forgotten; the silent primary gives no new one
				m.since, m.priorLeases = now.Add(-3*time.Second), now.Add(-3*time.Second)
				m.leases = map[string]time.Time{}
				m.epochSince = time.Time{}
			},
			decides: "checking its PostgreSQL directly",
		},
		{
			// beginTenure: a quorum last heard from the old leader 2.5 s
			// ago, so no lease it granted runs past its fence deadline
			// from then, 1.5 s before this election's would end.
			name:   "a quorum's last contact with the old leader bounds the leases it granted",
			events: []memEvent{electedAt(now.Add(-time.Second)), priorContactAt(now.Add(-2500 * time.Millisecond))},
			st:     state3("n2"), obs: cluster3(silentSince(now.Add(-5 * time.Second))),
			want: func(m *leaderMemory) {
				m.term, m.syncMark = 1, syncMark{} // forgotten; the silent primary gives no new one
				m.since, m.priorLeases = now.Add(-time.Second), now.Add(-2500*time.Millisecond)
				m.leases = map[string]time.Time{}
				m.epochSince = time.Time{}
			},
			decides: "checking its PostgreSQL directly",
		},
		{
			name:   "a lease granted after the election counts",
			events: []memEvent{electedAt(now.Add(-3 * time.Second)), leaseAt("n1", 4, now.Add(-time.Second))},
			st:     state3("n2"), obs: cluster3(silentSince(now.Add(-5 * time.Second))),
			want: func(m *leaderMemory) {
				m.term, m.syncMark = 1, syncMark{} // forgotten; the silent primary gives no new one
				m.since, m.priorLeases = now.Add(-3*time.Second), now.Add(-3*time.Second)
				m.leases = map[string]time.Time{"n1": now.Add(-time.Second)}
				m.epochSince = time.Time{}
			},
			decides: "waiting for its fence deadline",
		},
		{
			// The mark was taken under a setting another leader may have
			// changed meanwhile: a new one starts from this round.
			name:   "an election forgets the sync mark and keeps the switchover's start",
			mem:    func(m *leaderMemory) { m.switchoverOf, m.switchoverSince = swN2, now.Add(-5*time.Second) },
			events: []memEvent{electedAt(now.Add(-time.Second))},
			st:     withSwitchover(state3("n2"), swN2), obs: cluster3(obsAt(now, primaryUp)),
			want: func(m *leaderMemory) {
				m.since, m.term, m.priorLeases = now.Add(-time.Second), 1, now.Add(-time.Second)
				m.leases = map[string]time.Time{}
				m.epochSince = time.Time{}
				m.syncMark = syncMark{Epoch: 4, Names: primaryUp.SyncStandbyNames, At: now}
				m.switchoverOf, m.switchoverSince = swN2, now.Add(-5*time.Second)
			},
		},

		// Lease renewals.
		{
			name:   "the primary's lease is its last renewal, not its first",
			events: []memEvent{leaseAt("n1", 4, now.Add(-2*time.Second)), leaseAt("n1", 4, now.Add(-500*time.Millisecond))},
			st:     state3("n2"), obs: cluster3(silentSince(now.Add(-5 * time.Second))),
			want:    func(m *leaderMemory) { m.leases = map[string]time.Time{"n1": now.Add(-500 * time.Millisecond)} },
			decides: "waiting for its fence deadline",
		},
		{
			name:   "a renewal granted for another epoch is not the primary's lease",
			events: []memEvent{leaseAt("n1", 3, now.Add(-time.Second))},
			st:     state3("n2"), obs: cluster3(silentSince(now.Add(-5 * time.Second))),
			want: func(m *leaderMemory) {
				m.leases, m.leaseEpoch = map[string]time.Time{"n1": now.Add(-time.Second)}, 3
			},
			decides: "checking its PostgreSQL directly",
		},
		{
			name:   "a renewal granted to another member is not the primary's lease",
			events: []memEvent{leaseAt("n2", 4, now.Add(-time.Second))},
			st:     state3("n2"), obs: cluster3(silentSince(now.Add(-5 * time.Second))),
			want: func(m *leaderMemory) {
				m.leases = map[string]time.Time{"n1": now.Add(-5 * time.Second), "n2": now.Add(-time.Second)}
			},
			decides: "checking its PostgreSQL directly",
		},
		{
			name:   "the first renewal of a new epoch drops the old epoch's renewals",
			events: []memEvent{leaseAt("n2", 5, now.Add(-time.Second))},
			st:     primaryIn("n2", 5, "n1"), obs: map[string]memberView{"n1": obsAt(now, standbyAt(1000)), "n2": silentSince(now.Add(-5 * time.Second)), "n3": obsAt(now, standbyAt(900))},
			want: func(m *leaderMemory) {
				m.leases, m.leaseEpoch = map[string]time.Time{"n2": now.Add(-time.Second)}, 5
				m.permits, m.permitEpoch = map[string]time.Time{}, 5
				m.epochSeen, m.epochSince = 5, now
			},
			decides: "waiting for its fence deadline",
		},

		// The sync mark.
		{
			name: "a new synchronous_standby_names starts a mark, its LSN unknown",
			mem: func(m *leaderMemory) {
				m.syncMark = syncMark{Epoch: 4, Names: `ANY 1 ("n2","n3")`, At: now.Add(-time.Minute)}
			},
			st: state3("n2", "n3"), obs: cluster3(obsAt(now, primaryUp)),
			want: func(m *leaderMemory) { m.syncMark = syncMark{Epoch: 4, Names: primaryUp.SyncStandbyNames, At: now} },
		},
		{
			name: "once settled, the mark takes the LSN of an observation asked for after the settling delay",
			mem: func(m *leaderMemory) {
				m.syncMark = syncMark{Epoch: 4, Names: primaryUp.SyncStandbyNames, At: now.Add(-2 * time.Second)}
			},
			st: state3("n2", "n3"), obs: cluster3(askedAt(obsAt(now, primaryUp), now.Add(-500*time.Millisecond))),
			want: func(m *leaderMemory) {
				m.syncMark = syncMark{Epoch: 4, Names: primaryUp.SyncStandbyNames, At: now.Add(-2 * time.Second), LSN: 1000}
			},
			decides: "narrow the set to it",
		},
		{
			name: "not settled yet: no LSN",
			mem: func(m *leaderMemory) {
				m.syncMark = syncMark{Epoch: 4, Names: primaryUp.SyncStandbyNames, At: now.Add(-500 * time.Millisecond)}
			},
			st: state3("n2", "n3"), obs: cluster3(askedAt(obsAt(now, primaryUp), now.Add(-100*time.Millisecond))),
			want: func(m *leaderMemory) {
				m.syncMark = syncMark{Epoch: 4, Names: primaryUp.SyncStandbyNames, At: now.Add(-500 * time.Millisecond)}
			},
		},
		{
			name: "pushed news (not asked for) gives no LSN",
			mem: func(m *leaderMemory) {
				m.syncMark = syncMark{Epoch: 4, Names: primaryUp.SyncStandbyNames, At: now.Add(-2 * time.Second)}
			},
			st: state3("n2", "n3"), obs: cluster3(obsAt(now, primaryUp)),
		},
		{
			name: "an observation asked for before the settling delay ended gives no LSN",
			mem: func(m *leaderMemory) {
				m.syncMark = syncMark{Epoch: 4, Names: primaryUp.SyncStandbyNames, At: now.Add(-2 * time.Second)}
			},
			st: state3("n2", "n3"), obs: cluster3(askedAt(obsAt(now, primaryUp), now.Add(-1500*time.Millisecond))),
			want: func(m *leaderMemory) {
				m.syncMark = syncMark{Epoch: 4, Names: primaryUp.SyncStandbyNames, At: now.Add(-2 * time.Second)}
			},
		},
		{
			name: "the mark's LSN, once taken, stays",
			st:   state3("n2", "n3"), obs: cluster3(askedAt(obsAt(now, primaryUp), now)),
		},
		{
			name: "a new epoch starts a new mark, the same names or not",
			mem: func(m *leaderMemory) {
				m.syncMark.Epoch, m.epochSeen = 3, 3
			},
			st: state3("n2", "n3"), obs: cluster3(askedAt(obsAt(now, primaryUp), now)),
			want: func(m *leaderMemory) {
				m.syncMark = syncMark{Epoch: 4, Names: primaryUp.SyncStandbyNames, At: now}
				m.epochSeen, m.epochSince = 4, now
			},
		},
		{
			name: "a primary not running writable leaves the mark as it is",
			mem: func(m *leaderMemory) {
				m.syncMark = syncMark{Epoch: 4, Names: `ANY 1 ("n3")`, At: now.Add(-2 * time.Second)}
			},
			st: state3("n2", "n3"), obs: cluster3(askedAt(obsAt(now, standbyAt(1000)), now)),
			want: func(m *leaderMemory) {
				m.syncMark = syncMark{Epoch: 4, Names: `ANY 1 ("n3")`, At: now.Add(-2 * time.Second)}
			},
		},

		// Switchover.
		{
			name: "a switchover is timed from when the leader first sees it",
			st:   withSwitchover(state3("n2"), swN2), obs: cluster3(obsAt(now, primaryUp)),
			want:    func(m *leaderMemory) { m.switchoverOf, m.switchoverSince = swN2, now },
			decides: "switchover: waiting for n1 to stop cleanly",
		},
		{
			name: "the same switchover keeps its start, and times out from it",
			mem:  func(m *leaderMemory) { m.switchoverOf, m.switchoverSince = swN2, now.Add(-20*time.Second) },
			st:   withSwitchover(state3("n2"), swN2), obs: cluster3(obsAt(now, primaryUp)),
			want:    func(m *leaderMemory) { m.switchoverOf, m.switchoverSince = swN2, now.Add(-20*time.Second) },
			decides: "did not complete in 15s: cancelled",
		},
		{
			name: "a switchover to another candidate is timed afresh",
			mem:  func(m *leaderMemory) { m.switchoverOf, m.switchoverSince = swN3, now.Add(-20*time.Second) },
			st:   withSwitchover(state3("n2"), swN2), obs: cluster3(obsAt(now, primaryUp)),
			want:    func(m *leaderMemory) { m.switchoverOf, m.switchoverSince = swN2, now },
			decides: "switchover: waiting for n1 to stop cleanly",
		},
		{
			name: "a switchover that ended is noted as no switchover",
			mem:  func(m *leaderMemory) { m.switchoverOf, m.switchoverSince = swN2, now.Add(-5*time.Second) },
			st:   state3("n2"), obs: cluster3(obsAt(now, primaryUp)),
			want: func(m *leaderMemory) { m.switchoverOf, m.switchoverSince = consensus.Switchover{}, now },
		},

		// Epoch and start-up grace.
		{
			name: "an epoch the leader sees begin gets the grace; a new epoch forgets a start-up",
			mem:  func(m *leaderMemory) { m.startingUpSince = now.Add(-3 * time.Second) },
			st:   primaryIn("n2", 5, "n1"), obs: map[string]memberView{"n1": obsAt(now, standbyAt(1000)), "n2": obsAt(now, pgDown), "n3": obsAt(now, standbyAt(900))},
			want: func(m *leaderMemory) {
				m.permits, m.permitEpoch = map[string]time.Time{}, 5
				m.epochSeen, m.epochSince = 5, now
				m.startingUpSince = time.Time{}
			},
			decides: "primary n2 was named for epoch 5 moments ago",
		},
		{
			name: "the primary's agent starting up is timed from when the leader first sees it",
			st:   state3("n2"), obs: cluster3(startingUp(now, pgDown)),
			want:    func(m *leaderMemory) { m.startingUpSince = now },
			decides: "primary n1's agent has just started",
		},
		{
			name: "a start-up seen before keeps its time, and stops holding a failover back after the grace",
			mem:  func(m *leaderMemory) { m.startingUpSince = now.Add(-11 * time.Second) },
			st:   state3("n2"), obs: cluster3(startingUp(now, pgDown)),
			want:    func(m *leaderMemory) { m.startingUpSince = now.Add(-11 * time.Second) },
			decides: "failover: PostgreSQL on n1 is not running",
		},
		{
			name: "the primary running writable ends its start-up",
			mem:  func(m *leaderMemory) { m.startingUpSince = now.Add(-3 * time.Second) },
			st:   state3("n2"), obs: cluster3(obsAt(now, primaryUp)),
			want: func(m *leaderMemory) { m.startingUpSince = time.Time{} },
		},
		{
			name: "a start-up in a new epoch is timed afresh",
			mem: func(m *leaderMemory) {
				m.startingUpSince, m.epochSeen = now.Add(-30*time.Second), 3
			},
			st: state3("n2"), obs: cluster3(startingUp(now, pgDown)),
			want: func(m *leaderMemory) {
				m.startingUpSince, m.epochSeen, m.epochSince = now, 4, now
			},
		},
		{
			name: "an unreachable agent's start-up is not noted",
			st:   state3("n2"), obs: cluster3(func() memberView { v := startingUp(now, pgDown); v.reachable = false; return v }()),
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mem := steadyMemory()
			if c.mem != nil {
				c.mem(&mem)
			}
			want := cloneMemory(mem)
			for _, e := range c.events {
				before := cloneMemory(mem)
				next := e.apply(mem)
				if !reflect.DeepEqual(mem, before) {
					t.Fatalf("%s changed the memory it was given:\n got %s\nwant %s", e.kind, memoryText(mem), memoryText(before))
				}
				mem = next
			}
			if c.want != nil {
				c.want(&want)
			}
			given := cloneMemory(mem)
			in, got := inputs(c.st, c.obs, now, mem)
			if !reflect.DeepEqual(mem, given) {
				t.Fatalf("inputs changed the memory it was given:\n got %s\nwant %s", memoryText(mem), memoryText(given))
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("memory after the round:\n got %s\nwant %s", memoryText(got), memoryText(want))
			}
			// The Inputs are the memory's, judged without its helpers.
			var lease time.Time
			if got.leaseEpoch == c.st.Epoch {
				lease = got.leases[c.st.Primary]
			}
			switch {
			case !reflect.DeepEqual(in.State, c.st), !in.Now.Equal(now), !reflect.DeepEqual(in.Observations, c.obs):
				t.Fatalf("state, time or observations not passed through: state %+v, now %s", in.State, rel(in.Now))
			case !in.LeaderSince.Equal(got.since), !in.PriorLeases.Equal(got.priorLeases), !in.PrimaryLease.Equal(lease), !reflect.DeepEqual(in.Permits, got.permits),
				in.SyncMark != got.syncMark, !in.SwitchoverSince.Equal(got.switchoverSince), !in.EpochSince.Equal(got.epochSince),
				!in.StartingUpSince.Equal(got.startingUpSince):
				t.Fatalf("Inputs are not the memory's:\nInputs %s\nmemory %s", memoryPart(in), memoryText(got))
			}
			if c.decides != "" {
				in.Self, in.Policy = "n1", testPolicy
				if plan := planText(decide(in)); !strings.Contains(plan, c.decides) {
					t.Fatalf("decide: %q, want %q in it", plan, c.decides)
				}
			}
		})
	}
}

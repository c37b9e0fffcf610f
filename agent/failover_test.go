package agent

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
)

// Observations for the failover table: a primary and two standbys.
var (
	primaryUp = postgres.Status{Running: true, CurrentLSN: 1000, SyncStandbyNames: `ANY 1 ("n2")`}
	standbyAt = func(lsn postgres.LSN) postgres.Status {
		return postgres.Status{Running: true, InRecovery: true, Streaming: true, ReceivedLSN: lsn, ReplayedLSN: lsn}
	}
	pgDown      = postgres.Status{}
	silentSince = func(at time.Time) memberView { return memberView{reachable: false, lastSeen: at} }
)

// divergedAt is a standby whose WAL went past the primary's fork point, at
// lsn on the old timeline.
func divergedAt(at time.Time, lsn postgres.LSN) memberView {
	v := obsAt(at, standbyAt(lsn))
	v.obs.Postgres.Streaming = false
	v.obs.Diverged = true
	return v
}

func obsAt(at time.Time, pg postgres.Status) memberView {
	return memberView{reachable: true, lastSeen: at, obs: Observation{DataDir: "valid", Postgres: pg}}
}

// noFailover is s with member tagged nofailover.
func noFailover(s consensus.State, member string) consensus.State {
	m := s.Members[member]
	m.NoFailover = true
	s.Members[member] = m
	return s
}

// polledAt is obsAt from a poll sent at asked.
func polledAt(at, asked time.Time, pg postgres.Status) memberView {
	v := obsAt(at, pg)
	v.asked = asked
	return v
}

// startingUp is a member whose agent has just started and not yet acted.
func startingUp(at time.Time, pg postgres.Status) memberView {
	v := obsAt(at, pg)
	v.obs.StartingUp = true
	return v
}

func state3(sync ...string) consensus.State {
	return consensus.State{ClusterID: "c", SystemID: 7, Members: members("n1", "n2", "n3"), Primary: "n1", Epoch: 4, SyncStandbys: sync}
}

// tagged sets tag on member name of st (a copy of the map).
func tagged(st consensus.State, name string, tag func(*consensus.Member)) consensus.State {
	ms := make(map[string]consensus.Member, len(st.Members))
	for k, v := range st.Members {
		ms[k] = v
	}
	m := ms[name]
	tag(&m)
	ms[name] = m
	st.Members = ms
	return st
}

func noFailoverTag(m *consensus.Member) { m.NoFailover = true }
func noSyncTag(m *consensus.Member)     { m.NoSync = true }

// nonVoterTag: a member added as a Raft non-voter, not tagged candidate.
func nonVoterTag(m *consensus.Member) { m.NonVoter, m.NoFailover = true, true }

func TestDecideFailover(t *testing.T) {
	yes, no := true, false
	now := t0
	cases := []struct {
		name       string
		state      consensus.State
		obs        map[string]memberView
		answers    *bool
		permits    map[string]time.Time
		startingUp time.Time // Inputs.StartingUpSince
		lease      time.Time // Inputs.PrimaryLease
		policy     func(*Policy)
		wantPromo  string // "" = no promotion
		wantInWait string // substring of Plan.Waiting when nothing is promoted
	}{
		{
			name:  "healthy primary: nothing",
			state: state3("n2"),
			obs:   map[string]memberView{"n1": obsAt(now, primaryUp), "n2": obsAt(now, standbyAt(1000)), "n3": obsAt(now, standbyAt(900))},
		},
		{
			name:      "postgres died, agent alive: promote the synchronous standby",
			state:     state3("n2"),
			obs:       map[string]memberView{"n1": obsAt(now, pgDown), "n2": obsAt(now, standbyAt(900)), "n3": obsAt(now, standbyAt(1000))},
			wantPromo: "n2", // n3 has more WAL but is not synchronous: n2 holds every acknowledged commit
		},
		{
			name:       "postgres died, sync standby silent: promote nobody",
			state:      state3("n2"),
			obs:        map[string]memberView{"n1": obsAt(now, pgDown), "n2": silentSince(now.Add(-5 * time.Second)), "n3": obsAt(now, standbyAt(1000))},
			wantInWait: "synchronous standby n2 does not report",
		},
		{
			name:       "sync set of two, one silent: nobody (it may hold the newest commits)",
			state:      state3("n2", "n3"),
			obs:        map[string]memberView{"n1": obsAt(now, pgDown), "n2": obsAt(now, standbyAt(1000)), "n3": silentSince(now.Add(-5 * time.Second))},
			wantInWait: "n3 does not report",
		},
		{
			name:      "sync set of two: the one with the most WAL",
			state:     state3("n2", "n3"),
			obs:       map[string]memberView{"n1": obsAt(now, pgDown), "n2": obsAt(now, standbyAt(900)), "n3": obsAt(now, standbyAt(1000))},
			wantPromo: "n3",
		},
		{
			name:      "sync set of two: a diverged one is not chosen, however much WAL its old timeline has",
			state:     state3("n2", "n3"),
			obs:       map[string]memberView{"n1": obsAt(now, pgDown), "n2": obsAt(now, standbyAt(900)), "n3": divergedAt(now, 5000)},
			wantPromo: "n2",
		},
		{
			name:       "the only synchronous standby diverged: nobody",
			state:      state3("n3"),
			obs:        map[string]memberView{"n1": obsAt(now, pgDown), "n2": obsAt(now, standbyAt(900)), "n3": divergedAt(now, 5000)},
			wantInWait: "diverged",
		},
		{
			name:       "no sync set recorded: nobody",
			state:      state3(),
			obs:        map[string]memberView{"n1": obsAt(now, pgDown), "n2": obsAt(now, standbyAt(1000)), "n3": obsAt(now, standbyAt(1000))},
			wantInWait: "no synchronous standby is recorded",
		},
		{
			name:       "sync standby tagged nofailover: nobody",
			state:      noFailover(state3("n2"), "n2"),
			obs:        map[string]memberView{"n1": obsAt(now, pgDown), "n2": obsAt(now, standbyAt(1000)), "n3": obsAt(now, standbyAt(1000))},
			wantInWait: "cannot be promoted",
		},
		{
			name:       "paused: nobody, and it says why",
			state:      func() consensus.State { s := state3("n2"); s.Paused = true; return s }(),
			obs:        map[string]memberView{"n1": obsAt(now, pgDown), "n2": obsAt(now, standbyAt(1000)), "n3": obsAt(now, standbyAt(1000))},
			wantInWait: "paused",
		},
		{
			name:       "primary restarting with a permit: wait",
			state:      state3("n2"),
			obs:        map[string]memberView{"n1": obsAt(now, pgDown), "n2": obsAt(now, standbyAt(1000)), "n3": obsAt(now, standbyAt(1000))},
			permits:    map[string]time.Time{"n1": now.Add(-2 * time.Second)},
			wantInWait: "starting",
		},
		{
			// The permit was granted after the last observation of n1:
			// its agent lives and is starting PostgreSQL, however stale
			// the observations look (a host back from a reboot).
			name:       "agent silent but a fresh permit: wait",
			state:      state3("n2"),
			obs:        map[string]memberView{"n1": silentSince(now.Add(-5 * time.Second)), "n2": obsAt(now, standbyAt(1000)), "n3": obsAt(now, standbyAt(1000))},
			answers:    &no,
			permits:    map[string]time.Time{"n1": now.Add(-time.Second)},
			wantInWait: "starting PostgreSQL",
		},
		{
			// Every agent restarted: the primary's agent answers but
			// cannot ask for its permit until a Raft leader has caught it
			// up, and that leader is the one deciding now.
			name:       "primary's agent has just started, its PostgreSQL not yet: wait",
			state:      state3("n2"),
			obs:        map[string]memberView{"n1": startingUp(now, pgDown), "n2": obsAt(now, standbyAt(1000)), "n3": obsAt(now, standbyAt(1000))},
			startingUp: now.Add(-2 * time.Second),
			wantInWait: "has just started",
		},
		{
			name:       "primary's agent starting up for longer than the grace: promote",
			state:      state3("n2"),
			obs:        map[string]memberView{"n1": startingUp(now, pgDown), "n2": obsAt(now, standbyAt(1000)), "n3": obsAt(now, standbyAt(1000))},
			startingUp: now.Add(-time.Minute),
			wantPromo:  "n2",
		},
		{
			name:       "a start-up seen earlier does not cover a crash after it: promote",
			state:      state3("n2"),
			obs:        map[string]memberView{"n1": obsAt(now, pgDown), "n2": obsAt(now, standbyAt(1000)), "n3": obsAt(now, standbyAt(1000))},
			startingUp: now.Add(-2 * time.Second),
			wantPromo:  "n2",
		},
		{
			// Item 7 of the safety issue: a primary that cannot start (its
			// port taken) asks again and again; the grace runs from the
			// first permit, and past it the leader waits only for the
			// lease it stops renewing.
			name:       "start grace over, lease renewed moments ago: wait for it to run out",
			state:      state3("n2"),
			obs:        map[string]memberView{"n1": obsAt(now, pgDown), "n2": obsAt(now, standbyAt(1000)), "n3": obsAt(now, standbyAt(1000))},
			permits:    map[string]time.Time{"n1": now.Add(-11 * time.Second)},
			lease:      now.Add(-100 * time.Millisecond),
			wantInWait: "waiting for its lease to run out",
		},
		{
			name:      "start grace over, lease run out: promote",
			state:     state3("n2"),
			obs:       map[string]memberView{"n1": obsAt(now, pgDown), "n2": obsAt(now, standbyAt(1000)), "n3": obsAt(now, standbyAt(1000))},
			permits:   map[string]time.Time{"n1": now.Add(-20 * time.Second)},
			lease:     now.Add(-3 * time.Second),
			wantPromo: "n2",
		},
		{
			// Item 5: a postmaster that lives but whose status query fails
			// (every slot taken, a stalled backend) is a live server.
			name:       "primary's postmaster alive but not answering its agent: no failover",
			state:      state3("n2"),
			obs:        map[string]memberView{"n1": obsAt(now, postgres.Status{PID: 42, Unresponsive: true, Error: "query status: timeout"}), "n2": obsAt(now, standbyAt(1000)), "n3": obsAt(now, standbyAt(1000))},
			wantInWait: "does not answer its agent",
		},
		{
			// Item 4: the leader granted the primary a lease renewal moments
			// ago; whatever its last answer, its lease runs from there.
			name:       "agent silent, last answer long ago but lease renewed recently: wait",
			state:      state3("n2"),
			obs:        map[string]memberView{"n1": silentSince(now.Add(-5 * time.Second)), "n2": obsAt(now, standbyAt(1000)), "n3": obsAt(now, standbyAt(1000))},
			answers:    &no,
			lease:      now.Add(-time.Second),
			wantInWait: "fence deadline",
		},
		{
			// Item 11: the standby that received less but replayed more (a
			// restarted standby whose receive position starts over) holds
			// more WAL.
			name:      "sync set of two: the greatest of received and replayed wins",
			state:     state3("n2", "n3"),
			obs:       map[string]memberView{"n1": obsAt(now, pgDown), "n2": obsAt(now, standbyAt(900)), "n3": obsAt(now, postgres.Status{Running: true, InRecovery: true, ReceivedLSN: 0, ReplayedLSN: 1000})},
			wantPromo: "n3",
		},
		{
			// Promoting n2 would leave n3 past the new timeline's fork: a
			// pg_rewind while the new primary's commits wait for it.
			name:      "an asynchronous standby ahead of the synchronous one, both polled after the primary stopped: promote it",
			state:     state3("n2"),
			obs:       map[string]memberView{"n1": obsAt(now.Add(-300*time.Millisecond), pgDown), "n2": polledAt(now, now.Add(-100*time.Millisecond), standbyAt(900)), "n3": polledAt(now, now.Add(-100*time.Millisecond), standbyAt(1000))},
			wantPromo: "n3",
		},
		{
			name:      "the synchronous standby polled before the primary was seen stopped: it may have acknowledged more since, promote it",
			state:     state3("n2"),
			obs:       map[string]memberView{"n1": obsAt(now.Add(-300*time.Millisecond), pgDown), "n2": polledAt(now, now.Add(-500*time.Millisecond), standbyAt(900)), "n3": polledAt(now, now.Add(-100*time.Millisecond), standbyAt(1000))},
			wantPromo: "n2",
		},
		{
			name:      "pushed news of the synchronous standby says nothing of when: promote it",
			state:     state3("n2"),
			obs:       map[string]memberView{"n1": obsAt(now.Add(-300*time.Millisecond), pgDown), "n2": obsAt(now, standbyAt(900)), "n3": polledAt(now, now.Add(-100*time.Millisecond), standbyAt(1000))},
			wantPromo: "n2",
		},
		{
			name:      "as much WAL as the synchronous standby, not more: the synchronous standby",
			state:     state3("n2"),
			obs:       map[string]memberView{"n1": obsAt(now.Add(-300*time.Millisecond), pgDown), "n2": polledAt(now, now.Add(-100*time.Millisecond), standbyAt(1000)), "n3": polledAt(now, now.Add(-100*time.Millisecond), standbyAt(1000))},
			wantPromo: "n2",
		},
		{
			name:      "silent primary: the synchronous standby polled after the fence deadline, the other one ahead: promote the other",
			state:     state3("n2"),
			obs:       map[string]memberView{"n1": silentSince(now.Add(-3 * time.Second)), "n2": polledAt(now, now.Add(-50*time.Millisecond), standbyAt(900)), "n3": polledAt(now, now.Add(-50*time.Millisecond), standbyAt(1000))},
			answers:   &no,
			wantPromo: "n3",
		},
		{
			name:      "silent primary: the synchronous standby polled before the fence deadline: promote it",
			state:     state3("n2"),
			obs:       map[string]memberView{"n1": silentSince(now.Add(-3 * time.Second)), "n2": polledAt(now, now.Add(-2*time.Second), standbyAt(900)), "n3": polledAt(now, now.Add(-50*time.Millisecond), standbyAt(1000))},
			answers:   &no,
			wantPromo: "n2",
		},
		{
			name:      "the synchronous standby tagged nofailover, the other one ahead of it and polled after: promote the other",
			state:     noFailover(state3("n2"), "n2"),
			obs:       map[string]memberView{"n1": obsAt(now.Add(-300*time.Millisecond), pgDown), "n2": polledAt(now, now.Add(-100*time.Millisecond), standbyAt(1000)), "n3": polledAt(now, now.Add(-100*time.Millisecond), standbyAt(1100))},
			wantPromo: "n3",
		},
		{
			name:      "old permit expired: promote",
			state:     state3("n2"),
			obs:       map[string]memberView{"n1": obsAt(now, pgDown), "n2": obsAt(now, standbyAt(1000)), "n3": obsAt(now, standbyAt(1000))},
			permits:   map[string]time.Time{"n1": now.Add(-time.Minute)},
			wantPromo: "n2",
		},
		{
			name:       "agent silent, before the fence deadline: wait",
			state:      state3("n2"),
			obs:        map[string]memberView{"n1": silentSince(now.Add(-1200 * time.Millisecond)), "n2": obsAt(now, standbyAt(1000)), "n3": obsAt(now, standbyAt(1000))},
			answers:    &no,
			wantInWait: "fence deadline",
		},
		{
			name:      "agent silent past the fence deadline, postgres does not answer: promote",
			state:     state3("n2"),
			obs:       map[string]memberView{"n1": silentSince(now.Add(-3 * time.Second)), "n2": obsAt(now, standbyAt(1000)), "n3": obsAt(now, standbyAt(1000))},
			answers:   &no,
			wantPromo: "n2",
		},
		{
			name:       "agent dead but postgres answers directly: no failover",
			state:      state3("n2"),
			obs:        map[string]memberView{"n1": silentSince(now.Add(-10 * time.Second)), "n2": obsAt(now, standbyAt(1000)), "n3": obsAt(now, standbyAt(1000))},
			answers:    &yes,
			wantInWait: "agent death is not database death",
		},
		{
			name:      "async: the most up-to-date within the lag bound",
			state:     state3(),
			obs:       map[string]memberView{"n1": obsAt(now, postgres.Status{CurrentLSN: 5000}), "n2": obsAt(now, standbyAt(4000)), "n3": obsAt(now, standbyAt(4500))},
			policy:    func(p *Policy) { p.Synchronous = false },
			wantPromo: "n3",
		},
		{
			name:      "async: a diverged standby is skipped",
			state:     state3(),
			obs:       map[string]memberView{"n1": obsAt(now, postgres.Status{CurrentLSN: 5000}), "n2": obsAt(now, standbyAt(4000)), "n3": divergedAt(now, 4900)},
			policy:    func(p *Policy) { p.Synchronous = false },
			wantPromo: "n2",
		},
		{
			name:       "async: every standby too far behind",
			state:      state3(),
			obs:        map[string]memberView{"n1": obsAt(now, postgres.Status{CurrentLSN: 5 << 20}), "n2": obsAt(now, standbyAt(1)), "n3": obsAt(now, standbyAt(2))},
			policy:     func(p *Policy) { p.Synchronous = false },
			wantInWait: "maximum_lag_on_failover",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := testPolicy
			if c.policy != nil {
				c.policy(&p)
			}
			plan := decide(Inputs{State: c.state, Observations: c.obs, Now: now, Self: "n2", Policy: p, PrimaryAnswers: c.answers, Permits: c.permits, StartingUpSince: c.startingUp, PrimaryLease: c.lease, LeaderSince: now.Add(-time.Hour)})
			var promoted string
			for _, d := range plan.Decisions {
				if d.Command.Type == consensus.CmdPromote {
					pd := d.Command.Data.(consensus.PromoteData)
					if pd.Epoch != c.state.Epoch+1 {
						t.Errorf("promotion at epoch %d, want %d", pd.Epoch, c.state.Epoch+1)
					}
					promoted = pd.Primary
				}
			}
			if promoted != c.wantPromo {
				t.Fatalf("promoted %q, want %q (plan %+v)", promoted, c.wantPromo, plan)
			}
			if c.wantInWait != "" && !strings.Contains(plan.Waiting, c.wantInWait) {
				t.Fatalf("waiting %q, want it to mention %q", plan.Waiting, c.wantInWait)
			}
		})
	}
}

func TestDecideSyncSet(t *testing.T) {
	now := t0
	sync := func(names ...string) []string { return names }
	cases := []struct {
		name  string
		state consensus.State
		obs   map[string]memberView
		mark  syncMark
		want  []string // nil = no change
	}{
		{"new epoch, empty set: every standby, best first", state3(),
			map[string]memberView{"n1": obsAt(now, primaryUp), "n2": obsAt(now, standbyAt(900)), "n3": obsAt(now, standbyAt(1000))}, syncMark{}, sync("n3", "n2")},
		{"sync standby streams: keep", state3("n2"),
			map[string]memberView{"n1": obsAt(now, primaryUp), "n2": obsAt(now, standbyAt(1000)), "n3": obsAt(now, standbyAt(1000))}, syncMark{}, nil},
		{"sync standby gone: add the streaming one in front", state3("n2"),
			map[string]memberView{"n1": obsAt(now, primaryUp), "n2": silentSince(now.Add(-5 * time.Second)), "n3": obsAt(now, standbyAt(1000))}, syncMark{}, sync("n3", "n2")},
		{"sync standby stopped streaming after the primary last reported: wait for the primary", state3("n2"),
			map[string]memberView{"n1": obsAt(now.Add(-100*time.Millisecond), primaryUp), "n2": obsAt(now, func() postgres.Status { s := standbyAt(1000); s.Streaming = false; return s }()), "n3": obsAt(now, standbyAt(1000))}, syncMark{}, nil},
		{"sync standby not streaming and the primary's postgres is gone: do not widen", state3("n2"),
			map[string]memberView{"n1": obsAt(now, pgDown), "n2": obsAt(now, func() postgres.Status { s := standbyAt(1000); s.Streaming = false; return s }()), "n3": obsAt(now, standbyAt(1000))}, syncMark{}, nil},
		{"sync standby not streaming and the primary silent: do not widen", state3("n2"),
			map[string]memberView{"n1": silentSince(now.Add(-5 * time.Second)), "n2": silentSince(now.Add(-5 * time.Second)), "n3": obsAt(now, standbyAt(1000))}, syncMark{}, nil},
		{"sync standby not streaming, the primary seen running after it: add the streaming one", state3("n2"),
			map[string]memberView{"n1": obsAt(now, primaryUp), "n2": obsAt(now.Add(-100*time.Millisecond), func() postgres.Status { s := standbyAt(1000); s.Streaming = false; return s }()), "n3": obsAt(now, standbyAt(1000))}, syncMark{}, sync("n3", "n2")},
		{"sync standby's agent has not answered for two health intervals (a lost host's poll fails only at its timeout): add the streaming one", state3("n2"),
			map[string]memberView{"n1": obsAt(now, primaryUp), "n2": obsAt(now.Add(-2*testPolicy.HealthInterval-time.Millisecond), standbyAt(1000)), "n3": obsAt(now, standbyAt(1000))}, syncMark{}, sync("n3", "n2")},
		{"sync standby's last answer within two health intervals: keep", state3("n2"),
			map[string]memberView{"n1": obsAt(now, primaryUp), "n2": obsAt(now.Add(-2*testPolicy.HealthInterval), standbyAt(1000)), "n3": obsAt(now, standbyAt(1000))}, syncMark{}, nil},
		{"narrow once the first has all the WAL from when the setting narrowed", state3("n3", "n2"),
			map[string]memberView{"n1": obsAt(now, primaryUp), "n3": obsAt(now, standbyAt(1000))}, syncMark{Epoch: 4, Names: `ANY 1 ("n3")`, LSN: 990}, sync("n3")},
		{"do not narrow before it has", state3("n3", "n2"),
			map[string]memberView{"n1": obsAt(now, primaryUp), "n3": obsAt(now, standbyAt(900))}, syncMark{Epoch: 4, Names: `ANY 1 ("n3")`, LSN: 990}, nil},
		{"first of two not streaming, the second streams: put the second first", state3("n3", "n2"),
			map[string]memberView{"n1": obsAt(now, primaryUp), "n2": obsAt(now, standbyAt(1000)), "n3": silentSince(now.Add(-5 * time.Second))}, syncMark{}, sync("n2", "n3")},
		// Tags (issue 19): a nofailover or nosync member is never in the set
		// while another member that may be streams.
		{"new epoch, empty set, n3 tagged nofailover: only n2", tagged(state3(), "n3", noFailoverTag),
			map[string]memberView{"n1": obsAt(now, primaryUp), "n2": obsAt(now, standbyAt(900)), "n3": obsAt(now, standbyAt(1000))}, syncMark{}, sync("n2")},
		{"new epoch, empty set, n3 nosync and n2 not streaming: both, n3 first", tagged(state3(), "n3", noSyncTag),
			map[string]memberView{"n1": obsAt(now, primaryUp), "n2": silentSince(now.Add(-5 * time.Second)), "n3": obsAt(now, standbyAt(1000))}, syncMark{}, sync("n3", "n2")},
		{"the synchronous standby tagged nofailover, n2 streams: n2 first", tagged(state3("n3"), "n3", noFailoverTag),
			map[string]memberView{"n1": obsAt(now, primaryUp), "n2": obsAt(now, standbyAt(900)), "n3": obsAt(now, standbyAt(1000))}, syncMark{}, sync("n2", "n3")},
		{"the synchronous standby tagged nosync, n2 down: keep it", tagged(state3("n3"), "n3", noSyncTag),
			map[string]memberView{"n1": obsAt(now, primaryUp), "n2": silentSince(now.Add(-5 * time.Second)), "n3": obsAt(now, standbyAt(1000))}, syncMark{}, nil},
		{"sync standby gone, the only spare is nofailover: add it rather than block", tagged(state3("n2"), "n3", noFailoverTag),
			map[string]memberView{"n1": obsAt(now, primaryUp), "n2": silentSince(now.Add(-5 * time.Second)), "n3": obsAt(now, standbyAt(1000))}, syncMark{}, sync("n3", "n2")},
		{"then n2 is back: n2 first again", tagged(state3("n3", "n2"), "n3", noFailoverTag),
			map[string]memberView{"n1": obsAt(now, primaryUp), "n2": obsAt(now, standbyAt(1000)), "n3": obsAt(now, standbyAt(1000))}, syncMark{}, sync("n2", "n3")},
		// Non-voters (issue 21): one that may not be promoted is never in
		// the set, even when it alone streams.
		{"new epoch, empty set, n3 a non-voter and n2 not streaming: n2 alone", tagged(state3(), "n3", nonVoterTag),
			map[string]memberView{"n1": obsAt(now, primaryUp), "n2": silentSince(now.Add(-5 * time.Second)), "n3": obsAt(now, standbyAt(1000))}, syncMark{}, sync("n2")},
		{"sync standby gone, the only spare a non-voter: keep waiting for n2", tagged(state3("n2"), "n3", nonVoterTag),
			map[string]memberView{"n1": obsAt(now, primaryUp), "n2": silentSince(now.Add(-5 * time.Second)), "n3": obsAt(now, standbyAt(1000))}, syncMark{}, nil},
		{"a non-voter tagged candidate is like any standby", tagged(state3("n2"), "n3", func(m *consensus.Member) { m.NonVoter = true }),
			map[string]memberView{"n1": obsAt(now, primaryUp), "n2": silentSince(now.Add(-5 * time.Second)), "n3": obsAt(now, standbyAt(1000))}, syncMark{}, sync("n3", "n2")},
		{"do not narrow while the primary still names both", state3("n3", "n2"),
			map[string]memberView{"n1": obsAt(now, primaryUp), "n3": obsAt(now, standbyAt(1000))}, syncMark{Epoch: 4, Names: `ANY 1 ("n3","n2")`, LSN: 990}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			plan := decide(Inputs{State: c.state, Observations: c.obs, Now: now, Self: "n1", Policy: testPolicy, SyncMark: c.mark, LeaderSince: now.Add(-time.Hour)})
			var got []string
			changed := false
			for _, d := range plan.Decisions {
				if d.Command.Type == consensus.CmdSetSyncStandbys {
					got, changed = d.Command.Data.(consensus.SetSyncStandbysData).Names, true
				}
			}
			if !changed && c.want == nil {
				return
			}
			if strings.Join(got, ",") != strings.Join(c.want, ",") || changed != (c.want != nil) {
				t.Fatalf("sync set %v (changed %v), want %v; plan %+v", got, changed, c.want, plan)
			}
		})
	}
}

func TestDecideSwitchover(t *testing.T) {
	now := t0
	st := state3("n2")
	st.Switchover = consensus.Switchover{From: "n1", To: "n2", Epoch: 4}
	stopped := obsAt(now, pgDown)
	stopped.obs.StoppedLSN = 2000
	cases := []struct {
		name      string
		obs       map[string]memberView
		since     time.Time
		wantType  consensus.CommandType
		wantPromo string
	}{
		{"old primary still running: wait", map[string]memberView{"n1": obsAt(now, primaryUp), "n2": obsAt(now, standbyAt(1000))}, now, "", ""},
		{"stopped, candidate behind its shutdown checkpoint: wait", map[string]memberView{"n1": stopped, "n2": obsAt(now, standbyAt(2000))}, now, "", ""},
		{"stopped, candidate has it all: promote", map[string]memberView{"n1": stopped, "n2": obsAt(now, standbyAt(2100))}, now, consensus.CmdPromote, "n2"},
		{"too slow: cancel", map[string]memberView{"n1": obsAt(now, primaryUp), "n2": obsAt(now, standbyAt(1000))}, now.Add(-time.Minute), consensus.CmdSetSwitchover, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			plan := decide(Inputs{State: st, Observations: c.obs, Now: now, Self: "n1", Policy: testPolicy, SwitchoverSince: c.since, LeaderSince: now.Add(-time.Hour)})
			if c.wantType == "" {
				if len(plan.Decisions) != 0 {
					t.Fatalf("want no decision, got %+v", plan.Decisions)
				}
				return
			}
			if len(plan.Decisions) != 1 || plan.Decisions[0].Command.Type != c.wantType {
				t.Fatalf("want %s, got %+v", c.wantType, plan)
			}
			if c.wantPromo != "" && plan.Decisions[0].Command.Data.(consensus.PromoteData).Primary != c.wantPromo {
				t.Fatalf("promoted the wrong member: %+v", plan.Decisions[0])
			}
		})
	}
}

// The promotion commits the new epoch's synchronous set (the healthy
// standbys, so a survivor can be promoted if the new primary fails at
// once) and reserves a timeline above every one recorded or observed.
func TestPromotionCarriesSyncSetAndTimeline(t *testing.T) {
	now := t0
	st := state3("n2")
	st.Timeline = 7
	n3 := standbyAt(900)
	n3.Timeline = 9
	obs := map[string]memberView{"n1": obsAt(now, pgDown), "n2": obsAt(now, standbyAt(1000)), "n3": obsAt(now, n3)}
	plan := decide(Inputs{State: st, Observations: obs, Now: now, Self: "n2", Policy: testPolicy, LeaderSince: now.Add(-time.Hour)})
	if len(plan.Decisions) != 1 {
		t.Fatalf("want one decision, got %+v", plan)
	}
	d := plan.Decisions[0].Command.Data.(consensus.PromoteData)
	if d.Primary != "n2" || !slices.Equal(d.SyncStandbys, []string{"n3"}) || d.Timeline != 10 {
		t.Fatalf("promotion %+v, want n2 with set [n3] onto timeline 10", d)
	}
	// What the history keeps of it (issue 19): kind, old primary, reason,
	// the leader's time and the candidate's WAL end.
	if r := d.Record; r.Kind != "failover" || r.From != "n1" || r.Reason != plan.Decisions[0].Reason || !r.At.Equal(now) || r.LSN != 1000 {
		t.Fatalf("record %+v, want a failover from n1 at %v, LSN 1000, with the decision's reason", r, now)
	}

	// The double fault: n2, promoted with set [n3], fails at once; n3 is
	// the survivor of the set and is promoted without n1 (still down).
	st2 := st
	st2.Primary, st2.Epoch, st2.SyncStandbys, st2.Timeline = "n2", 5, []string{"n3"}, 10
	obs2 := map[string]memberView{"n1": obsAt(now, pgDown), "n2": obsAt(now, pgDown), "n3": obsAt(now, standbyAt(1100))}
	plan = decide(Inputs{State: st2, Observations: obs2, Now: now, Self: "n3", Policy: testPolicy, LeaderSince: now.Add(-time.Hour)})
	if len(plan.Decisions) != 1 {
		t.Fatalf("double fault: want a promotion, got %+v", plan)
	}
	d = plan.Decisions[0].Command.Data.(consensus.PromoteData)
	if d.Primary != "n3" || d.Timeline != 11 || slices.Contains(d.SyncStandbys, "n3") || len(d.SyncStandbys) == 0 {
		t.Fatalf("double fault: promotion %+v, want n3 onto timeline 11 with a non-empty set without itself", d)
	}

	// A switchover keeps the old primary in the set: it stopped cleanly
	// and follows at once.
	sw := state3("n2")
	sw.Switchover = consensus.Switchover{From: "n1", To: "n2", Epoch: 4}
	obs3 := map[string]memberView{"n1": {reachable: true, lastSeen: now, obs: Observation{DataDir: "valid", StoppedLSN: 900}}, "n2": obsAt(now, standbyAt(1000)), "n3": silentSince(now.Add(-time.Minute))}
	plan = decide(Inputs{State: sw, Observations: obs3, Now: now, Self: "n2", Policy: testPolicy, SwitchoverSince: now})
	if len(plan.Decisions) != 1 {
		t.Fatalf("switchover: want a promotion, got %+v", plan)
	}
	d = plan.Decisions[0].Command.Data.(consensus.PromoteData)
	if d.Primary != "n2" || !slices.Equal(d.SyncStandbys, []string{"n1"}) {
		t.Fatalf("switchover: promotion %+v, want n2 with set [n1]", d)
	}
	if d.Record.Kind != "switchover" || d.Record.From != "n1" {
		t.Fatalf("switchover: record %+v", d.Record)
	}
}

// Item 12: a primary whose own fence_timeout is longer than the leader's
// keeps writing that long; the leader judges its lease by the longer one,
// and /cluster says the members disagree.
func TestSafetySettingsDisagree(t *testing.T) {
	now := t0
	silent := silentSince(now.Add(-2 * time.Second))
	silent.obs.Safety = &SafetySettings{FenceTimeout: 5 * time.Second, HealthInterval: 250 * time.Millisecond, Synchronous: true}
	obs := map[string]memberView{"n1": silent, "n2": obsAt(now, standbyAt(1000)), "n3": obsAt(now, standbyAt(1000))}
	for _, n := range []string{"n2", "n3"} {
		v := obs[n]
		v.obs.Safety = &SafetySettings{FenceTimeout: time.Second, HealthInterval: 250 * time.Millisecond, Synchronous: true}
		obs[n] = v
	}
	no := false
	in := Inputs{State: state3("n2"), Observations: obs, Now: now, Self: "n2", PrimaryAnswers: &no, LeaderSince: now.Add(-time.Hour)}
	in.Policy = testPolicy
	if plan := decide(in); len(plan.Decisions) != 1 {
		t.Fatalf("with the leader's own 1s fence_timeout it promotes; got %+v", plan)
	}
	in.Policy = widenForPrimary(testPolicy, obs["n1"])
	if plan := decide(in); len(plan.Decisions) != 0 || !strings.Contains(plan.Waiting, "fence deadline") {
		t.Fatalf("judged by the primary's 5s fence_timeout it must wait; got %+v", plan)
	}
	why := safetyDisagreement(obs)
	if !strings.Contains(why, "n1: fence_timeout=5s") || !strings.Contains(why, "n2,n3: fence_timeout=1s") {
		t.Fatalf("disagreement %q", why)
	}
	obs["n1"] = obs["n2"]
	if why := safetyDisagreement(obs); why != "" {
		t.Fatalf("equal settings reported as a disagreement: %q", why)
	}
}

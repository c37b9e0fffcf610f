package agent

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/consensus"
)

func TestObservedChanges(t *testing.T) {
	up := memberFacts{reachable: true, running: true}
	with := func(f memberFacts, change func(*memberFacts)) memberFacts { change(&f); return f }
	facts := func(leader string, m map[string]memberFacts) clusterFacts {
		return clusterFacts{raftLeader: leader, term: 7, members: m}
	}
	cases := []struct {
		name      string
		prev, cur clusterFacts
		want      []string // kind/member of each event, in order
	}{
		{"nothing changed", facts("n1", map[string]memberFacts{"n1": up}), facts("n1", map[string]memberFacts{"n1": up}), nil},
		{"new Raft leader", facts("n1", map[string]memberFacts{}), facts("n2", map[string]memberFacts{}), []string{"raft_leader/n2"}},
		{"no leader during an election is no event", facts("n1", nil), facts("", nil), nil},
		{"fenced and unfenced",
			facts("n1", map[string]memberFacts{"a": up, "b": with(up, func(f *memberFacts) { f.fenced = true })}),
			facts("n1", map[string]memberFacts{"a": with(up, func(f *memberFacts) { f.fenced = true }), "b": up}),
			[]string{"fenced/a", "unfenced/b"}},
		{"VIP moves",
			facts("n1", map[string]memberFacts{"a": with(up, func(f *memberFacts) { f.vip = true }), "b": up}),
			facts("n2", map[string]memberFacts{"a": up, "b": with(up, func(f *memberFacts) { f.vip = true })}),
			[]string{"raft_leader/n2", "vip/b"}},
		{"rewind, then the rejoin",
			facts("n1", map[string]memberFacts{"a": with(up, func(f *memberFacts) { f.running = false })}),
			facts("n1", map[string]memberFacts{"a": with(up, func(f *memberFacts) { f.running = false; f.activity = "rewinding" })}),
			[]string{"rewind/a"}},
		{"rejoined by rewind and started",
			facts("n1", map[string]memberFacts{"a": with(up, func(f *memberFacts) { f.running = false; f.activity = "rewinding" })}),
			facts("n1", map[string]memberFacts{"a": with(up, func(f *memberFacts) { f.rejoin = "rewind" })}),
			[]string{"postgres_started/a", "rejoin/a"}},
		{"clone", facts("n1", map[string]memberFacts{"a": up}), facts("n1", map[string]memberFacts{"a": with(up, func(f *memberFacts) { f.activity = "cloning" })}), []string{"clone/a"}},
		{"agent silent: nothing else about it",
			facts("n1", map[string]memberFacts{"a": up}),
			facts("n1", map[string]memberFacts{"a": {reachable: false}}),
			[]string{"unreachable/a"}},
		{"a new member is no change", facts("n1", map[string]memberFacts{}), facts("n1", map[string]memberFacts{"a": up}), nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got []string
			for _, e := range observedChanges(time.Unix(1, 0), c.prev, c.cur) {
				if e.Source != "observed" || e.Text == "" {
					t.Errorf("event %+v: want source observed and a text", e)
				}
				got = append(got, e.Kind+"/"+e.Member)
			}
			if fmt.Sprint(got) != fmt.Sprint(c.want) {
				t.Fatalf("got %v, want %v", got, c.want)
			}
		})
	}
}

// The log keeps at most maxObservedEvents, the newest; the first round is
// only a baseline.
func TestEventLogBounded(t *testing.T) {
	var l eventLog
	t0 := time.Unix(1_800_000_000, 0)
	for i := 0; i < maxObservedEvents+50; i++ {
		l.observe(t0.Add(time.Duration(i)*time.Second), clusterFacts{raftLeader: fmt.Sprintf("n%d", i), term: uint64(i)})
	}
	got := l.recent()
	if len(got) != maxObservedEvents {
		t.Fatalf("%d events kept, want %d", len(got), maxObservedEvents)
	}
	if last := got[len(got)-1]; last.Member != fmt.Sprintf("n%d", maxObservedEvents+49) {
		t.Fatalf("newest event %+v", last)
	}
}

// The timeline merges the committed promotions with the observed events,
// newest first, and says what the page shows of a promotion.
func TestTimeline(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	history := []consensus.Promotion{
		{Epoch: 2, Timeline: 2, Primary: "node2", PromotionRecord: consensus.PromotionRecord{Kind: "switchover", From: "node1", Reason: "operator asked", At: t0.Add(10 * time.Second)}},
		{Epoch: 3, Timeline: 3, Primary: "node3", PromotionRecord: consensus.PromotionRecord{Kind: "failover", From: "node2", Reason: "node2's PostgreSQL is down", At: t0.Add(30 * time.Second)}},
	}
	observed := []Event{
		{At: t0.Add(20 * time.Second), Kind: "fenced", Member: "node2", Text: "node2 fenced", Source: "observed"},
		{At: t0.Add(40 * time.Second), Kind: "rewind", Member: "node2", Text: "node2 rewinding", Source: "observed"},
	}
	got := timeline(history, observed, 10)
	var kinds []string
	for _, e := range got {
		kinds = append(kinds, e.Kind)
	}
	if fmt.Sprint(kinds) != "[rewind failover fenced switchover]" {
		t.Fatalf("order %v, want newest first", kinds)
	}
	sw := got[3]
	for _, want := range []string{"node1 → node2", "epoch 2", "timeline 2", "operator asked"} {
		if !strings.Contains(sw.Text, want) {
			t.Errorf("switchover text %q lacks %q", sw.Text, want)
		}
	}
	if sw.Source != "history" || sw.Member != "node2" || sw.Epoch != 2 || sw.Timeline != 2 {
		t.Errorf("switchover event %+v", sw)
	}
	if got := timeline(history, observed, 3); len(got) != 3 || got[2].Kind != "fenced" {
		t.Fatalf("limit 3: %+v", got)
	}
}

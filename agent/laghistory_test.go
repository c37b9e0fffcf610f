package agent

import (
	"testing"
	"time"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
)

// The ring never holds more than lagPoints points, drops the oldest first
// and keeps them in time order across the wrap.
func TestLagRingBounded(t *testing.T) {
	var r lagRing
	extra := 250
	for i := 0; i < lagPoints+extra; i++ {
		r.add(LagPoint{At: int64(i) * 1000, Bytes: int64(i)})
	}
	if r.len() != lagPoints || cap(r.buf) > 2*lagPoints {
		t.Fatalf("len %d cap %d, want %d points", r.len(), cap(r.buf), lagPoints)
	}
	if first := r.at(0); first.Bytes != int64(extra) {
		t.Fatalf("oldest point %+v, want the one of step %d", *first, extra)
	}
	for i := 1; i < r.len(); i++ {
		if r.at(i).At <= r.at(i-1).At {
			t.Fatalf("points %d and %d out of order: %+v %+v", i-1, i, *r.at(i - 1), *r.at(i))
		}
	}
	r.add(LagPoint{At: 5, Bytes: 1}) // a clock that stepped back
	if last := r.at(r.len() - 1); last.Bytes != int64(lagPoints+extra-1) {
		t.Fatalf("a point older than the last replaced it: %+v", *last)
	}
}

// lagCluster is node1 primary at LSN 10000, node2 a standby that replayed
// 4000 of the 9000 it received, its last replayed transaction replayTimeAgo
// before its observation, node3 a standby whose agent does not answer.
func lagCluster(at time.Time, replayed postgres.LSN, replayTimeAgo time.Duration) (consensus.State, map[string]memberView) {
	st := consensus.State{Primary: "node1", Members: map[string]consensus.Member{"node1": {}, "node2": {}, "node3": {}}}
	obs := map[string]memberView{
		"node1": {reachable: true, obs: Observation{At: at, Postgres: postgres.Status{Running: true, CurrentLSN: 10000}}},
		"node2": {reachable: true, obs: Observation{At: at, Postgres: postgres.Status{Running: true, InRecovery: true,
			ReceivedLSN: 9000, ReplayedLSN: replayed, ReplayTime: at.Add(-replayTimeAgo)}}},
		"node3": {reachable: false, obs: Observation{Postgres: postgres.Status{Running: true, InRecovery: true, ReplayedLSN: 1}}},
	}
	return st, obs
}

// Samples of one second fold into one point with the larger lag; the next
// second starts a new point; a standby whose lag is unknown and the primary
// get none; since() returns the points from a step on and forgets points
// older than the window.
func TestLagHistorySample(t *testing.T) {
	var h lagHistory
	t0 := time.Unix(1_800_000_000, 0)
	st, obs := lagCluster(t0, 4000, 5*time.Second)
	h.sample(t0, st, obs)
	st, obs = lagCluster(t0.Add(250*time.Millisecond), 3000, 2*time.Second) // more bytes, fewer seconds
	h.sample(t0.Add(250*time.Millisecond), st, obs)
	got := h.since(t0, 0)
	if len(got) != 1 || len(got["node2"]) != 1 {
		t.Fatalf("after two samples in one second: %+v, want one point for node2 only", got)
	}
	if p := got["node2"][0]; p.At != t0.UnixMilli() || p.Bytes != 7000 || p.Seconds != 5 {
		t.Fatalf("folded point %+v, want the step's start, 7000 bytes and 5 s (the larger of each)", p)
	}

	t1 := t0.Add(time.Second)
	st, obs = lagCluster(t1, 9000, 0) // replayed all it received: no seconds of lag
	h.sample(t1, st, obs)
	if got := h.since(t1, 0)["node2"]; len(got) != 2 || got[1].Bytes != 1000 || got[1].Seconds != 0 {
		t.Fatalf("second step: %+v, want a second point of 1000 bytes, 0 s", got)
	}
	if got := h.since(t1, t1.UnixMilli())["node2"]; len(got) != 1 || got[0].At != t1.UnixMilli() {
		t.Fatalf("since the second step: %+v, want only its point", got)
	}
	if got := h.since(t0.Add(lagWindow+500*time.Millisecond), 0)["node2"]; len(got) != 1 || got[0].At != t1.UnixMilli() {
		t.Fatalf("an hour later: %+v, want only the point still inside the window", got)
	}

	// No primary observed running: nothing can be judged, nothing recorded.
	st, obs = lagCluster(t1.Add(time.Second), 9000, 0)
	obs["node1"] = memberView{reachable: false}
	h.sample(t1.Add(time.Second), st, obs)
	if got := h.since(t1, 0)["node2"]; len(got) != 2 {
		t.Fatalf("sampled without a primary: %+v", got)
	}
	// A member removed from the cluster is forgotten.
	st, obs = lagCluster(t1.Add(2*time.Second), 9000, 0)
	delete(st.Members, "node2")
	h.sample(t1.Add(2*time.Second), st, obs)
	if got := h.since(t1, 0); len(got) != 0 {
		t.Fatalf("after node2 was removed: %+v", got)
	}
}

// A standby with the default health interval of 250 ms for well over an
// hour holds one point a second, at most lagPoints.
func TestLagHistoryBoundedAtDefaultInterval(t *testing.T) {
	var h lagHistory
	t0 := time.Unix(1_800_000_000, 0)
	end := t0.Add(lagWindow + 10*time.Minute)
	for now := t0; now.Before(end); now = now.Add(DefaultHealthInterval) {
		st, obs := lagCluster(now, 4000, time.Second)
		h.sample(now, st, obs)
	}
	h.mu.Lock()
	n := h.members["node2"].len()
	h.mu.Unlock()
	if n != lagPoints {
		t.Fatalf("%d points kept, want %d", n, lagPoints)
	}
	if got := h.since(end, 0)["node2"]; len(got) > lagPoints || len(got) < lagPoints-1 {
		t.Fatalf("since: %d points, want about %d (the last hour)", len(got), lagPoints)
	}
}

package agent

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The fence loop sleeps until its answer can change (fenceLoop): the end
// of the lease, or an event of the data directory. These are its
// decisions in each case an idle node is in; a loop that went back to a
// short tick returns fencePoll in all of them.
func TestFenceSleepsUntilItsAnswerCanChange(t *testing.T) {
	a, _ := restAgent(t)
	ctx := context.Background()
	st := a.node.State()
	pgdata := a.cfg.Postgres.DataDir
	f := fence{a: a}
	defer f.closeWatch()

	// The committed primary with a lease: until the lease ends.
	a.lease.renewed(st.Epoch, time.Now(), 300*time.Millisecond)
	if wait := f.pass(ctx, 0); wait <= fencePoll || wait > 300*time.Millisecond {
		t.Fatalf("a primary holding a lease for 300ms sleeps %s, want until its end", wait)
	}

	// No data directory (a clone to come): nothing to watch, so it polls.
	if _, err := os.Stat(pgdata); !os.IsNotExist(err) {
		t.Fatalf("data directory %s: %v, want none yet", pgdata, err)
	}
	a.cfg.Name = "node2" // the committed state names node1: not the primary here
	// A lease of its own still holds (a restart beside a server that
	// lagged the state): until it ends.
	if wait := f.pass(ctx, 0); wait <= fencePoll || wait > 300*time.Millisecond {
		t.Fatalf("a member whose last lease still holds sleeps %s, want until its end", wait)
	}
	a.lease.renewed(st.Epoch+1, time.Now().Add(-time.Hour), 0) // long over
	if wait := f.pass(ctx, 0); wait != fencePoll {
		t.Fatalf("with no data directory to watch the fence sleeps %s, want %s", wait, fencePoll)
	}

	// A standby: asleep until its data directory changes.
	if err := os.MkdirAll(pgdata, 0o700); err != nil {
		t.Fatal(err)
	}
	signal := filepath.Join(pgdata, "standby.signal")
	if err := os.WriteFile(signal, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if wait := f.pass(ctx, 0); wait != fenceIdle {
		t.Fatalf("a standby's fence sleeps %s, want %s (until an event)", wait, fenceIdle)
	}
	drain(f.dirChanged())
	// A promotion removes standby.signal before the server accepts a write:
	// that is the event that wakes the fence.
	if err := os.Remove(signal); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.dirChanged():
	case <-time.After(5 * time.Second):
		t.Fatal("removing standby.signal did not wake the fence")
	}
	// Not running (no postmaster.pid): asleep until a start writes it.
	if wait := f.pass(ctx, 0); wait != fenceIdle {
		t.Fatalf("the fence of a stopped server sleeps %s, want %s", wait, fenceIdle)
	}
	drain(f.dirChanged())
	if err := os.WriteFile(filepath.Join(pgdata, "postmaster.pid"), []byte("0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.dirChanged():
	case <-time.After(5 * time.Second):
		t.Fatal("writing postmaster.pid did not wake the fence")
	}

	// A data directory replaced (a clone moves the old one aside): the
	// next pass watches the new one.
	if err := os.Rename(pgdata, pgdata+".old"); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(pgdata, 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(pgdata, "standby.signal"), nil, 0o600)
	deadline := time.Now().Add(5 * time.Second)
	for f.dir != nil && !f.dir.Gone() {
		if time.Now().After(deadline) {
			t.Fatal("the watch of the data directory moved aside did not end")
		}
		<-f.dirChanged()
	}
	if wait := f.pass(ctx, 0); wait != fenceIdle {
		t.Fatalf("after the data directory was replaced the fence sleeps %s, want %s", wait, fenceIdle)
	}
	drain(f.dirChanged())
	if err := os.Remove(filepath.Join(pgdata, "standby.signal")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.dirChanged():
	case <-time.After(5 * time.Second):
		t.Fatal("the new data directory is not watched")
	}
}

func drain(ch <-chan struct{}) {
	select {
	case <-ch:
	default:
	}
}

// The front loop sleeps until the router's backends change by themselves:
// a standby whose agent stays silent turns stale, a drain ends.
func TestFrontSleepsUntilTheTopologyChanges(t *testing.T) {
	a, _ := restAgent(t)
	now := time.Now()
	stale := a.timing().FenceTimeout
	a.front.mu.Lock()
	defer a.front.mu.Unlock()
	if next := a.nextTopologyChangeLocked(); next.Sub(now) < frontIdle-time.Second/10 {
		t.Fatalf("with nothing to expire the front wakes in %s, want the safety net %s", next.Sub(now), frontIdle)
	}
	seen := now.Add(-stale / 2)
	a.obs.set("node2", memberView{reachable: true, lastSeen: seen})
	a.obs.set("node3", memberView{reachable: true, lastSeen: now})
	a.obs.set("node4", memberView{reachable: false, lastSeen: now.Add(-stale / 4)}) // not a backend already
	if next, want := a.nextTopologyChangeLocked(), seen.Add(stale); next.Before(want) || next.After(want.Add(10*time.Millisecond)) {
		t.Fatalf("the front wakes %s after the oldest standby's observation, want when it turns stale (%s)", next.Sub(seen), stale)
	}
	a.front.drained = map[string]time.Time{"node3": now.Add(stale / 4)}
	if next, want := a.nextTopologyChangeLocked(), now.Add(stale/4); next.Before(want) || next.After(want.Add(10*time.Millisecond)) {
		t.Fatalf("the front wakes %s from now, want when the drain ends (%s)", next.Sub(now), stale/4)
	}
	// The primary is healthy until evidence says otherwise: its silence
	// changes nothing by itself.
	a.front.drained = nil
	a.obs.forget(nil)
	a.obs.set(a.node.State().Primary, memberView{reachable: true, lastSeen: seen})
	if next := a.nextTopologyChangeLocked(); next.Sub(now) < frontIdle-time.Second/10 {
		t.Fatalf("the primary's last observation wakes the front in %s", next.Sub(now))
	}
}

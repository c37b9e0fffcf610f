package agent

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/internal/wait"
)

// A standby just named the primary holds no lease for its new epoch until
// the leader grants it a start permit, and its reconcile pass is what asks
// for that permit. The pass must therefore not wait for the lease: it waits
// only while the member hears nothing from the leader. Before, inSync
// refused while the lease was missing, the pass gave up, and the promotion
// waited for the lease loop's renewal and then a whole loop_interval
// (0.25-0.5 s of every failover).
func TestNamedPrimaryActsBeforeItsLease(t *testing.T) {
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	leader, err := consensus.Open(consensus.Config{ID: "node1", BindAddr: "127.0.0.1:0", Dir: filepath.Join(dir, "raft1"), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { leader.Close() })
	follower, err := consensus.Open(consensus.Config{ID: "node2", BindAddr: "127.0.0.1:0", Dir: filepath.Join(dir, "raft2"), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { follower.Close() })
	if err := leader.Bootstrap([]consensus.Server{{ID: "node1", Addr: leader.Addr()}, {ID: "node2", Addr: follower.Addr()}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	wait.For(t, 10*time.Second, "node1 to lead", func() (bool, string) { return leader.IsLeader(), follower.RaftState() })
	for _, c := range []consensus.Command{
		consensus.UpsertMember(consensus.Member{Name: "node1", RaftAddr: leader.Addr(), APIURL: "http://127.0.0.1:1", PGHost: "127.0.0.1", PGPort: 1}),
		consensus.UpsertMember(consensus.Member{Name: "node2", RaftAddr: follower.Addr(), APIURL: "http://127.0.0.1:2", PGHost: "127.0.0.1", PGPort: 2}),
		consensus.InitCluster("insync", "node2"),
	} {
		if err := leader.Apply(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	wait.For(t, 10*time.Second, "node2 to apply the state that names it the primary", func() (bool, string) {
		return follower.State().Primary == "node2", "primary " + follower.State().Primary
	})

	a := unstartedAgent(t, dir, "node2")
	a.node = follower
	a.nodeRef.Store(follower)
	a.started = time.Now().Add(-time.Hour) // past the start's grace: no lease at all
	a.syncedAt = time.Now()                // in step with the leader's log a moment ago
	if !a.fenced() {
		t.Fatal("node2 holds a lease it was never granted")
	}
	if a.outOfContact(time.Now()) {
		t.Fatalf("node2 hears from the leader (last contact %v) but counts as out of contact", follower.LastContact())
	}
	if !a.inSync(ctx) {
		t.Error("inSync refuses the pass that would ask for the start permit: the promotion waits for the lease loop and a loop_interval")
	}
}

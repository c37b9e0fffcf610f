package netcluster_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/integration/netcluster"
	"github.com/pgha/pgha/integration/netcluster/chaos"
)

// TestChaosShort runs the short fault campaign (every kind of fault once,
// held 2s) through the library, as `go run ./integration/cmd/chaos -short`
// does, and fails on any failed check: a lost acknowledged write, a member
// diverging, two servers acknowledging commits at once, two writable
// primaries or two VIP holders at once, a diverged standby serving, a
// fault the cluster did not recover from, or a final state other than one
// primary and two streaming standbys.
func TestChaosShort(t *testing.T) {
	opts := options()
	opts.DataFS = true // the full-disk faults
	c := netcluster.New(t, opts)
	seed := time.Now().UnixNano()
	t.Logf("seed %d (rerun: go run ./integration/cmd/chaos -short -seed %d)", seed, seed)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	r, err := chaos.Run(ctx, c, chaos.Options{Short: true, Seed: seed, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	r.Print(&b)
	t.Log("\n" + b.String())
	if len(r.Faults) != len(chaos.Kinds) {
		t.Errorf("%d faults injected, want one of each of the %d kinds", len(r.Faults), len(chaos.Kinds))
	}
	if r.Acks == 0 {
		t.Error("no write was acknowledged: the checks proved nothing")
	}
	for _, p := range r.Problems {
		t.Error(p)
	}
}

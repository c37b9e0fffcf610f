package recovery_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/internal/wait"
	"github.com/pgha/pgha/postgres"
	"github.com/pgha/pgha/postgres/pgtest"
)

// A standby promoted after ReserveTimeline takes the committed timeline,
// not the next free one: two primaries never share a timeline ID even when
// the history file of a short-lived timeline never reached this server
// (issue 17, item 2: both chose 27, and pg_rewind saw nothing to do).
func TestPromoteTakesReservedTimeline(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	passFile := writeRolesPassFile(t)
	_, b := primaryAndStandby(t, ctx, passFile)

	wal := filepath.Join(b.Config().DataDir, "pg_wal")
	// Timeline 3 was taken elsewhere and its history reached b: reserving
	// it is refused.
	if err := postgres.WriteFileAs(filepath.Join(wal, "00000003.history"), []byte("1\t0/3000000\tno recovery target specified\n2\t0/4000000\tno recovery target specified\n"), 0o600, pgtest.RunAs()); err != nil {
		t.Fatal(err)
	}
	if err := b.ReserveTimeline(1, 3); err == nil || !strings.Contains(err.Error(), "another server took") {
		t.Errorf("reserving a timeline whose history exists: %v, want a refusal", err)
	}
	// The committed next timeline is 5: 2 and 4 get placeholders, 3 stays.
	if err := b.ReserveTimeline(1, 5); err != nil {
		t.Fatal(err)
	}
	for _, tli := range []string{"00000002.history", "00000004.history"} {
		if _, err := os.Stat(filepath.Join(wal, tli)); err != nil {
			t.Errorf("placeholder %s: %v", tli, err)
		}
	}
	if err := b.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	if st := b.Status(ctx); !st.Running || st.InRecovery || st.Timeline != 5 {
		t.Fatalf("after the promotion: running %v, in recovery %v, timeline %d; want the reserved timeline 5", st.Running, st.InRecovery, st.Timeline)
	}
}

// A standby whose primary has stopped sleeps wal_retrieve_retry_interval
// between its tries, and one that notices the promote request while it
// streams sleeps that out before it ends recovery. Promote wakes it: with a
// ten-second interval, the promotion still takes a fraction of a second
// (before, it took up to the interval: 0.2-0.25 s of every failover at
// pgha's 250 ms).
func TestPromoteDoesNotWaitOutTheRetryInterval(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	passFile := writeRolesPassFile(t)
	a, b := primaryAndStandby(t, ctx, passFile, func(c *postgres.Config) {
		c.Parameters = map[string]string{"wal_retrieve_retry_interval": "10s"}
	})
	if err := a.Stop(ctx, postgres.StopFast); err != nil {
		t.Fatal(err)
	}
	// The standby has lost its upstream and sleeps between tries.
	wait.For(t, 30*time.Second, "the standby to lose its upstream", func() (bool, string) {
		st := b.Status(ctx)
		return st.Running && st.InRecovery && !st.Streaming, "standby status " + mustJSON(st)
	})
	start := time.Now()
	if err := b.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the promotion took %s: it waited out wal_retrieve_retry_interval (10s)", took)
	}
	if st := b.Status(ctx); !st.Running || st.InRecovery {
		t.Fatalf("after the promotion: running %v, in recovery %v", st.Running, st.InRecovery)
	}
}

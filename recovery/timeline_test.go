package recovery_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

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

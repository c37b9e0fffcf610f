package recovery_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgha/pgha/postgres"
)

func insertLSN(t *testing.T, ctx context.Context, inst *postgres.Instance) postgres.LSN {
	t.Helper()
	var s string
	if err := inst.Query(ctx, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&s)
	}); err != nil {
		t.Fatal(err)
	}
	lsn, err := postgres.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

// TestStoppedWAL: the WAL end of stopped data directories, as the agents
// compare them when they adopt existing data. A primary that crashed
// reports WAL past its last checkpoint (where pg_control stops), up to its
// last commit; a standby that stopped behind it reports less; promoted, the
// standby reports its new timeline and the history that shows the primary
// went past the fork.
func TestStoppedWAL(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	primary, standby, _ := standbyWithMarker(t, ctx)
	if err := standby.Stop(ctx, postgres.StopFast); err != nil {
		t.Fatal(err)
	}

	sw, err := standby.StoppedWAL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sw.End.Timeline != 1 || sw.End.LSN == 0 || sw.History != nil || sw.SystemID == 0 || sw.Running {
		t.Errorf("stopped standby: %+v", sw)
	}

	if err := primary.Exec(ctx, "INSERT INTO t SELECT 'more ' || g FROM generate_series(1, 2000) g"); err != nil {
		t.Fatal(err)
	}
	written := insertLSN(t, ctx, primary)
	checkpoint, err := primary.CheckpointLSN(ctx)
	if err != nil {
		t.Fatal(err)
	}
	killPostmaster(t, primary)
	pw, err := primary.StoppedWAL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if pw.End.Timeline != 1 || pw.End.LSN < written || pw.End.LSN <= checkpoint || pw.End.LSN <= sw.End.LSN || pw.SystemID != sw.SystemID {
		t.Errorf("crashed primary: %+v; want timeline 1, at or past %s (its last insert), past its checkpoint %s and the standby's %s", pw, written, checkpoint, sw.End)
	}
	t.Logf("standby %s; primary wrote up to %s, checkpoint %s, WAL end %s", sw.End, written, checkpoint, pw.End)
	ends, err := primary.StoppedWALEnds(ctx)
	if err != nil || len(ends) == 0 || ends[0].LSN >= pw.End.LSN {
		t.Errorf("pg_control of the crashed primary says %v (%v): it should stop before the real end %s, or this test proves nothing", ends, err, pw.End)
	}

	// Promote the standby (its primary is gone) and stop it cleanly.
	if err := standby.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	if err := standby.Exec(ctx, "INSERT INTO t VALUES ('on timeline 2')"); err != nil {
		t.Fatal(err)
	}
	if err := standby.Stop(ctx, postgres.StopFast); err != nil {
		t.Fatal(err)
	}
	nw, err := standby.StoppedWAL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if nw.End.Timeline != 2 || len(nw.History) != 1 || nw.History[0].Timeline != 1 || nw.History[0].Switch < sw.End.LSN || nw.End.LSN <= nw.History[0].Switch {
		t.Fatalf("promoted standby: %+v; want timeline 2 leaving timeline 1 at or after %s", nw, sw.End)
	}
	if why := postgres.ForkedOff(nw.End.Timeline, nw.History, pw.End); why == "" {
		t.Errorf("the crashed primary's WAL %s is not past the fork of %+v", pw.End, nw.History)
	}
}

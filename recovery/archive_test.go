package recovery_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgha/pgha/internal/wait"
	"github.com/pgha/pgha/postgres"
	"github.com/pgha/pgha/postgres/pgtest"
	"github.com/pgha/pgha/recovery"
)

// seedsArchive is the seeds' archive layout in dir: cp "%p" archivedir/%f,
// and back.
func seedsArchive(dir string) postgres.Archive {
	return postgres.Archive{
		Mode:           "on",
		Command:        fmt.Sprintf(`test ! -f "%s/%%f" && cp "%%p" "%s/%%f"`, dir, dir),
		RestoreCommand: fmt.Sprintf(`cp "%s/%%f" "%%p"`, dir),
	}
}

// TestRewindFromArchive: a former primary whose WAL from before the fork
// is no longer in pg_wal (recycled while it was down, say) cannot be
// rewound by pg_rewind alone, which leaves it unchanged and says so
// (ErrRewindImpossible: the agent would re-clone it); with
// RestoreTargetWAL, pg_rewind fetches that WAL from the archive through
// the target's restore_command, and the node follows the new primary.
func TestRewindFromArchive(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	passFile := writeRolesPassFile(t)
	archive := filepath.Join(pgtest.TempDir(t), "archivedir")
	if err := postgres.MkdirAs(archive, 0o700, pgtest.RunAs()); err != nil {
		t.Fatal(err)
	}
	withArchive := func(c *postgres.Config) { c.Archive = seedsArchive(archive) }

	// 1. A primary archiving, with B streaming from it.
	acfg := pgtest.Config(t, "a")
	withArchive(&acfg)
	a := pgtest.StartPrimaryWith(t, acfg)
	if err := a.Exec(ctx, "CREATE TABLE t (v text); INSERT INTO t VALUES ('common')"); err != nil {
		t.Fatal(err)
	}
	if err := a.EnsureSlots(ctx, []string{"pgha_b"}); err != nil {
		t.Fatal(err)
	}
	bcfg := pgtest.Config(t, "b")
	withArchive(&bcfg)
	b := pgtest.NewInstanceWith(t, bcfg)
	if err := recovery.Clone(ctx, b.Config().BinDir, b.Config().DataDir, source(a, passFile, "pgha_b"), pgtest.RunAs(), nil); err != nil {
		t.Fatal(err)
	}
	follow(t, ctx, b, a, passFile, "pgha_b")
	waitRow(t, ctx, b, "common")

	// 2. The last common checkpoint, in a segment that then fills.
	if err := a.Exec(ctx, "CHECKPOINT"); err != nil {
		t.Fatal(err)
	}
	if err := b.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Configure(nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Exec(ctx, "INSERT INTO t VALUES ('on b')"); err != nil {
		t.Fatal(err)
	}
	// A diverges over several segments, which it archives.
	for i := 0; i < 3; i++ {
		if err := a.Exec(ctx, fmt.Sprintf("INSERT INTO t VALUES ('diverged on a %d'); SELECT pg_switch_wal()", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Stop(ctx, postgres.StopFast); err != nil {
		t.Fatal(err)
	}
	// 3. What A archived leaves its pg_wal: the WAL from the common
	// checkpoint on is only in the archive now.
	archived, err := os.ReadDir(archive)
	if err != nil {
		t.Fatal(err)
	}
	removed := 0
	for _, e := range archived {
		p := filepath.Join(a.Config().DataDir, "pg_wal", e.Name())
		if strings.HasPrefix(e.Name(), "00000001") && !strings.Contains(e.Name(), ".") {
			if err := os.Remove(p); err == nil {
				removed++
			}
		}
	}
	if removed < 3 {
		t.Fatalf("only %d archived segments removed from A's pg_wal (archive: %d files)", removed, len(archived))
	}

	// 4. pg_rewind alone cannot, and changes nothing.
	err = recovery.Rewind(ctx, a.Config().BinDir, a.Config().DataDir, rewindSource(b, passFile), pgtest.RunAs(), nil)
	if !errors.Is(err, recovery.ErrRewindImpossible) {
		t.Fatalf("rewind without the archive: %v, want ErrRewindImpossible", err)
	}
	if recovery.RewindIncomplete(a.Config().DataDir) {
		t.Fatal("a rewind that could not start left its marker: the node would be re-cloned")
	}

	// 5. With the archive it can.
	src := rewindSource(b, passFile)
	src.RestoreTargetWAL = true
	var lines []string
	if err := recovery.Rewind(ctx, a.Config().BinDir, a.Config().DataDir, src, pgtest.RunAs(), func(l string) { lines = append(lines, l) }); err != nil {
		t.Fatalf("rewind with --restore-target-wal: %v", err)
	}
	if out := strings.Join(lines, "\n"); !strings.Contains(out, "servers diverged at WAL location") || !strings.Contains(out, "Done!") {
		t.Errorf("pg_rewind did not rewind:\n%s", out)
	}
	follow(t, ctx, a, b, passFile, "pgha_a")
	if err := b.Exec(ctx, "INSERT INTO t VALUES ('after rewind')"); err != nil {
		t.Fatal(err)
	}
	waitRow(t, ctx, a, "after rewind")
	if got, want := strings.Join(rows(t, ctx, a), ","), "after rewind,common,on b"; got != want {
		t.Errorf("A's rows after the rewind: %s, want %s", got, want)
	}
	// B, promoted with archive_mode on, archived its timeline's history.
	wait.For(t, 30*time.Second, "timeline 2's history file in the archive", func() (bool, string) {
		_, err := os.Stat(filepath.Join(archive, "00000002.history"))
		return err == nil, fmt.Sprint(err)
	})
	var mode string
	if err := a.Query(ctx, func(c *pgx.Conn) error { return c.QueryRow(ctx, "SHOW archive_mode").Scan(&mode) }); err != nil || mode != "on" {
		t.Errorf("archive_mode on the rewound standby: %q %v", mode, err)
	}
}

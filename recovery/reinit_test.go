package recovery_test

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgha/pgha/postgres"
	"github.com/pgha/pgha/postgres/pgtest"
	"github.com/pgha/pgha/recovery"
)

// standbyWithMarker starts a primary and a streaming standby (slot
// pgha_s) whose data dir holds a marker file and an own line in
// postgresql.conf, then stops the standby.
func standbyWithMarker(t *testing.T, ctx context.Context) (primary, standby *postgres.Instance, passFile string) {
	t.Helper()
	passFile = writeRolesPassFile(t)
	primary = pgtest.StartPrimary(t)
	if err := primary.Exec(ctx, "CREATE TABLE t (v text); INSERT INTO t VALUES ('common')"); err != nil {
		t.Fatal(err)
	}
	if err := primary.EnsureSlots(ctx, []string{"pgha_s"}); err != nil {
		t.Fatal(err)
	}
	standby = pgtest.NewInstanceWith(t, pgtest.Config(t, "s"))
	if err := recovery.Clone(ctx, standby.Config().BinDir, standby.Config().DataDir, source(primary, passFile, "pgha_s"), pgtest.RunAs(), nil); err != nil {
		t.Fatal(err)
	}
	follow(t, ctx, standby, primary, passFile, "pgha_s")
	waitRow(t, ctx, standby, "common")
	if err := os.WriteFile(markerPath(standby), []byte("old data"), 0o600); err != nil {
		t.Fatal(err)
	}
	appendLine(t, filepath.Join(standby.Config().DataDir, "postgresql.conf"), "# the standby's own line")
	return primary, standby, passFile
}

func markerPath(inst *postgres.Instance) string {
	return filepath.Join(inst.Config().DataDir, "pgha-test-marker")
}

// noLeftovers checks that neither the clone's temporary directory nor the
// old data directory is left beside dir.
func noLeftovers(t *testing.T, dir string) {
	t.Helper()
	for _, suffix := range []string{recovery.TmpSuffix, recovery.OldSuffix, recovery.RewindMarkerSuffix} {
		if _, err := os.Stat(dir + suffix); !os.IsNotExist(err) {
			t.Errorf("%s left behind: %v", dir+suffix, err)
		}
	}
}

func hasMarker(t *testing.T, inst *postgres.Instance) bool {
	t.Helper()
	b, err := os.ReadFile(markerPath(inst))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return err == nil && string(b) == "old data"
}

// TestReinit: refused while the standby runs; after it stopped, its data
// dir is replaced by a fresh clone that keeps its own postgresql.conf and
// streams again.
func TestReinit(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	primary, standby, passFile := standbyWithMarker(t, ctx)
	dir := standby.Config().DataDir
	reinit := func(src recovery.Source) error {
		return recovery.Reinit(ctx, standby.Config().BinDir, dir, src, pgtest.RunAs(), nil)
	}

	err := reinit(source(primary, passFile, "pgha_s"))
	if err == nil || !strings.Contains(err.Error(), "running") {
		t.Errorf("Reinit of a running standby: %v", err)
	}
	if !hasMarker(t, standby) {
		t.Error("marker gone after a refused Reinit")
	}
	noLeftovers(t, dir)

	if err := standby.Stop(ctx, postgres.StopFast); err != nil {
		t.Fatal(err)
	}
	// A rewind marker left by an interrupted pg_rewind goes with the old data.
	if err := os.WriteFile(dir+recovery.RewindMarkerSuffix, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := primary.Exec(ctx, "INSERT INTO t VALUES ('before reinit')"); err != nil {
		t.Fatal(err)
	}
	var lines []string
	if err := recovery.Reinit(ctx, standby.Config().BinDir, dir, source(primary, passFile, "pgha_s"), pgtest.RunAs(),
		func(l string) { lines = append(lines, l) }); err != nil {
		t.Fatal(err)
	}
	if len(lines) == 0 {
		t.Error("no progress lines")
	}
	if hasMarker(t, standby) {
		t.Error("marker still there: the data dir was not replaced")
	}
	noLeftovers(t, dir)
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode after Reinit: %v %v", fi, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "standby.signal")); err != nil {
		t.Errorf("no standby.signal after Reinit: %v", err)
	}
	conf, err := os.ReadFile(filepath.Join(dir, "postgresql.conf"))
	if err != nil || !strings.Contains(string(conf), "the standby's own line") {
		t.Errorf("the standby's postgresql.conf was not kept (%v):\n%s", err, conf)
	}

	follow(t, ctx, standby, primary, passFile, "pgha_s")
	waitRow(t, ctx, standby, "before reinit")
	if err := primary.Exec(ctx, "INSERT INTO t VALUES ('after reinit')"); err != nil {
		t.Fatal(err)
	}
	waitRow(t, ctx, standby, "after reinit")
}

// TestReinitFailureKeepsData: a clone that fails (wrong password, missing
// slot) leaves the old data dir as it was and nothing beside it.
func TestReinitFailureKeepsData(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	primary, standby, passFile := standbyWithMarker(t, ctx)
	if err := standby.Stop(ctx, postgres.StopFast); err != nil {
		t.Fatal(err)
	}
	dir := standby.Config().DataDir
	badPass := filepath.Join(pgtest.TempDir(t), "pgpass")
	if err := postgres.WritePassFile(badPass, pgtest.RunAs(), postgres.PassEntry{Host: "*", User: pgtest.ReplicationUser, Password: "wrong"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, want string
		src        recovery.Source
	}{
		{"wrong password", "password authentication failed", source(primary, badPass, "pgha_s")},
		{"missing slot", "pgha_absent", source(primary, passFile, "pgha_absent")},
	} {
		err := recovery.Reinit(ctx, standby.Config().BinDir, dir, tc.src, pgtest.RunAs(), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Reinit: %v", tc.name, err)
		}
		if !hasMarker(t, standby) {
			t.Errorf("%s: the old data dir was changed", tc.name)
		}
		noLeftovers(t, dir)
	}
	// The old data dir still works.
	follow(t, ctx, standby, primary, passFile, "pgha_s")
}

// TestReinitInterrupted: what a crash between Reinit's two renames or
// before its cleanup leaves is dealt with by the next call.
func TestReinitInterrupted(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	primary, standby, passFile := standbyWithMarker(t, ctx)
	if err := standby.Stop(ctx, postgres.StopFast); err != nil {
		t.Fatal(err)
	}
	dir := standby.Config().DataDir
	old := dir + recovery.OldSuffix
	reinit := func(src recovery.Source) error {
		return recovery.Reinit(ctx, standby.Config().BinDir, dir, src, pgtest.RunAs(), nil)
	}

	// Crash between the renames: no data dir, the old one aside, a stale clone.
	if err := os.Rename(dir, old); err != nil {
		t.Fatal(err)
	}
	if err := postgres.MkdirAs(dir+recovery.TmpSuffix, 0o700, pgtest.RunAs()); err != nil {
		t.Fatal(err)
	}
	// A failing clone shows that the old data went back first.
	err := reinit(source(primary, passFile, "pgha_absent"))
	if err == nil || !strings.Contains(err.Error(), "pgha_absent") {
		t.Errorf("Reinit with a missing slot: %v", err)
	}
	if !hasMarker(t, standby) {
		t.Fatal("the old data dir was not put back")
	}
	noLeftovers(t, dir)

	// Crash before the cleanup: a copy of the same system beside the new data dir.
	if err := copyDir(dir, old); err != nil {
		t.Fatal(err)
	}
	if err := reinit(source(primary, passFile, "pgha_s")); err != nil {
		t.Fatal(err)
	}
	if hasMarker(t, standby) {
		t.Error("data dir not replaced")
	}
	noLeftovers(t, dir)

	// Beside it a directory of another system: left for the operator.
	if err := os.MkdirAll(filepath.Join(old, "global"), 0o700); err != nil {
		t.Fatal(err)
	}
	control := make([]byte, 8192)
	binary.NativeEndian.PutUint64(control, 42)
	if err := os.WriteFile(filepath.Join(old, "global", "pg_control"), control, 0o600); err != nil {
		t.Fatal(err)
	}
	err = reinit(source(primary, passFile, "pgha_s"))
	if err == nil || !strings.Contains(err.Error(), "not the same system") {
		t.Errorf("Reinit beside another system's leftover: %v", err)
	}
	if _, err := os.Stat(filepath.Join(old, "global", "pg_control")); err != nil {
		t.Errorf("the other system's leftover was touched: %v", err)
	}
	if err := os.RemoveAll(old); err != nil {
		t.Fatal(err)
	}
	follow(t, ctx, standby, primary, passFile, "pgha_s")
}

// TestReinitRefusesNonDataDir: a non-empty directory that is not a data
// directory is never replaced.
func TestReinitRefusesNonDataDir(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	dir := filepath.Join(pgtest.TempDir(t), "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	keep := filepath.Join(dir, "precious")
	if err := os.WriteFile(keep, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := recovery.Reinit(ctx, pgtest.BinDir(t), dir, recovery.Source{Host: "127.0.0.1", Port: 1, User: "x"}, pgtest.RunAs(), nil)
	if err == nil || !strings.Contains(err.Error(), "not a PostgreSQL data directory") {
		t.Errorf("Reinit of a non-data dir: %v", err)
	}
	if b, err := os.ReadFile(keep); err != nil || string(b) != "keep me" {
		t.Errorf("file changed: %q %v", b, err)
	}
	noLeftovers(t, dir)
}

// copyDir copies the regular files and directories under from to to,
// keeping modes and owners.
func copyDir(from, to string) error {
	return filepath.Walk(from, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, path)
		dst := filepath.Join(to, rel)
		switch {
		case fi.IsDir():
			if err := os.Mkdir(dst, fi.Mode().Perm()); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if err := os.WriteFile(dst, b, fi.Mode().Perm()); err != nil {
				return err
			}
		default:
			return nil
		}
		return postgres.ChownTo(dst, pgtest.RunAs())
	})
}

// TestReinitKeepsReplaced: ReinitKeeping keeps the replaced data directory
// aside beside the new one (the old data, marker and all), at most Max of
// them, the oldest removed first and reported; a replaced copy that an
// interrupted reinit left is kept the same way.
func TestReinitKeepsReplaced(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	primary, standby, passFile := standbyWithMarker(t, ctx)
	if err := standby.Stop(ctx, postgres.StopFast); err != nil {
		t.Fatal(err)
	}
	dir := standby.Config().DataDir
	reinit := func(max int) recovery.Kept {
		t.Helper()
		res, err := recovery.ReinitKeeping(ctx, standby.Config().BinDir, dir, source(primary, passFile, "pgha_s"), pgtest.RunAs(), recovery.Keep{Max: max}, nil)
		if err != nil {
			t.Fatal(err)
		}
		noLeftovers(t, dir)
		if hasMarker(t, standby) {
			t.Fatal("data dir not replaced")
		}
		copies, err := recovery.KeptCopies(dir)
		if err != nil || len(copies) != max || copies[max-1] != res.Path {
			t.Fatalf("kept copies %v (%v); want %d, the newest %s", copies, err, max, res.Path)
		}
		return res
	}

	first := reinit(1)
	if !strings.HasPrefix(first.Path, dir+recovery.KeptInfix) || len(first.Removed) != 0 {
		t.Errorf("first reinit: %+v", first)
	}
	if b, err := os.ReadFile(filepath.Join(first.Path, "pgha-test-marker")); err != nil || string(b) != "old data" {
		t.Errorf("the kept copy does not hold the old data: %q %v", b, err)
	}

	second := reinit(1)
	if second.Path == first.Path || len(second.Removed) != 1 || second.Removed[0] != first.Path {
		t.Errorf("second reinit: %+v; want %s removed (Max 1)", second, first.Path)
	}

	// Crash before the cleanup: the copy that reinit replaced is kept too,
	// as older than the data directory this one replaces.
	if err := copyDir(dir, dir+recovery.OldSuffix); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir+recovery.OldSuffix, "pgha-test-marker"), []byte("interrupted"), 0o600); err != nil {
		t.Fatal(err)
	}
	reinit(2)
	copies, _ := recovery.KeptCopies(dir)
	if b, err := os.ReadFile(filepath.Join(copies[0], "pgha-test-marker")); err != nil || string(b) != "interrupted" {
		t.Errorf("the copy an interrupted reinit replaced was not kept: %q %v", b, err)
	}
	follow(t, ctx, standby, primary, passFile, "pgha_s")
}

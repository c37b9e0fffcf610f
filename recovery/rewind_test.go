package recovery_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgha/pgha/internal/wait"
	"github.com/pgha/pgha/postgres"
	"github.com/pgha/pgha/postgres/pgtest"
	"github.com/pgha/pgha/recovery"
)

// writeRolesPassFile writes a password file with the replication and the
// rewind role, readable by the PostgreSQL user.
func writeRolesPassFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(pgtest.TempDir(t), "pgpass")
	err := postgres.WritePassFile(path, pgtest.RunAs(),
		postgres.PassEntry{Host: "*", User: pgtest.ReplicationUser, Password: pgtest.ReplicationPassword},
		postgres.PassEntry{Host: "*", User: pgtest.RewindUser, Password: pgtest.RewindPassword},
	)
	if err != nil {
		t.Fatal(err)
	}
	return path
}

func rewindSource(primary *postgres.Instance, passFile string) recovery.RewindSource {
	return recovery.RewindSource{
		Host: "127.0.0.1", Port: primary.Config().Port,
		User: pgtest.RewindUser, PassFile: passFile,
	}
}

// follow configures inst as a standby of primary through slot, starts it
// and waits until it streams.
func follow(t *testing.T, ctx context.Context, inst, primary *postgres.Instance, passFile, slot string) {
	t.Helper()
	if err := primary.EnsureSlots(ctx, []string{slot}); err != nil {
		t.Fatal(err)
	}
	if _, err := inst.Configure(&postgres.Standby{
		PrimaryHost: "127.0.0.1", PrimaryPort: primary.Config().Port,
		User: pgtest.ReplicationUser, PassFile: passFile,
		SlotName: slot, ApplicationName: slot,
	}, nil); err != nil {
		t.Fatal(err)
	}
	if err := inst.Start(ctx); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 30*time.Second, "the rewound standby to stream from the primary", func() (bool, string) {
		st := inst.Status(ctx)
		return st.Running && st.InRecovery && st.Streaming && st.UpstreamPort == primary.Config().Port,
			"standby status " + mustJSON(st)
	})
}

// primaryAndStandby starts a primary "a" holding table t with the row
// "common", and a standby "b" cloned from it through slot pgha_b, streaming
// and holding that row.
func primaryAndStandby(t *testing.T, ctx context.Context, passFile string, bConfig ...func(*postgres.Config)) (a, b *postgres.Instance) {
	t.Helper()
	a = pgtest.StartPrimaryWith(t, pgtest.Config(t, "a"))
	if err := a.Exec(ctx, "CREATE TABLE t (v text); INSERT INTO t VALUES ('common')"); err != nil {
		t.Fatal(err)
	}
	if err := a.EnsureSlots(ctx, []string{"pgha_b"}); err != nil {
		t.Fatal(err)
	}
	cfg := pgtest.Config(t, "b")
	for _, f := range bConfig {
		f(&cfg)
	}
	b = pgtest.NewInstanceWith(t, cfg)
	if err := recovery.Clone(ctx, b.Config().BinDir, b.Config().DataDir, source(a, passFile, "pgha_b"), pgtest.RunAs(), nil); err != nil {
		t.Fatal(err)
	}
	follow(t, ctx, b, a, passFile, "pgha_b")
	waitRow(t, ctx, b, "common")
	return a, b
}

// rows returns the values of table t, sorted.
func rows(t *testing.T, ctx context.Context, inst *postgres.Instance) []string {
	t.Helper()
	var vs []string
	err := inst.Query(ctx, func(c *pgx.Conn) error {
		r, err := c.Query(ctx, "SELECT v FROM t ORDER BY v")
		if err != nil {
			return err
		}
		vs, err = pgx.CollectRows(r, pgx.RowTo[string])
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return vs
}

func waitRow(t *testing.T, ctx context.Context, inst *postgres.Instance, v string) {
	t.Helper()
	wait.For(t, 30*time.Second, fmt.Sprintf("row %q", v), func() (bool, string) {
		var n int
		err := inst.Query(ctx, func(c *pgx.Conn) error {
			return c.QueryRow(ctx, "SELECT count(*) FROM t WHERE v = $1", v).Scan(&n)
		})
		return err == nil && n == 1, fmt.Sprintf("row %q not there yet: %v", v, err)
	})
}

// killPostmaster kills the postmaster with SIGKILL, as a crash would, and
// waits until it and its children are gone (so that no backend still holds
// the shared memory).
func killPostmaster(t *testing.T, inst *postgres.Instance) {
	t.Helper()
	pid, err := inst.PostmasterPID()
	if err != nil || pid == 0 {
		t.Fatalf("postmaster pid: %d %v", pid, err)
	}
	pids := append(childrenOf(pid), pid)
	inst.Close()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 30*time.Second, fmt.Sprintf("postmaster %d and its children to exit", pid), func() (bool, string) {
		for _, p := range pids {
			if alive(p) {
				return false, fmt.Sprintf("process %d still there", p)
			}
		}
		// A dead postmaster that nobody has reaped yet is a zombie whose
		// PID still answers kill(pid, 0).
		if pid, _ := inst.PostmasterPID(); pid != 0 {
			return false, fmt.Sprintf("postmaster %d not reaped yet", pid)
		}
		return true, ""
	})
}

// childrenOf lists the processes whose parent is pid.
func childrenOf(pid int) []int {
	var kids []int
	dirs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut at the last ')'.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			if p, err := strconv.Atoi(filepath.Base(filepath.Dir(d))); err == nil {
				kids = append(kids, p)
			}
		}
	}
	return kids
}

// alive: the process exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// TestRewind: B, a standby of A, is promoted; A writes on the old timeline
// and is stopped (cleanly or by a crash); Rewind makes A follow B, without
// the row only A had, and keeps A's own configuration files.
func TestRewind(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		crashed bool
	}{{"clean", false}, {"crashed", true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			passFile := writeRolesPassFile(t)

			// 1. A primary with B streaming from it.
			a, b := primaryAndStandby(t, ctx, passFile)

			// 2. B is promoted (timeline 2, no CHECKPOINT); A diverges.
			if err := b.Promote(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := b.Configure(nil, nil); err != nil {
				t.Fatal(err)
			}
			if err := b.Exec(ctx, "INSERT INTO t VALUES ('on b')"); err != nil {
				t.Fatal(err)
			}
			if err := a.Exec(ctx, "INSERT INTO t VALUES ('diverged on a'); CREATE TABLE a_only AS SELECT g FROM generate_series(1, 10000) g"); err != nil {
				t.Fatal(err)
			}
			// Lines that tell whose postgresql.conf a data dir holds.
			appendLine(t, filepath.Join(a.Config().DataDir, "postgresql.conf"), "# node a's own line")
			appendLine(t, filepath.Join(b.Config().DataDir, "postgresql.conf"), "# node b's own line")

			// 3. A goes down.
			if tc.crashed {
				killPostmaster(t, a)
				if s, err := a.ClusterState(ctx); err != nil || s != "in production" {
					t.Fatalf("A's cluster state after the kill: %q %v", s, err)
				}
			} else if err := a.Stop(ctx, postgres.StopFast); err != nil {
				t.Fatal(err)
			}

			// 4. Rewind A from B, then A follows B.
			var lines []string
			err := recovery.Rewind(ctx, a.Config().BinDir, a.Config().DataDir, rewindSource(b, passFile), pgtest.RunAs(),
				func(l string) { lines = append(lines, l) })
			if err != nil {
				t.Fatal(err)
			}
			out := strings.Join(lines, "\n")
			t.Logf("pg_rewind output:\n%s", out)
			if !strings.Contains(out, "servers diverged at WAL location") || !strings.Contains(out, "Done!") {
				t.Errorf("pg_rewind did not rewind:\n%s", out)
			}
			if tc.crashed && !strings.Contains(out, "crash recovery") {
				t.Errorf("no crash recovery for a crashed target:\n%s", out)
			}
			if recovery.RewindIncomplete(a.Config().DataDir) {
				t.Error("rewind marker left")
			}
			if _, err := os.Stat(filepath.Join(a.Config().DataDir, "standby.signal")); err != nil {
				t.Errorf("no standby.signal after Rewind: %v", err)
			}
			conf, err := os.ReadFile(filepath.Join(a.Config().DataDir, "postgresql.conf"))
			if err != nil || !strings.Contains(string(conf), "node a's own line") || strings.Contains(string(conf), "node b's own line") {
				t.Errorf("A's postgresql.conf not kept (%v):\n%s", err, conf)
			}

			follow(t, ctx, a, b, passFile, "pgha_a")
			if st := a.Status(ctx); st.Timeline != 2 {
				t.Errorf("A's timeline after the rewind: %+v", st)
			}
			if err := b.Exec(ctx, "INSERT INTO t VALUES ('after rewind')"); err != nil {
				t.Fatal(err)
			}
			waitRow(t, ctx, a, "after rewind")
			if got, want := strings.Join(rows(t, ctx, a), ","), "after rewind,common,on b"; got != want {
				t.Errorf("A's rows after the rewind: %s, want %s", got, want)
			}
			var aOnly bool
			if err := a.Query(ctx, func(c *pgx.Conn) error {
				return c.QueryRow(ctx, "SELECT to_regclass('a_only') IS NOT NULL").Scan(&aOnly)
			}); err != nil || aOnly {
				t.Errorf("table written only on A survived the rewind: %v %v", aOnly, err)
			}
		})
	}
}

func appendLine(t *testing.T, path, line string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(line + "\n"); err != nil {
		t.Fatal(err)
	}
}

// TestRewindRefuses: a different system is ErrRewindImpossible, an
// unreachable source and a running target are errors to retry, and none of
// them changes the target; a leftover rewind marker is ErrRewindImpossible.
func TestRewindRefuses(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	passFile := writeRolesPassFile(t)
	other := pgtest.StartPrimaryWith(t, pgtest.Config(t, "other"))
	target := pgtest.StartPrimaryWith(t, pgtest.Config(t, "target"))
	dir := target.Config().DataDir
	sysID, err := target.SystemID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(dir, "pgha-test-marker")
	if err := os.WriteFile(marker, []byte("old data"), 0o600); err != nil {
		t.Fatal(err)
	}
	rewind := func(src recovery.RewindSource) error {
		return recovery.Rewind(ctx, target.Config().BinDir, dir, src, pgtest.RunAs(), nil)
	}

	// Running.
	err = rewind(rewindSource(other, passFile))
	if err == nil || errors.Is(err, recovery.ErrRewindImpossible) || !strings.Contains(err.Error(), "running") {
		t.Errorf("Rewind of a running server: %v", err)
	}
	if err := target.Stop(ctx, postgres.StopFast); err != nil {
		t.Fatal(err)
	}
	control, err := os.ReadFile(filepath.Join(dir, "global", "pg_control"))
	if err != nil {
		t.Fatal(err)
	}
	unchanged := func(what string) {
		t.Helper()
		if b, err := os.ReadFile(marker); err != nil || string(b) != "old data" {
			t.Errorf("%s: marker file changed: %q %v", what, b, err)
		}
		if b, err := os.ReadFile(filepath.Join(dir, "global", "pg_control")); err != nil || !bytes.Equal(b, control) {
			t.Errorf("%s: pg_control changed: %v", what, err)
		}
		if id, err := target.SystemID(ctx); err != nil || id != sysID {
			t.Errorf("%s: system identifier %d %v, want %d", what, id, err, sysID)
		}
		if _, err := os.Stat(dir + recovery.RewindMarkerSuffix); !os.IsNotExist(err) {
			t.Errorf("%s: rewind marker left: %v", what, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "standby.signal")); !os.IsNotExist(err) {
			t.Errorf("%s: standby.signal appeared: %v", what, err)
		}
	}

	// Unreachable source: retry later.
	down := recovery.RewindSource{Host: "127.0.0.1", Port: pgtest.FreePort(t), User: pgtest.RewindUser, PassFile: passFile}
	err = rewind(down)
	if err == nil || errors.Is(err, recovery.ErrRewindImpossible) {
		t.Errorf("Rewind from an unreachable source: %v", err)
	}
	unchanged("unreachable source")

	// Wrong password: retry later.
	badPass := filepath.Join(pgtest.TempDir(t), "pgpass")
	if err := postgres.WritePassFile(badPass, pgtest.RunAs(), postgres.PassEntry{Host: "*", User: pgtest.RewindUser, Password: "wrong"}); err != nil {
		t.Fatal(err)
	}
	err = rewind(rewindSource(other, badPass))
	if err == nil || errors.Is(err, recovery.ErrRewindImpossible) || !strings.Contains(err.Error(), "password authentication failed") {
		t.Errorf("Rewind with a wrong password: %v", err)
	}
	unchanged("wrong password")

	// A different system: impossible.
	err = rewind(rewindSource(other, passFile))
	if !errors.Is(err, recovery.ErrRewindImpossible) || !strings.Contains(err.Error(), "different systems") {
		t.Errorf("Rewind from another system: %v", err)
	}
	unchanged("different system")

	// A marker left by an interrupted pg_rewind: impossible, without trying.
	if err := os.WriteFile(dir+recovery.RewindMarkerSuffix, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if !recovery.RewindIncomplete(dir) {
		t.Error("RewindIncomplete is false with a marker")
	}
	err = rewind(rewindSource(other, passFile))
	if !errors.Is(err, recovery.ErrRewindImpossible) || !strings.Contains(err.Error(), recovery.RewindMarkerSuffix) {
		t.Errorf("Rewind with a leftover marker: %v", err)
	}
	if b, err := os.ReadFile(marker); err != nil || string(b) != "old data" {
		t.Errorf("marker file changed: %q %v", b, err)
	}

	// Nothing there: impossible (the caller re-clones).
	err = recovery.Rewind(ctx, target.Config().BinDir, filepath.Join(pgtest.TempDir(t), "none"), rewindSource(other, passFile), pgtest.RunAs(), nil)
	if !errors.Is(err, recovery.ErrRewindImpossible) {
		t.Errorf("Rewind of a missing data dir: %v", err)
	}
}

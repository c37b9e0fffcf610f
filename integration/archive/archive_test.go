// Package archive tests the WAL archive and backups end to end (issue
// 21): real agents and PostgreSQL servers on loopback, an archive
// directory laid out as the seeds' (cp "%p" archivedir/%f), then
// pgBackRest from Debian's package with a local repository. WAL-G is not
// packaged in Debian: its commands are configured the same way but not
// run here.
package archive

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/internal/itest"
	"github.com/pgha/pgha/internal/localcluster"
	"github.com/pgha/pgha/internal/wait"
	"github.com/pgha/pgha/postgres"
	"github.com/pgha/pgha/postgres/pgtest"
)

var agentBinary string

func TestMain(m *testing.M) { itest.Main(m, &agentBinary) }

// The seeds' archive: every server archives with cp into one directory
// (the seeds mount it on every host), and standbys restore from it.
func seedsArchiveYAML(dir string) string {
	return fmt.Sprintf(`archive:
  archive_mode: "on"
  archive_command: 'cp "%%p" "%s/%%f"'
  restore_command: 'cp "%s/%%f" "%%p"'
`, dir, dir)
}

// TestArchiveAndBackups, on one three-member cluster:
//
//  1. the seeds' archive: archive_mode, archive_command and restore_command
//     on every server from the node files' archive section; the primary
//     archives;
//  2. a standby stopped while the primary writes far more WAL than it
//     keeps, its slot dropped, catches up from the archive on its
//     restart: not re-cloned, its data directory the same;
//  3. a failover: the promoted standby archives its timeline's history
//     file, and the old primary rejoins by pg_rewind (--restore-target-wal);
//  4. edit-config moves the cluster to pgBackRest (archive-push and
//     archive-get, backup.tool); pgha-agent backup takes a backup on a
//     standby; list shows it; a new member is cloned by pgBackRest's
//     restore and streams.
func TestArchiveAndBackups(t *testing.T) {
	dir := pgtest.TempDir(t)
	archiveDir := filepath.Join(dir, "archivedir")
	if err := postgres.MkdirAs(archiveDir, 0o700, pgtest.RunAs()); err != nil {
		t.Fatal(err)
	}
	lc := itest.NewCluster(t, agentBinary, 3, func(o *localcluster.Options) {
		o.ExtraConfig = func(string) string { return seedsArchiveYAML(archiveDir) }
		// Keep as little WAL as PostgreSQL allows, so a stopped standby
		// loses what it needs soon.
		o.Parameters = func(string) map[string]string {
			return map[string]string{"wal_keep_size": "32MB", "min_wal_size": "32MB", "max_wal_size": "64MB"}
		}
	})
	if err := lc.StartAll(); err != nil {
		t.Fatal(err)
	}
	v := itest.WaitHealthy(t, lc, 3, 90*time.Second)
	primary := itest.PrimaryOf(t, v)
	pc := itest.Connect(t, primary.Port)
	exec := func(sql string) {
		t.Helper()
		if _, err := pc.Exec(context.Background(), sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec("CREATE TABLE archived (id int primary key, pad text)")
	rows := 0
	insert := func(n int) {
		t.Helper()
		exec(fmt.Sprintf("INSERT INTO archived SELECT g, repeat('x', 200) FROM generate_series(%d, %d) g", rows+1, rows+n))
		rows += n
	}
	insert(100)

	must(t, "every server archives to the seeds' directory", func(t *testing.T) {
		for _, n := range lc.Nodes() {
			c := itest.Connect(t, n.PGPort)
			for setting, want := range map[string]string{
				"archive_mode":    "on",
				"archive_command": fmt.Sprintf(`cp "%%p" "%s/%%f"`, archiveDir),
				"restore_command": fmt.Sprintf(`cp "%s/%%f" "%%p"`, archiveDir),
			} {
				var got string
				if err := c.QueryRow(context.Background(), "SELECT current_setting($1)", setting).Scan(&got); err != nil || got != want {
					t.Errorf("%s: %s = %q (%v), want %q", n.Name, setting, got, err, want)
				}
			}
		}
		var seg string
		if err := pc.QueryRow(context.Background(), "SELECT pg_walfile_name(pg_current_wal_lsn())").Scan(&seg); err != nil {
			t.Fatal(err)
		}
		exec("SELECT pg_switch_wal()")
		waitFile(t, filepath.Join(archiveDir, seg))
	})

	must(t, "a standby whose slot lost its WAL catches up from the archive", func(t *testing.T) {
		v := itest.WaitHealthy(t, lc, 3, 60*time.Second)
		var sb agent.MemberStatus
		for _, m := range v.Members {
			if m.Role == "replica" {
				sb = m
			}
		}
		if sb.Name == "" {
			for _, m := range v.Members {
				if m.Role != "leader" {
					sb = m
				}
			}
		}
		n := lc.Node(sb.Name)
		// A file of the operator's: a re-clone would replace the data
		// directory and lose it.
		marker := filepath.Join(n.PGData, "operator-marker")
		if err := os.WriteFile(marker, []byte("kept\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		var need string
		if err := pc.QueryRow(context.Background(), "SELECT pg_walfile_name(replay_lsn) FROM pg_stat_replication WHERE application_name = $1", sb.Name).Scan(&need); err != nil {
			t.Fatal(err)
		}
		if err := lc.Stop(context.Background(), n); err != nil {
			t.Fatal(err)
		}
		// Far more WAL than the primary keeps (wal_keep_size 32MB): eight
		// segments, which its slot still holds for it.
		for range 8 {
			insert(2000)
			exec("SELECT pg_switch_wal()")
		}
		// Then its slot goes (the primary's agent puts a new one back at
		// once, reserving WAL from now on only), and a checkpoint or two
		// later the segment it needs next is gone from pg_wal.
		exec(fmt.Sprintf("SELECT pg_drop_replication_slot('%s')", agent.SlotName(sb.Name)))
		wait.For(t, 60*time.Second, "the primary to recycle "+need, func() (bool, string) {
			insert(100)
			exec("SELECT pg_switch_wal()")
			exec("CHECKPOINT")
			var left int
			if err := pc.QueryRow(context.Background(), "SELECT count(*) FROM pg_ls_waldir() WHERE name <= $1 AND name ~ '^[0-9A-F]{24}$'", need).Scan(&left); err != nil {
				return false, err.Error()
			}
			var slots, archiver string
			_ = pc.QueryRow(context.Background(), "SELECT string_agg(slot_name || '@' || coalesce(restart_lsn::text, '-') || ' ' || active::text, ', ') FROM pg_replication_slots").Scan(&slots)
			_ = pc.QueryRow(context.Background(), "SELECT format('archived %s last %s failed %s last %s', archived_count, last_archived_wal, failed_count, last_failed_wal) FROM pg_stat_archiver").Scan(&archiver)
			return left == 0, fmt.Sprintf("%d segments up to %s still in pg_wal; slots %s; %s", left, need, slots, archiver)
		})
		waitFile(t, filepath.Join(archiveDir, need))
		before, _ := os.ReadFile(n.Log)
		if err := lc.Start(n); err != nil {
			t.Fatal(err)
		}
		itest.WaitHealthy(t, lc, 3, 120*time.Second)
		sc := itest.Connect(t, n.PGPort)
		wait.For(t, 60*time.Second, sb.Name+" to hold every row", func() (bool, string) {
			var got int
			err := sc.QueryRow(context.Background(), "SELECT count(*) FROM archived").Scan(&got)
			return err == nil && got == rows, fmt.Sprintf("%d of %d rows (%v)", got, rows, err)
		})
		if _, err := os.Stat(marker); err != nil {
			t.Errorf("%s was re-cloned (the operator's file is gone: %v)", sb.Name, err)
		}
		log, _ := os.ReadFile(n.PGData + ".log")
		t.Logf("%s restored %d segments from the archive", sb.Name, strings.Count(string(log), "restored log file"))
		if !strings.Contains(string(log), `restored log file "`+need+`" from archive`) {
			t.Errorf("%s's server log does not say it restored %s from the archive:\n%s", sb.Name, need, itest.TailLines(string(log), 40))
		}
		if alog, _ := os.ReadFile(n.Log); len(alog) >= len(before) && strings.Contains(string(alog[len(before):]), "cloning") {
			t.Errorf("%s's agent cloned:\n%s", sb.Name, alog[len(before):])
		}
	})

	must(t, "the promoted standby archives its history; the old primary rewinds", func(t *testing.T) {
		v := itest.WaitHealthy(t, lc, 3, 60*time.Second)
		old := itest.PrimaryOf(t, v)
		lc.KillHost(lc.Node(old.Name))
		var np agent.MemberStatus
		wait.For(t, 60*time.Second, "a new primary", func() (bool, string) {
			v, err := lc.View(context.Background())
			if err != nil {
				return false, err.Error()
			}
			for _, m := range v.Members {
				if m.Role == "leader" && m.Name != old.Name && m.State == "running" {
					np = m
					return true, ""
				}
			}
			return false, itest.Describe(v)
		})
		waitFile(t, filepath.Join(archiveDir, fmt.Sprintf("%08X.history", np.Timeline)))
		if err := lc.Start(lc.Node(old.Name)); err != nil {
			t.Fatal(err)
		}
		v = itest.WaitHealthy(t, lc, 3, 120*time.Second)
		t.Logf("%s rejoined by %s; %s promoted onto timeline %d", old.Name, memberOf(v, old.Name).RejoinedBy, np.Name, np.Timeline)
		if m := memberOf(v, old.Name); m.RejoinedBy != "rewind" && m.RejoinedBy != "follow" {
			t.Errorf("the old primary rejoined by %q, not by pg_rewind", m.RejoinedBy)
		}
		if alog, _ := os.ReadFile(lc.Node(old.Name).Log); !strings.Contains(string(alog), "restore_target_wal=true") && !strings.Contains(string(alog), "without pg_rewind") {
			t.Errorf("the old primary's rewind did not use the archive:\n%s", itest.TailLines(string(alog), 40))
		}
		pc = itest.Connect(t, np.Port)
	})

	must(t, "pgBackRest: backup on a standby, list, a new member cloned by restore", func(t *testing.T) {
		if _, err := osexec("pgbackrest"); err != nil {
			skip(t, "pgbackrest is not installed (Debian's package pgbackrest)")
		}
		conf := writePgBackRestConf(t, lc, dir)
		pgbr := fmt.Sprintf("pgbackrest --config=%s --stanza=itest", conf)
		// pgBackRest resolves PostgreSQL's relative %p against the data
		// directory it runs in: "$PWD/%p" keeps one command for every member.
		cli(t, lc, "edit-config",
			"--set", fmt.Sprintf(`archive.archive_command=%s archive-push "$PWD/%%p"`, pgbr),
			"--set", fmt.Sprintf(`archive.restore_command=%s archive-get %%f "$PWD/%%p"`, pgbr),
			"--set", "backup.tool=pgbackrest",
			"--set", fmt.Sprintf(`backup.options=["--config=%s"]`, conf))
		show := cli(t, lc, "show-config")
		if !strings.Contains(show, "- pgbackrest") || !strings.Contains(show, "- basebackup") || !strings.Contains(show, "stanza: itest") {
			t.Errorf("show-config after the change:\n%s", show)
		}
		v := itest.WaitHealthy(t, lc, 3, 60*time.Second)
		p := itest.PrimaryOf(t, v)
		pc := itest.Connect(t, p.Port)
		wait.For(t, 30*time.Second, "the primary to archive with pgBackRest", func() (bool, string) {
			var got string
			err := pc.QueryRow(context.Background(), "SHOW archive_command").Scan(&got)
			return err == nil && strings.Contains(got, "archive-push"), got
		})
		runPgBackRest(t, conf, "stanza-create")
		runPgBackRest(t, conf, "check")

		out := cli(t, lc, "backup")
		if !strings.Contains(out, "backup finished on") {
			t.Fatalf("pgha-agent backup:\n%s", out)
		}
		v = itest.WaitHealthy(t, lc, 3, 30*time.Second)
		if v.LastBackup == nil || v.LastBackup.Tool != "pgbackrest" || !v.LastBackup.FromStandby || v.LastBackup.Member == p.Name {
			t.Errorf("last backup recorded: %+v, want a pgbackrest backup on a standby", v.LastBackup)
		}
		t.Logf("pgha-agent backup:\n%s", out)
		list := cli(t, lc, "list")
		t.Logf("pgha-agent list:\n%s", list)
		if !strings.Contains(list, "last backup: ") || !strings.Contains(list, "pgbackrest") {
			t.Errorf("list does not show the last backup:\n%s", list)
		}
		info := runPgBackRest(t, conf, "info")
		if !strings.Contains(info, "full backup") {
			t.Errorf("pgbackrest info after the backup:\n%s", info)
		}

		// Rows written after the backup reach the new member through the
		// archive and streaming.
		if _, err := pc.Exec(context.Background(), "INSERT INTO archived SELECT g, 'after the backup' FROM generate_series(1000001, 1000100) g"); err != nil {
			t.Fatal(err)
		}
		want := itest.QueryInt(t, pc, "SELECT count(*) FROM archived")
		n4, err := lc.AddNode("node4", pgtest.FreePort(t), pgtest.FreePort(t), pgtest.FreePort(t))
		if err != nil {
			t.Fatal(err)
		}
		// What list shows while it clones.
		seen := map[string]bool{}
		watching, watched := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(watched)
			for {
				select {
				case <-watching:
					return
				case <-time.After(20 * time.Millisecond):
				}
				if v, err := lc.View(context.Background()); err == nil {
					if a := memberOf(v, "node4").Activity; a != "" {
						seen[a] = true
					}
				}
			}
		}()
		if err := lc.Start(n4); err != nil {
			t.Fatal(err)
		}
		itest.WaitHealthy(t, lc, 4, 180*time.Second)
		close(watching)
		<-watched
		t.Logf("node4's activities while it joined: %v", slices.Sorted(maps.Keys(seen)))
		if !slices.ContainsFunc(slices.Collect(maps.Keys(seen)), func(a string) bool { return strings.HasPrefix(a, "cloning ") && strings.HasSuffix(a, "%") }) {
			t.Errorf("no clone progress shown while pgBackRest restored: %v", slices.Sorted(maps.Keys(seen)))
		}
		c4 := itest.Connect(t, n4.PGPort)
		wait.For(t, 60*time.Second, "node4 to hold every row", func() (bool, string) {
			var got int64
			err := c4.QueryRow(context.Background(), "SELECT count(*) FROM archived").Scan(&got)
			return err == nil && got == want, fmt.Sprintf("%d of %d rows (%v)", got, want, err)
		})
		alog, _ := os.ReadFile(n4.Log)
		for _, l := range strings.Split(string(alog), "\n") {
			if strings.Contains(l, "clon") {
				t.Logf("node4: %s", l)
			}
		}
		if !strings.Contains(string(alog), `clone finished`) || !strings.Contains(string(alog), `from="pgbackrest backup"`) {
			t.Errorf("node4 was not cloned by pgBackRest's restore:\n%s", itest.TailLines(string(alog), 40))
		}
	})
}

// writePgBackRestConf writes a pgBackRest configuration for the loopback
// cluster: a repository directory, and the three members as pg1..pg3 (all
// local), which backup --backup-standby needs to find the primary and a
// standby. Its directories belong to the PostgreSQL user.
func writePgBackRestConf(t *testing.T, lc *localcluster.Cluster, dir string) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "[global]\nrepo1-path=%s/pgbackrest-repo\nrepo1-retention-full=2\nlog-path=%s/pgbackrest-log\nlock-path=%s/pgbackrest-lock\nstart-fast=y\nlog-level-file=off\n\n[itest]\n", dir, dir, dir)
	for i, n := range lc.Nodes() {
		fmt.Fprintf(&b, "pg%d-path=%s\npg%d-port=%d\npg%d-socket-path=%s\npg%d-user=postgres\n", i+1, n.PGData, i+1, n.PGPort, i+1, n.SocketDir, i+1)
	}
	for _, d := range []string{"pgbackrest-repo", "pgbackrest-log", "pgbackrest-lock"} {
		if err := postgres.MkdirAs(filepath.Join(dir, d), 0o750, pgtest.RunAs()); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "pgbackrest.conf")
	if err := postgres.WriteFileAs(path, []byte(b.String()), 0o640, pgtest.RunAs()); err != nil {
		t.Fatal(err)
	}
	return path
}

// runPgBackRest runs a pgBackRest command for the stanza as the
// PostgreSQL user and returns its output.
func runPgBackRest(t *testing.T, conf, command string) string {
	t.Helper()
	path, err := osexec("pgbackrest")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd, err := postgres.CommandAs(ctx, pgtest.RunAs(), path, "--config="+conf, "--stanza=itest", "--log-level-console=info", command)
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pgbackrest %s: %v\n%s", command, err, out)
	}
	return string(out)
}

func osexec(name string) (string, error) { return exec.LookPath(name) }

func waitFile(t *testing.T, path string) {
	t.Helper()
	wait.For(t, 60*time.Second, filepath.Base(path)+" in the archive", func() (bool, string) {
		_, err := os.Stat(path)
		return err == nil, fmt.Sprint(err)
	})
}

func memberOf(v agent.ClusterView, name string) agent.MemberStatus {
	for _, m := range v.Members {
		if m.Name == name {
			return m
		}
	}
	return agent.MemberStatus{}
}

func cli(t *testing.T, lc *localcluster.Cluster, args ...string) string {
	t.Helper()
	var apis []string
	for _, n := range lc.Nodes() {
		apis = append(apis, n.APIURL)
	}
	out, err := exec.Command(agentBinary, append(args, "--api", strings.Join(apis, ","))...).CombinedOutput()
	if err != nil {
		t.Fatalf("pgha-agent %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// skip skips a part that cannot run here, except in CI (CI=true), where
// it fails.
func skip(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("did not run and CI=true: %s", why)
	}
	t.Skip(why)
}

func must(t *testing.T, name string, f func(t *testing.T)) {
	t.Helper()
	if !t.Run(name, f) {
		t.FailNow()
	}
}

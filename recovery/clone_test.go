package recovery_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgha/pgha/internal/wait"
	"github.com/pgha/pgha/postgres"
	"github.com/pgha/pgha/postgres/pgtest"
	"github.com/pgha/pgha/recovery"
)

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func source(primary *postgres.Instance, passFile, slot string) recovery.Source {
	return recovery.Source{
		Host: "127.0.0.1", Port: primary.Config().Port,
		User: pgtest.ReplicationUser, PassFile: passFile, SlotName: slot,
	}
}

// TestCloneStreamPromote clones a standby through a slot, checks that it
// streams and replays, then promotes it.
func TestCloneStreamPromote(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	primary := pgtest.StartPrimary(t)
	if err := primary.EnsureSlots(ctx, []string{"pgha_node2"}); err != nil {
		t.Fatal(err)
	}
	if err := primary.Exec(ctx, "CREATE TABLE t (v text); INSERT INTO t VALUES ('before clone')"); err != nil {
		t.Fatal(err)
	}
	passFile := pgtest.WritePassFile(t)

	standby := pgtest.NewInstance(t, "node2")
	var mu sync.Mutex
	var lines []string
	err := recovery.Clone(ctx, standby.Config().BinDir, standby.Config().DataDir,
		source(primary, passFile, "pgha_node2"), pgtest.RunAs(), func(l string) {
			mu.Lock()
			lines = append(lines, l)
			mu.Unlock()
		})
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) == 0 {
		t.Error("no progress lines")
	}
	if _, err := os.Stat(standby.Config().DataDir + recovery.TmpSuffix); !os.IsNotExist(err) {
		t.Errorf("temporary directory left behind: %v", err)
	}
	if s, _ := standby.DataDirState(); s != postgres.DataDirValid {
		t.Fatalf("cloned data dir is %v", s)
	}
	if _, err := standby.Configure(&postgres.Standby{
		PrimaryHost: "127.0.0.1", PrimaryPort: primary.Config().Port,
		User: pgtest.ReplicationUser, PassFile: passFile,
		SlotName: "pgha_node2", ApplicationName: "node2",
	}, nil); err != nil {
		t.Fatal(err)
	}
	if err := standby.Start(ctx); err != nil {
		t.Fatal(err)
	}

	wait.For(t, 30*time.Second, "the clone to stream", func() (bool, string) {
		st := standby.Status(ctx)
		return st.Running && st.InRecovery && st.Streaming && st.ReceivedLSN > 0, "standby status " + mustJSON(st)
	})
	st := standby.Status(ctx)
	pst := primary.Status(ctx)
	if st.SystemID != pst.SystemID || st.Timeline != 1 || st.UpstreamPort != primary.Config().Port || st.UpstreamHost != "127.0.0.1" {
		t.Errorf("standby status %+v (primary system id %d)", st, pst.SystemID)
	}

	if err := primary.Exec(ctx, "INSERT INTO t VALUES ('after clone')"); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 30*time.Second, "the row to replay on the clone", func() (bool, string) {
		var n int
		err := standby.Query(ctx, func(c *pgx.Conn) error {
			return c.QueryRow(ctx, "SELECT count(*) FROM t WHERE v = 'after clone'").Scan(&n)
		})
		return err == nil && n == 1, "row not replayed yet"
	})
	wait.For(t, 30*time.Second, "the primary to see node2 streaming", func() (bool, string) {
		pst := primary.Status(ctx)
		for _, r := range pst.Replication {
			if r.ApplicationName == "node2" && r.State == "streaming" && r.FlushLSN > 0 {
				return true, ""
			}
		}
		return false, "primary replication " + mustJSON(pst.Replication)
	})
	pst = primary.Status(ctx)
	for _, s := range pst.Slots {
		if s.Name == "pgha_node2" && !s.Active {
			t.Errorf("slot pgha_node2 not active: %+v", pst.Slots)
		}
	}
	// The fence reads the state from pg_control itself (no pg_controldata
	// process); it must say what pg_controldata says.
	assertControlState(t, standby, "in archive recovery")
	assertControlState(t, primary, "in production")
	if err := standby.EnsureRoles(ctx); err == nil || !strings.Contains(err.Error(), "recovery") {
		t.Errorf("EnsureRoles on a standby: %v", err)
	}

	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	st = standby.Status(ctx)
	if !st.Running || st.InRecovery || st.Timeline != 2 || st.CurrentLSN == 0 {
		t.Errorf("after promotion: %+v", st)
	}
	if err := standby.Exec(ctx, "INSERT INTO t VALUES ('on the new primary')"); err != nil {
		t.Errorf("write after promotion: %v", err)
	}
	assertControlState(t, standby, "in production")
	// The agent then rewrites the config as a primary: only reload-level changes.
	ch, err := standby.Configure(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ch.NeedsRestart {
		t.Errorf("Configure after promotion needs a restart: %+v", ch)
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestCloneRefusesNonEmpty(t *testing.T) {
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
	// No server is needed: the check comes first.
	err := recovery.Clone(ctx, pgtest.BinDir(t), dir, recovery.Source{Host: "127.0.0.1", Port: 1, User: "x"}, pgtest.RunAs(), nil)
	if err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("Clone into a non-empty dir: %v", err)
	}
	if b, err := os.ReadFile(keep); err != nil || string(b) != "keep me" {
		t.Errorf("existing file changed: %q %v", b, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("data dir has %d entries, want 1", len(entries))
	}
	if _, err := os.Stat(dir + recovery.TmpSuffix); !os.IsNotExist(err) {
		t.Errorf("temporary directory made: %v", err)
	}
}

func TestCloneWrongPassword(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	primary := pgtest.StartPrimary(t)
	if err := primary.EnsureSlots(ctx, []string{"pgha_node3"}); err != nil {
		t.Fatal(err)
	}
	passFile := filepath.Join(pgtest.TempDir(t), "pgpass")
	if err := postgres.WritePassFile(passFile, pgtest.RunAs(), postgres.PassEntry{
		Host: "*", User: pgtest.ReplicationUser, Password: "wrong",
	}); err != nil {
		t.Fatal(err)
	}
	base := pgtest.TempDir(t)
	for _, tc := range []struct{ name, dir string }{
		{"missing dir", filepath.Join(base, "missing")},
		{"empty dir", filepath.Join(base, "empty")},
	} {
		if tc.name == "empty dir" {
			if err := postgres.MkdirAs(tc.dir, 0o700, pgtest.RunAs()); err != nil {
				t.Fatal(err)
			}
		}
		err := recovery.Clone(ctx, pgtest.BinDir(t), tc.dir, source(primary, passFile, "pgha_node3"), pgtest.RunAs(), nil)
		if err == nil || !strings.Contains(err.Error(), "password authentication failed") {
			t.Errorf("%s: Clone with a wrong password: %v", tc.name, err)
		}
		if _, err := os.Stat(tc.dir + recovery.TmpSuffix); !os.IsNotExist(err) {
			t.Errorf("%s: temporary directory left: %v", tc.name, err)
		}
		entries, err := os.ReadDir(tc.dir)
		if tc.name == "missing dir" && !os.IsNotExist(err) {
			t.Errorf("%s: data dir exists after a failed clone: %v", tc.name, err)
		}
		if tc.name == "empty dir" && (err != nil || len(entries) != 0) {
			t.Errorf("%s: data dir changed: %v %v", tc.name, entries, err)
		}
	}
	// The right password then clones into the empty dir, which is replaced.
	emptyDir := filepath.Join(base, "empty")
	if err := recovery.Clone(ctx, pgtest.BinDir(t), emptyDir, source(primary, pgtest.WritePassFile(t), "pgha_node3"), pgtest.RunAs(), nil); err != nil {
		t.Fatalf("Clone into an empty dir: %v", err)
	}
	for _, f := range []string{"PG_VERSION", "global/pg_control", "pgha.conf"} {
		if _, err := os.Stat(filepath.Join(emptyDir, f)); err != nil {
			t.Errorf("clone lacks %s: %v", f, err)
		}
	}
	if fi, err := os.Stat(emptyDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("cloned data dir mode: %v %v", fi.Mode(), err)
	}
	// A slot that does not exist is an error too, not a clone without WAL retention.
	err := recovery.Clone(ctx, pgtest.BinDir(t), filepath.Join(base, "noslot"), source(primary, pgtest.WritePassFile(t), "pgha_absent"), pgtest.RunAs(), nil)
	if err == nil || !strings.Contains(err.Error(), "pgha_absent") {
		t.Errorf("Clone with a missing slot: %v", err)
	}
}

// assertControlState checks that ClusterStateNow (pg_control read in
// place) and ClusterState (pg_controldata) both say want.
func assertControlState(t *testing.T, inst *postgres.Instance, want string) {
	t.Helper()
	now, err := inst.ClusterStateNow()
	if err != nil || now != want {
		t.Errorf("%s: ClusterStateNow = %q, %v; want %q", inst.Config().DataDir, now, err, want)
	}
	if s, err := inst.ClusterState(testContext(t)); err != nil || s != want {
		t.Errorf("%s: ClusterState (pg_controldata) = %q, %v; want %q", inst.Config().DataDir, s, err, want)
	}
}

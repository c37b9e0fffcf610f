package postgres_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgha/pgha/postgres"
	"github.com/pgha/pgha/postgres/pgtest"
)

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestPrimaryLifecycle(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	inst := pgtest.StartPrimary(t)

	st := inst.Status(ctx)
	if !st.Running || st.InRecovery || st.Timeline != 1 || st.CurrentLSN == 0 || st.SystemID == 0 || st.PID == 0 || st.Error != "" {
		t.Fatalf("primary status: %+v", st)
	}
	if st.Streaming || st.ReceivedLSN != 0 || st.ReplayedLSN != 0 || !st.ReplayTime.IsZero() {
		t.Errorf("primary reports standby fields: %+v", st)
	}
	pid, err := inst.PostmasterPID()
	if err != nil || pid != st.PID {
		t.Errorf("PostmasterPID = %d, %v; status PID %d", pid, err, st.PID)
	}
	sysID, err := inst.SystemID(ctx)
	if err != nil || sysID != st.SystemID {
		t.Errorf("SystemID() = %d, %v; Status.SystemID %d", sysID, err, st.SystemID)
	}
	if b, err := json.Marshal(st); err != nil || !strings.Contains(string(b), `"current_lsn":"`+st.CurrentLSN.String()+`"`) {
		t.Errorf("status JSON: %s %v", b, err)
	}

	// Writes advance the LSN.
	if err := inst.Exec(ctx, "CREATE TABLE t (v int); INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if err := inst.Exec(ctx, "INSERT INTO t VALUES ($1)", 2); err != nil {
		t.Fatal(err)
	}
	if st2 := inst.Status(ctx); st2.CurrentLSN <= st.CurrentLSN {
		t.Errorf("LSN did not advance: %s -> %s", st.CurrentLSN, st2.CurrentLSN)
	}
	// SQL errors keep the connection; the next call works.
	if err := inst.Exec(ctx, "SELECT * FROM missing_table"); err == nil {
		t.Error("no error for a bad statement")
	}
	if err := inst.Exec(ctx, "SELECT 1"); err != nil {
		t.Errorf("after an SQL error: %v", err)
	}

	// Start of a running server is a no-op; Reload works.
	if err := inst.Start(ctx); err != nil {
		t.Errorf("Start when running: %v", err)
	}
	if err := inst.Reload(ctx); err != nil {
		t.Errorf("Reload: %v", err)
	}

	for _, mode := range []postgres.StopMode{postgres.StopSmart, postgres.StopFast, postgres.StopImmediate} {
		// Smart waits for sessions: the cached connection must not block it.
		if err := inst.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		if err := inst.Stop(ctx, mode); err != nil {
			t.Fatalf("Stop(%s): %v", mode, err)
		}
		start := time.Now()
		st := inst.Status(ctx)
		if st.Running || st.PID != 0 || time.Since(start) > time.Second {
			t.Errorf("after Stop(%s): %+v (took %v)", mode, st, time.Since(start))
		}
		// pg_control read in place agrees with pg_controldata on a clean
		// stop and its WAL end; an immediate stop is not clean.
		at, clean, err := inst.ShutDownAtNow()
		if err != nil || clean != (mode != postgres.StopImmediate) {
			t.Errorf("ShutDownAtNow after Stop(%s) = %s, %v, %v", mode, at, clean, err)
		}
		if ckpt, err := inst.CheckpointLSN(ctx); clean && (err != nil || ckpt != at || at == 0) {
			t.Errorf("after Stop(%s): ShutDownAtNow %s, pg_controldata's checkpoint %s (%v)", mode, at, ckpt, err)
		}
		if err := inst.Stop(ctx, mode); err != nil {
			t.Errorf("Stop(%s) of a stopped server: %v", mode, err)
		}
		if err := inst.Exec(ctx, "SELECT 1"); err == nil {
			t.Error("Exec on a stopped server succeeded")
		}
		if err := inst.Start(ctx); err != nil {
			t.Fatalf("Start after Stop(%s): %v", mode, err)
		}
		// The cached connection was dropped; the next call reconnects.
		if err := inst.Exec(ctx, "INSERT INTO t VALUES (3)"); err != nil {
			t.Fatalf("Exec after restart: %v", err)
		}
	}
	if err := inst.Restart(ctx, postgres.StopFast); err != nil {
		t.Fatal(err)
	}
	if st := inst.Status(ctx); !st.Running || st.Timeline != 1 {
		t.Errorf("after Restart: %+v", st)
	}
	// Promoting a primary is a no-op.
	if err := inst.Promote(ctx); err != nil {
		t.Errorf("Promote of a primary: %v", err)
	}
	if err := inst.Initdb(ctx); err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Errorf("Initdb over a valid data dir: %v", err)
	}
	if err := inst.Stop(ctx, "bogus"); err == nil {
		t.Error("Stop with a bad mode succeeded")
	}
}

func TestStartFailureShowsLog(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	cfg := pgtest.Config(t, "broken")
	cfg.Parameters["shared_buffers"] = "not-a-size"
	inst := pgtest.NewInstanceWith(t, cfg)
	if err := inst.Initdb(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := inst.Configure(nil, nil); err != nil {
		t.Fatal(err)
	}
	err := inst.Start(ctx)
	if err == nil {
		t.Fatal("Start succeeded with a bad setting")
	}
	if !strings.Contains(err.Error(), "shared_buffers") {
		t.Errorf("error lacks the server log: %v", err)
	}
}

func TestStatusOfNeverStarted(t *testing.T) {
	t.Parallel()
	inst := pgtest.NewInstance(t, "nothing")
	st := inst.Status(context.Background())
	if st.Running || st.PID != 0 {
		t.Errorf("status: %+v", st)
	}
	if s, err := inst.DataDirState(); err != nil || s != postgres.DataDirMissing || !s.IsEmpty() {
		t.Errorf("DataDirState = %v, %v", s, err)
	}
}

func TestRolesSCRAM(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	inst := pgtest.StartPrimary(t)
	cfg := inst.Config()

	// Idempotent, also with a changed password.
	if err := inst.EnsureRoles(ctx); err != nil {
		t.Fatalf("second EnsureRoles: %v", err)
	}

	connect := func(user, password string, replication bool) error {
		cc, err := pgconn.ParseConfig("host=127.0.0.1 dbname=postgres sslmode=disable connect_timeout=5")
		if err != nil {
			return err
		}
		cc.Port = uint16(cfg.Port)
		cc.User = user
		cc.Password = password
		if replication {
			cc.RuntimeParams["replication"] = "true"
		}
		c, err := pgconn.ConnectConfig(ctx, cc)
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		sql := "SELECT count(*) FROM pg_stat_replication" // pg_monitor may read it
		if replication {
			sql = "IDENTIFY_SYSTEM"
		}
		_, err = c.Exec(ctx, sql).ReadAll()
		return err
	}
	if err := connect(pgtest.ReplicationUser, pgtest.ReplicationPassword, true); err != nil {
		t.Errorf("replication connection with the right password: %v", err)
	}
	if err := connect(pgtest.ReplicationUser, "wrong", true); err == nil || !strings.Contains(err.Error(), "password authentication failed") {
		t.Errorf("replication connection with a wrong password: %v", err)
	}
	if err := connect(pgtest.MonitorUser, pgtest.MonitorPassword, false); err != nil {
		t.Errorf("monitor connection: %v", err)
	}
	if err := connect(pgtest.RewindUser, pgtest.RewindPassword, false); err != nil {
		t.Errorf("rewind connection: %v", err)
	}

	// Stored as SCRAM; the rewind role holds the function grants.
	err := inst.Query(ctx, func(c *pgx.Conn) error {
		var stored string
		if err := c.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", pgtest.ReplicationUser).Scan(&stored); err != nil {
			return err
		}
		if !strings.HasPrefix(stored, "SCRAM-SHA-256$4096:") {
			t.Errorf("stored password %q is not SCRAM", stored)
		}
		var ok bool
		q := `SELECT has_function_privilege($1, 'pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)', 'EXECUTE')
		        AND has_function_privilege($1, 'pg_catalog.pg_ls_dir(text, boolean, boolean)', 'EXECUTE')
		        AND has_function_privilege($1, 'pg_catalog.pg_stat_file(text, boolean)', 'EXECUTE')
		        AND pg_has_role($2, 'pg_monitor', 'MEMBER')`
		if err := c.QueryRow(ctx, q, pgtest.RewindUser, pgtest.MonitorUser).Scan(&ok); err != nil {
			return err
		}
		if !ok {
			t.Error("rewind or monitor role lacks its privileges")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// A password change in the configuration reaches the server.
	cfg.Replication.Password = "new-secret"
	cfg.Logger = nil
	inst2, err := postgres.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer inst2.Close()
	if err := inst2.EnsureRoles(ctx); err != nil {
		t.Fatal(err)
	}
	if err := connect(pgtest.ReplicationUser, "new-secret", true); err != nil {
		t.Errorf("after password change: %v", err)
	}
	if err := connect(pgtest.ReplicationUser, pgtest.ReplicationPassword, true); err == nil {
		t.Error("old password still works")
	}
}

func TestEnsureSlots(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	inst := pgtest.StartPrimary(t)
	if err := inst.Exec(ctx, "SELECT pg_create_physical_replication_slot('operator_slot')"); err != nil {
		t.Fatal(err)
	}
	names := func() []string {
		var n []string
		for _, s := range inst.Status(ctx).Slots {
			n = append(n, s.Name)
		}
		return n
	}
	if err := inst.EnsureSlots(ctx, []string{"pgha_a", "pgha_b"}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(names(), ","); got != "operator_slot,pgha_a,pgha_b" {
		t.Errorf("slots = %s", got)
	}
	for _, s := range inst.Status(ctx).Slots {
		if s.Name == "pgha_a" && s.RestartLSN == 0 {
			t.Error("slot pgha_a reserves no WAL")
		}
	}
	if err := inst.EnsureSlots(ctx, []string{"pgha_b", "pgha_c"}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(names(), ","); got != "operator_slot,pgha_b,pgha_c" {
		t.Errorf("slots = %s", got)
	}
	if err := inst.EnsureSlots(ctx, []string{"Bad-Name"}); err == nil {
		t.Error("bad slot name accepted")
	}
}

func TestSCRAMVerifierMatchesServer(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	inst := pgtest.StartPrimary(t)
	// The server hashes the clear text; a verifier pgha computes for the
	// same password must then be recognised and leave the role unchanged.
	if err := inst.Exec(ctx, "SET password_encryption = 'scram-sha-256'; ALTER ROLE "+pgtest.MonitorUser+" PASSWORD '"+pgtest.MonitorPassword+"'"); err != nil {
		t.Fatal(err)
	}
	get := func() string {
		var s string
		if err := inst.Query(ctx, func(c *pgx.Conn) error {
			return c.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", pgtest.MonitorUser).Scan(&s)
		}); err != nil {
			t.Fatal(err)
		}
		return s
	}
	before := get()
	if err := inst.EnsureRoles(ctx); err != nil {
		t.Fatal(err)
	}
	if after := get(); after != before {
		t.Errorf("EnsureRoles rewrote a matching server-made verifier:\n%s\n%s", before, after)
	}
}

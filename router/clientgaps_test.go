package router_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgha/pgha/router"
)

// connectWith connects to addr as the trust user with extra startup
// parameters.
func connectWith(t *testing.T, addr string, params map[string]string) (*pgx.Conn, error) {
	t.Helper()
	cfg, err := pgx.ParseConfig(connString(addr, trustUser, ""))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range params {
		cfg.RuntimeParams[k] = v
	}
	c, err := pgx.ConnectConfig(testContext(t), cfg)
	if err == nil {
		t.Cleanup(func() { c.Close(context.Background()) })
	}
	return c, err
}

// testStartupParams: the runtime parameters a client sends at startup
// reach the server connection that serves each of its transactions (in
// transaction mode, whichever pooled connection that is), the client sees
// them in its ParameterStatus, another client of the same pool never gets
// them nor what a client SET itself, and a value PostgreSQL refuses ends
// the session with PostgreSQL's error.
func testStartupParams(t *testing.T, tr *testRouter) {
	ctx := testContext(t)
	a, err := connectWith(t, tr.rw, map[string]string{
		"application_name": "pgha-test-a", "TimeZone": "Asia/Seoul", "DateStyle": "German, DMY",
		"search_path": "pg_catalog, public", "options": "-c statement_timeout=4321 -c work_mem=7MB",
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := connectWith(t, tr.rw, map[string]string{"application_name": "pgha-test-b"})
	if err != nil {
		t.Fatal(err)
	}
	if got := a.PgConn().ParameterStatus("application_name"); got != "pgha-test-a" {
		t.Errorf("client a's ParameterStatus application_name = %q", got)
	}
	if got := a.PgConn().ParameterStatus("TimeZone"); got != "Asia/Seoul" {
		t.Errorf("client a's ParameterStatus TimeZone = %q", got)
	}
	const settings = `SELECT current_setting('application_name'), current_setting('TimeZone'), current_setting('DateStyle'),
		current_setting('search_path'), current_setting('statement_timeout'), current_setting('work_mem'),
		(SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid())`
	check := func(c *pgx.Conn, who string, want [7]string) {
		t.Helper()
		var got [7]string
		if err := c.QueryRow(ctx, settings, pgx.QueryExecModeSimpleProtocol).Scan(&got[0], &got[1], &got[2], &got[3], &got[4], &got[5], &got[6]); err != nil {
			t.Fatalf("%s: %v", who, err)
		}
		if got != want {
			t.Errorf("%s's server connection has\n%q, want\n%q", who, got, want)
		}
	}
	var def [7]string
	if err := connect(t, fmt.Sprintf("127.0.0.1:%d", tr.cl.primary.Config().Port), trustUser, "").QueryRow(ctx, settings).Scan(&def[0], &def[1], &def[2], &def[3], &def[4], &def[5], &def[6]); err != nil {
		t.Fatal(err)
	}
	wantA := [7]string{"pgha-test-a", "Asia/Seoul", "German, DMY", "pg_catalog, public", "4321ms", "7MB", "pgha-test-a"}
	wantB := def
	wantB[0], wantB[6] = "pgha-test-b", "pgha-test-b"
	// Interleaved, so that in transaction mode each client gets server
	// connections the other just used.
	for i := 0; i < 8; i++ {
		check(a, "client a", wantA)
		check(b, "client b", wantB)
		// Leftovers: what a client SETs itself stays its own.
		if _, err := b.Exec(ctx, "SET search_path = information_schema", pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatal(err)
		}
		check(a, "client a after b's SET", wantA)
		if _, err := b.Exec(ctx, "RESET search_path", pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatal(err)
		}
	}
	// A value PostgreSQL refuses: its own error, the session ends.
	bad, err := connectWith(t, tr.rw, map[string]string{"TimeZone": "Not/AZone"})
	if err == nil {
		_, err = bad.Exec(ctx, "SELECT 1")
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "22023" {
		t.Errorf("TimeZone=Not/AZone: %v; want PostgreSQL's 22023 invalid_parameter_value", err)
	}
	if _, err := connectWith(t, tr.rw, map[string]string{"options": "-d 5"}); err == nil {
		t.Error("options -d 5 accepted; the router cannot apply it to a pooled connection")
	}
}

// testListen: in session mode a client waiting for notifications gets
// them while idle; in transaction mode LISTEN fails with a clear error
// (outside a transaction and inside one, whose transaction it aborts)
// instead of a wait that never ends.
func testListen(t *testing.T, tr *testRouter, mode router.PoolMode) {
	ctx := testContext(t)
	l := connect(t, tr.rw, trustUser, "")
	_, err := l.Exec(ctx, "LISTEN pgha_test_channel")
	if mode == router.PoolTransaction {
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "0A000" {
			t.Fatalf("LISTEN in transaction mode: %v; want 0A000 feature_not_supported", err)
		}
		tx, err := l.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		_, err = tx.Exec(ctx, "LISTEN pgha_test_channel", pgx.QueryExecModeSimpleProtocol)
		if !errors.As(err, &pgErr) || pgErr.Code != "0A000" {
			t.Fatalf("LISTEN inside a transaction in transaction mode: %v; want 0A000", err)
		}
		if err := tx.Commit(ctx); !errors.Is(err, pgx.ErrTxCommitRollback) {
			t.Errorf("COMMIT after the refused LISTEN: %v; want the server's ROLLBACK", err)
		}
		var one int
		if err := l.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
			t.Errorf("the session after the refused LISTENs: %d, %v", one, err)
		}
		return
	}
	if err != nil {
		t.Fatalf("LISTEN in session mode: %v", err)
	}
	n := connect(t, tr.rw, trustUser, "")
	if _, err := n.Exec(ctx, "SELECT pg_notify('pgha_test_channel', 'hello')"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	note, err := l.WaitForNotification(wctx)
	if err != nil {
		t.Fatalf("an idle session-mode client waiting for its notification: %v", err)
	}
	if note.Channel != "pgha_test_channel" || note.Payload != "hello" {
		t.Errorf("notification %+v", note)
	}
}

// testServerDeath: in session mode the client's backend is its own for the
// whole session (pg_backend_pid() is stable), and when that backend is
// terminated the idle client gets PostgreSQL's FATAL and loses its
// connection without sending anything, as it would connected directly,
// instead of carrying on later on a fresh backend without its session
// state.
func testServerDeath(t *testing.T, tr *testRouter) {
	ctx := testContext(t)
	conn, fe := rawSession(t, tr.rw)
	pidOf := func() int32 {
		t.Helper()
		fe.Send(&pgproto3.Query{String: "SELECT pg_backend_pid()"})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		var pid int32
		for _, m := range readUntilReady(t, fe) {
			if row, ok := m.(*pgproto3.DataRow); ok {
				fmt.Sscan(string(row.Values[0]), &pid)
			}
		}
		return pid
	}
	pid := pidOf()
	if again := pidOf(); pid == 0 || again != pid {
		t.Fatalf("pg_backend_pid() in one session-mode session: %d then %d", pid, again)
	}
	direct := connect(t, fmt.Sprintf("127.0.0.1:%d", tr.cl.primary.Config().Port), trustUser, "")
	var ok bool
	if err := direct.QueryRow(ctx, "SELECT pg_terminate_backend($1)", pid).Scan(&ok); err != nil || !ok {
		t.Fatalf("pg_terminate_backend(%d) = %v, %v", pid, ok, err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var fatal *pgproto3.ErrorResponse
	for {
		msg, err := fe.Receive()
		if err != nil {
			if fatal == nil {
				t.Fatalf("the client's backend was terminated: the idle client read %v and no FATAL", err)
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("the client's backend was terminated: the router sent its FATAL but kept the client's connection open")
			}
			break // the router closed the client's connection
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok && e.Severity == "FATAL" && fatal == nil {
			cp := *e // Receive reuses its messages
			fatal = &cp
		}
	}
	if fatal.Code != "57P01" {
		t.Errorf("first FATAL %s %q; want PostgreSQL's own 57P01 admin_shutdown", fatal.Code, fatal.Message)
	}
}

// testLeftovers: in transaction mode a server connection goes from client
// to client; what one client leaves in the server session (a temporary
// table, an SQL prepared statement, a session advisory lock, a SET) never
// reaches the next client of that connection. One server connection, so
// that both clients share it.
func testLeftovers(t *testing.T, cl *cluster) {
	ctx := testContext(t)
	cfg := routerConfig(router.PoolTransaction)
	cfg.PoolSize = 1
	cfg.DisableLoadBalance = true
	tr := startRouter(t, cl, cfg)
	a := connect(t, tr.rw, trustUser, "")
	b := connect(t, tr.rw, trustUser, "")
	var pidA, pidB int
	for _, sql := range []string{
		"CREATE TEMP TABLE pgha_leftover (x int)",
		"PREPARE pgha_leftover_stmt AS SELECT 1",
		"SELECT pg_advisory_lock(4242)",
		"SET statement_timeout = 1234",
	} {
		if _, err := a.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("client a: %s: %v", sql, err)
		}
	}
	if err := a.QueryRow(ctx, "SELECT pg_backend_pid()", pgx.QueryExecModeSimpleProtocol).Scan(&pidA); err != nil {
		t.Fatal(err)
	}
	var table *string
	var stmts, locks int
	var timeout string
	if err := b.QueryRow(ctx, `SELECT pg_backend_pid(), to_regclass('pgha_leftover')::text,
		(SELECT count(*) FROM pg_prepared_statements), (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
		current_setting('statement_timeout')`, pgx.QueryExecModeSimpleProtocol).Scan(&pidB, &table, &stmts, &locks, &timeout); err != nil {
		t.Fatal(err)
	}
	if pidA != pidB {
		t.Fatalf("clients a and b got server connections %d and %d; the test needs them to share one", pidA, pidB)
	}
	if table != nil || stmts != 0 || locks != 0 || timeout != "0" {
		t.Errorf("client b finds client a's leftovers on their shared server connection: temp table %s, %d prepared statements, %d advisory locks, statement_timeout %s",
			tableName(table), stmts, locks, timeout)
	}
	// Prepared statements of the protocol (pgx's cache) survive it: the
	// router prepares them again where needed.
	for i := 0; i < 3; i++ {
		var n int
		if err := a.QueryRow(ctx, "SELECT $1::int + 1", i).Scan(&n); err != nil || n != i+1 {
			t.Fatalf("client a's prepared statement after the reset: %d, %v", n, err)
		}
		if _, err := a.Exec(ctx, "CREATE TEMP TABLE IF NOT EXISTS pgha_leftover (x int)", pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatal(err)
		}
	}
}

func tableName(p *string) string {
	if p == nil {
		return "none"
	}
	return *p
}

// testCopyAfterError: a client still sending COPY data after its COPY
// failed (the server's error and ReadyForQuery crossed its data on the
// wire) is not a protocol violation: PostgreSQL ignores CopyData, CopyDone
// and CopyFail outside a COPY, and so does the router; the session goes on.
func testCopyAfterError(t *testing.T, tr *testRouter) {
	ctx := testContext(t)
	if _, err := connect(t, tr.rw, trustUser, "").Exec(ctx, "CREATE TABLE IF NOT EXISTS pgha_copy_err (x int)"); err != nil {
		t.Fatal(err)
	}
	_, fe := rawSession(t, tr.rw)
	fe.Send(&pgproto3.Query{String: "COPY pgha_copy_err FROM STDIN"})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	if msg, err := fe.Receive(); err != nil {
		t.Fatal(err)
	} else if _, ok := msg.(*pgproto3.CopyInResponse); !ok {
		t.Fatalf("COPY FROM STDIN: got %T, want CopyInResponse", msg)
	}
	fe.Send(&pgproto3.CopyData{Data: []byte("not a number\n")})
	fe.Send(&pgproto3.Flush{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var copyErr *pgproto3.ErrorResponse
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			cp := *e
			copyErr = &cp
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	if copyErr == nil || copyErr.Code != "22P02" {
		t.Fatalf("COPY of a bad row: %+v; want 22P02", copyErr)
	}
	// The rest of the client's COPY stream, then a query.
	fe.Send(&pgproto3.CopyData{Data: []byte("1\n")})
	fe.Send(&pgproto3.CopyDone{})
	fe.Send(&pgproto3.Query{String: "SELECT 42"})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	got := ""
	for _, m := range readUntilReady(t, fe) {
		switch m := m.(type) {
		case *pgproto3.DataRow:
			got = string(m.Values[0])
		case *pgproto3.ErrorResponse:
			t.Fatalf("after the failed COPY: %s %s", m.Code, m.Message)
		}
	}
	if got != "42" {
		t.Errorf("SELECT 42 after the failed COPY returned %q", got)
	}
}

// testPostgresErrors: through the router a client gets PostgreSQL's own
// answers where a pooling proxy could easily differ: a second Parse of a
// statement name fails with 42P05 naming the client's statement (and the
// first statement stays), both when the router prepares lazily (Parse and
// Sync alone, as libpq's PQprepare sends) and when the server answers
// (Parse, Describe, Sync, as pgx sends); a statement with 65535
// parameters, the protocol's limit, runs.
func testPostgresErrors(t *testing.T, tr *testRouter) {
	ctx := testContext(t)
	c := connect(t, tr.rw, trustUser, "")
	pc := c.PgConn()
	if _, err := pc.Prepare(ctx, "pgha_dup", "SELECT 1", nil); err != nil {
		t.Fatal(err)
	}
	_, err := pc.Prepare(ctx, "pgha_dup", "SELECT 2", nil)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42P05" || pgErr.Message != `prepared statement "pgha_dup" already exists` {
		t.Errorf("second Parse of pgha_dup (Parse, Describe, Sync): %v; want PostgreSQL's 42P05 naming pgha_dup", err)
	}
	res := pc.ExecPrepared(ctx, "pgha_dup", nil, nil, nil).Read()
	if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "1" {
		t.Errorf("pgha_dup after the refused second Parse: %v %q; want the first statement's 1", res.Err, res.Rows)
	}

	_, fe := rawSession(t, tr.rw)
	for i, sql := range []string{"SELECT 1", "SELECT 2"} {
		fe.Send(&pgproto3.Parse{Name: "pgha_dup_raw", Query: sql})
		fe.Send(&pgproto3.Sync{})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		var code string
		for {
			msg, err := fe.Receive()
			if err != nil {
				t.Fatal(err)
			}
			if e, ok := msg.(*pgproto3.ErrorResponse); ok {
				code = e.Code + " " + e.Message
			}
			if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
		want := ""
		if i == 1 {
			want = `42P05 prepared statement "pgha_dup_raw" already exists`
		}
		if code != want {
			t.Errorf("Parse %d of pgha_dup_raw (Parse, Sync): error %q, want %q", i+1, code, want)
		}
	}

	const n = 65535
	var b strings.Builder
	b.WriteString("SELECT array_length(ARRAY[0")
	args := make([]any, n)
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, ",$%d::int", i)
		args[i-1] = i
	}
	b.WriteString("], 1)")
	var got int
	if err := c.QueryRow(ctx, b.String(), args...).Scan(&got); err != nil || got != n+1 {
		t.Errorf("a statement with %d parameters: %d, %v", n, got, err)
	}
}

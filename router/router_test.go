package router_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgha/pgha/internal/wait"
	"github.com/pgha/pgha/router"
)

// TestRouter runs every end-to-end test against one primary and two
// streaming standbys, through routers in both pool modes.
func TestRouter(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three PostgreSQL servers")
	}
	cl := startCluster(t)
	pgbenchInit(t, cl)
	// Transaction mode twice: with the fast path (the default), which
	// serves simple Queries and runs of prepared statements (Bind,
	// Describe, Execute, Sync), reads and writes, inside transactions too,
	// on the poller goroutine (fast.go); and without, so that the general
	// path keeps its own proof of those. Session mode has no fast path.
	for _, v := range []struct {
		name   string
		mode   router.PoolMode
		noFast bool
	}{
		{"transaction", router.PoolTransaction, false},
		{"transaction-nofast", router.PoolTransaction, true},
		{"session", router.PoolSession, false},
	} {
		mode := v.mode
		t.Run(v.name, func(t *testing.T) {
			cfg := routerConfig(mode)
			cfg.DisableFastPath = v.noFast
			tr := startRouter(t, cl, cfg)
			t.Run("SimpleExtendedPrepared", func(t *testing.T) { testQueries(t, tr) })
			t.Run("Batch", func(t *testing.T) { testBatch(t, tr) })
			t.Run("Copy", func(t *testing.T) { testCopy(t, tr) })
			t.Run("Psql", func(t *testing.T) { testPsql(t, tr) })
			t.Run("Pgbench", func(t *testing.T) { testPgbench(t, tr, mode) })
			t.Run("Routing", func(t *testing.T) { testRouting(t, tr, mode) })
			t.Run("Auth", func(t *testing.T) { testAuth(t, tr) })
			t.Run("Cancel", func(t *testing.T) { testCancel(t, tr) })
			t.Run("BadInput", func(t *testing.T) { testBadInput(t, tr) })
			t.Run("StartupParams", func(t *testing.T) { testStartupParams(t, tr) })
			t.Run("Listen", func(t *testing.T) { testListen(t, tr, mode) })
			t.Run("CopyAfterError", func(t *testing.T) { testCopyAfterError(t, tr) })
			t.Run("PostgresErrors", func(t *testing.T) { testPostgresErrors(t, tr) })
			if mode == router.PoolSession {
				t.Run("ServerDeath", func(t *testing.T) { testServerDeath(t, tr) })
			}
			t.Run("NoLeak", func(t *testing.T) { waitPoolsIdle(t, tr) })
		})
	}
	t.Run("ReadYourWrites", func(t *testing.T) { testReadYourWrites(t, startRouter(t, cl, routerConfig(router.PoolTransaction))) })
	t.Run("TLS", func(t *testing.T) { testTLS(t, cl) })
	t.Run("AuthQuery", func(t *testing.T) { testAuthQuery(t, cl) })
	t.Run("Metrics", func(t *testing.T) { testMetrics(t, cl) })
	t.Run("Hostile", func(t *testing.T) { testHostile(t, cl) })
	t.Run("Switch", func(t *testing.T) { testSwitch(t, cl) })
	t.Run("Reconfigure", func(t *testing.T) { testReconfigure(t, cl) })
	t.Run("HoldWaitsForDial", func(t *testing.T) { testHoldWaitsForDial(t, cl) })
	t.Run("LoginFollowsFailover", func(t *testing.T) { testLoginFollowsFailover(t, cl) })
	t.Run("CloseEndsWaitingSession", func(t *testing.T) { testCloseEndsWaitingSession(t, cl) })
	t.Run("ChangedResultShape", func(t *testing.T) { testChangedResultShape(t, cl, false) })
	t.Run("ChangedResultShapeNoFast", func(t *testing.T) { testChangedResultShape(t, cl, true) })
	t.Run("StandbyNotAnswering", func(t *testing.T) { testStandbyNotAnswering(t, cl) })
	t.Run("PrepareWhilePoolBusy", func(t *testing.T) { testPrepareWhilePoolBusy(t, cl) })
	t.Run("FastPath", func(t *testing.T) { testFastPath(t, cl) })
	t.Run("Leftovers", func(t *testing.T) { testLeftovers(t, cl) })
	// These two end standby1's sessions and restart it: last.
	for _, noFast := range []bool{false, true} {
		name := map[bool]string{false: "", true: "NoFast"}[noFast]
		t.Run("IdleConnectionsEnded"+name, func(t *testing.T) { testIdleConnectionsEnded(t, cl, noFast) })
		t.Run("DrainStandby"+name, func(t *testing.T) { testDrainStandby(t, cl, noFast) })
	}
}

func testQueries(t *testing.T, tr *testRouter) {
	ctx := testContext(t)
	c := connect(t, tr.rw, trustUser, "")
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec, pgx.QueryExecModeDescribeExec, pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeCacheStatement} {
		key := fmt.Sprintf("q-%s-%d", t.Name(), mode)
		if _, err := c.Exec(ctx, "INSERT INTO kv VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = excluded.v", mode, key, "v1"); err != nil {
			t.Fatalf("mode %v insert: %v", mode, err)
		}
		var v string
		// Read on the primary (read-your-writes), then many reads.
		if err := c.QueryRow(ctx, "SELECT v FROM kv WHERE k = $1", mode, key).Scan(&v); err != nil || v != "v1" {
			t.Fatalf("mode %v select: %q %v", mode, v, err)
		}
		for i := range 20 {
			var n, m int
			if err := c.QueryRow(ctx, "SELECT $1::int + 1, $2::int", mode, i, i*2).Scan(&n, &m); err != nil || n != i+1 || m != 2*i {
				t.Fatalf("mode %v: %d %d %v", mode, n, m, err)
			}
		}
	}
	// Explicit prepared statements, re-used across transactions.
	if _, err := c.Prepare(ctx, "two", "SELECT $1::int * 2"); err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		var n int
		if err := c.QueryRow(ctx, "two", i).Scan(&n); err != nil || n != 2*i {
			t.Fatalf("prepared: %d %v", n, err)
		}
	}
	if err := c.Deallocate(ctx, "two"); err != nil {
		t.Fatal(err)
	}
	// An error, then the session still works.
	_, err := c.Exec(ctx, "SELECT * FROM no_such_table")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42P01" {
		t.Fatalf("want 42P01, got %v", err)
	}
	// Explicit transaction: everything on the primary, rolled back.
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO kv VALUES ('tx-rolled-back', 'x')"); err != nil {
		t.Fatal(err)
	}
	var port int
	if err := tx.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
		t.Fatal(err)
	}
	if tr.cl.portName(port) != "primary" {
		t.Errorf("read inside a transaction ran on %s", tr.cl.portName(port))
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	// Notices and ParameterStatus are relayed.
	var notices []string
	var mu sync.Mutex
	cfg, _ := pgx.ParseConfig(connString(tr.rw, trustUser, ""))
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { mu.Lock(); notices = append(notices, n.Message); mu.Unlock() }
	c2, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close(ctx)
	if _, err := c2.Exec(ctx, "DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(notices) != 1 || notices[0] != "hello from plpgsql" {
		t.Errorf("notices %q", notices)
	}
	mu.Unlock()
	if v := c2.PgConn().ParameterStatus("server_version"); v == "" {
		t.Error("no server_version ParameterStatus")
	}
}

func testBatch(t *testing.T, tr *testRouter) {
	ctx := testContext(t)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		cfg, err := pgx.ParseConfig(connString(tr.rw, trustUser, ""))
		if err != nil {
			t.Fatal(err)
		}
		cfg.DefaultQueryExecMode = mode
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		b := &pgx.Batch{}
		for i := range 50 {
			if i%10 == 0 {
				b.Queue("INSERT INTO kv VALUES ($1, 'b') ON CONFLICT (k) DO NOTHING", fmt.Sprintf("batch-%d-%d", mode, i))
			}
			b.Queue("SELECT $1::int", i)
		}
		res := c.SendBatch(ctx, b)
		for i := range 50 {
			if i%10 == 0 {
				if _, err := res.Exec(); err != nil {
					t.Fatalf("mode %v batch insert %d: %v", mode, i, err)
				}
			}
			var n int
			if err := res.QueryRow().Scan(&n); err != nil || n != i {
				t.Fatalf("mode %v batch %d: %d %v", mode, i, n, err)
			}
		}
		if err := res.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func testCopy(t *testing.T, tr *testRouter) {
	ctx := testContext(t)
	c := connect(t, tr.rw, trustUser, "")
	table := "copy_" + strings.NewReplacer("/", "_", "-", "_").Replace(strings.ToLower(t.Name()))
	if _, err := c.Exec(ctx, "DROP TABLE IF EXISTS "+table+"; CREATE TABLE "+table+" (id int, s text)"); err != nil {
		t.Fatal(err)
	}
	rows := make([][]any, 5000)
	for i := range rows {
		rows[i] = []any{i, strings.Repeat("x", i%50)}
	}
	n, err := c.CopyFrom(ctx, pgx.Identifier{table}, []string{"id", "s"}, pgx.CopyFromRows(rows))
	if err != nil || n != 5000 {
		t.Fatalf("copy from: %d %v", n, err)
	}
	var buf bytes.Buffer
	tag, err := c.PgConn().CopyTo(ctx, &buf, "COPY "+table+" TO STDOUT")
	if err != nil || tag.RowsAffected() != 5000 || strings.Count(buf.String(), "\n") != 5000 {
		t.Fatalf("copy to: %v %v (%d lines)", tag, err, strings.Count(buf.String(), "\n"))
	}
	// COPY FROM STDIN through the simple protocol, with a bad row: an
	// error, and the session continues.
	_, err = c.PgConn().CopyFrom(ctx, strings.NewReader("1\tok\nnot-a-number\tbad\n"), "COPY "+table+" FROM STDIN")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "22P02" {
		t.Fatalf("bad copy: want 22P02, got %v", err)
	}
	var cnt int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&cnt); err != nil || cnt != 5000 {
		t.Fatalf("count after failed copy: %d %v", cnt, err)
	}
}

func testPsql(t *testing.T, tr *testRouter) {
	host, port, _ := net.SplitHostPort(tr.rw)
	cmd := exec.Command("/usr/bin/psql", "-X", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", port, "-U", trustUser, "-d", "postgres", "-At",
		"-c", "SELECT 40 + 2", "-c", "INSERT INTO kv VALUES ('psql', 'p') ON CONFLICT (k) DO UPDATE SET v = 'p' RETURNING v",
		"-c", "SHOW POOL_NODES")
	cmd.Env = append(cmd.Environ(), "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 5 || lines[0] != "42" || !strings.HasPrefix(lines[1], "p") || !strings.Contains(lines[3], "|primary|") {
		t.Fatalf("psql output:\n%s", out)
	}
}

func pgbenchInit(t *testing.T, cl *cluster) {
	cmd := exec.Command("/usr/bin/pgbench", "-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", fmt.Sprint(cl.primary.Config().Port), "-U", trustUser, "postgres")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
}

func testPgbench(t *testing.T, tr *testRouter, mode router.PoolMode) {
	host, port, _ := net.SplitHostPort(tr.rw)
	for _, args := range [][]string{
		{"-S", "-M", "simple"},
		{"-S", "-M", "prepared"},
		{"-M", "prepared"}, // TPC-B-like: writes in transactions
		{"-S", "-M", "extended"},
	} {
		// More clients than the pool has connections: they queue.
		clients := "8"
		if mode == router.PoolSession {
			clients = "4"
		}
		argv := append([]string{"-h", host, "-p", port, "-U", trustUser, "-n", "-c", clients, "-j", "2", "-T", "2"}, args...)
		argv = append(argv, "postgres")
		out, err := exec.Command("/usr/bin/pgbench", argv...).CombinedOutput()
		if err != nil {
			t.Fatalf("pgbench %v: %v\n%s", args, err, out)
		}
		s := string(out)
		if !strings.Contains(s, "number of failed transactions: 0") {
			t.Fatalf("pgbench %v:\n%s", args, s)
		}
		for _, l := range strings.Split(s, "\n") {
			if strings.HasPrefix(l, "tps") || strings.HasPrefix(l, "number of transactions actually") {
				t.Logf("pgbench %v %s: %s", args, mode, l)
			}
		}
	}
}

func testRouting(t *testing.T, tr *testRouter, mode router.PoolMode) {
	ctx := testContext(t)
	before := map[string]int64{}
	for _, n := range tr.PoolNodes() {
		before[n.Name] = n.SelectCnt
	}
	c := connect(t, tr.rw, trustUser, "")
	seen := map[string]int{}
	for range 40 {
		seen[tr.serverOf(t, c, "SELECT inet_server_port()")]++
	}
	if w := tr.serverOf(t, c, "INSERT INTO kv VALUES ('routing', 'r') ON CONFLICT (k) DO UPDATE SET v = 'r' RETURNING inet_server_port()"); w != "primary" {
		t.Errorf("write ran on %s", w)
	}
	for _, sql := range []string{"SELECT inet_server_port() FROM kv LIMIT 1 FOR UPDATE", "SELECT inet_server_port() WHERE nextval('seq') > 0"} {
		if w := tr.serverOf(t, c, sql); w != "primary" {
			t.Errorf("%s ran on %s", sql, w)
		}
	}
	ro := connect(t, tr.ro, trustUser, "")
	roSeen := map[string]int{}
	for range 10 {
		roSeen[tr.serverOf(t, ro, "SELECT inet_server_port()")]++
	}
	if roSeen["primary"] > 0 {
		t.Errorf("read-only listener used the primary: %v", roSeen)
	}
	if mode == router.PoolSession {
		if seen["primary"] != 40 {
			t.Errorf("session mode: reads on %v, want all on the primary", seen)
		}
		return
	}
	// One session reading alone stays on one standby (the tie between
	// idle standbys goes to its last one); sessions spread over both.
	if seen["primary"] > 0 || len(seen) != 1 {
		t.Errorf("one session's reads went to %v, want one standby only", seen)
	}
	spread := map[string]int{}
	for i := 0; i < 30 && len(spread) < 2; i++ {
		s := connect(t, tr.rw, trustUser, "")
		spread[tr.serverOf(t, s, "SELECT inet_server_port()")]++
		s.Close(ctx)
	}
	if spread["primary"] > 0 || spread["standby1"] == 0 || spread["standby2"] == 0 {
		t.Errorf("new sessions' reads went to %v, want both standbys only", spread)
	}
	after := map[string]int64{}
	for _, n := range tr.PoolNodes() {
		after[n.Name] = n.SelectCnt
	}
	if after["standby1"]-before["standby1"]+after["standby2"]-before["standby2"] < 40 {
		t.Errorf("select_cnt before %v after %v", before, after)
	}
	// SHOW POOL_NODES through the router, with pgpool's columns.
	rows, err := c.Query(ctx, "SHOW POOL_NODES", pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatal(err)
	}
	var cols []string
	for _, f := range rows.FieldDescriptions() {
		cols = append(cols, f.Name)
	}
	n := 0
	for rows.Next() {
		n++
	}
	if rows.Err() != nil || n != 3 || strings.Join(cols, ",") != "node_id,hostname,port,status,lb_weight,role,select_cnt,load_balance_node,replication_delay,replication_state,replication_sync_state,last_status_change" {
		t.Errorf("SHOW POOL_NODES: %d rows, columns %v, %v", n, cols, rows.Err())
	}
	for _, q := range []string{"SHOW POOLS", "SHOW STATS"} {
		if _, err := c.Exec(ctx, q, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Errorf("%s: %v", q, err)
		}
	}
	// Writes were seen on the primary's pg_stat_activity as the router.
	var apps int
	if err := tr.cl.primary.Query(ctx, func(pc *pgx.Conn) error {
		return pc.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgha-router'").Scan(&apps)
	}); err != nil || apps == 0 {
		t.Errorf("router sessions on the primary: %d %v", apps, err)
	}
}

func testReadYourWrites(t *testing.T, tr *testRouter) {
	ctx := testContext(t)
	c := connect(t, tr.rw, trustUser, "")
	tr.refreshLSN(t)
	if s := tr.serverOf(t, c, "SELECT inet_server_port()"); s == "primary" {
		t.Fatalf("a fresh session read from the primary")
	}
	if _, err := c.Exec(ctx, "INSERT INTO kv VALUES ('ryw', '1') ON CONFLICT (k) DO UPDATE SET v = kv.v::int + 1 || ''"); err != nil {
		t.Fatal(err)
	}
	// The topology still has the standbys' old replay positions: reads
	// go to the primary and see the write.
	for range 5 {
		if s := tr.serverOf(t, c, "SELECT inet_server_port() FROM kv WHERE k = 'ryw'"); s != "primary" {
			t.Fatalf("read after write ran on %s before it replayed the write", s)
		}
	}
	// Another session is not affected.
	c2 := connect(t, tr.rw, trustUser, "")
	if s := tr.serverOf(t, c2, "SELECT inet_server_port()"); s == "primary" {
		t.Errorf("another session's read went to the primary")
	}
	// Once the standbys replayed it, reads return to them.
	wait.For(t, 20*time.Second, "reads to return to the standbys", func() (bool, string) {
		tr.refreshLSN(t)
		s := tr.serverOf(t, c, "SELECT inet_server_port() FROM kv WHERE k = 'ryw'")
		return s != "primary", "still reading from " + s
	})
}

func testAuth(t *testing.T, tr *testRouter) {
	ctx := testContext(t)
	cases := []struct {
		name, user, password, code string
	}{
		{"scram", scramUser, scramPass, ""},
		{"scram wrong password", scramUser, "wrong", "28P01"},
		{"scram unknown user", "nobody", "x", "28P01"},
		{"md5", md5User, md5Pass, ""},
		{"md5 wrong password", md5User, "wrong", "28P01"},
		{"trust", trustUser, "", ""},
		{"hba reject", rejectUser, "", "28000"},
	}
	for _, tc := range cases {
		c, err := pgx.Connect(ctx, connString(tr.rw, tc.user, tc.password))
		if tc.code == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
				continue
			}
			var one int
			if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
				t.Errorf("%s: query: %v", tc.name, err)
			}
			c.Close(ctx)
			continue
		}
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != tc.code {
			t.Errorf("%s: want SQLSTATE %s, got %v", tc.name, tc.code, err)
			continue
		}
		if tc.code == "28P01" && pgErr.Message != fmt.Sprintf("password authentication failed for user %q", tc.user) {
			t.Errorf("%s: message %q", tc.name, pgErr.Message)
		}
	}
	// A database that does not exist: PostgreSQL's own error, relayed.
	host, port, _ := net.SplitHostPort(tr.rw)
	_, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s user=%s dbname=nodb sslmode=disable", host, port, trustUser))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "3D000" {
		t.Errorf("missing database: %v", err)
	}
	// sslmode=prefer: the router answers SSLRequest with 'N'.
	c, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s user=%s dbname=postgres sslmode=prefer", host, port, trustUser))
	if err != nil {
		t.Errorf("sslmode=prefer: %v", err)
	} else {
		c.Close(ctx)
	}
}

func testCancel(t *testing.T, tr *testRouter) {
	ctx := testContext(t)
	c := connect(t, tr.rw, trustUser, "")
	done := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, "SELECT pg_sleep(60)")
		done <- err
	}()
	wait.For(t, 20*time.Second, "pg_sleep to run", func() (bool, string) {
		for _, inst := range tr.cl.all() {
			var n int
			inst.Query(ctx, func(pc *pgx.Conn) error {
				return pc.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'").Scan(&n)
			})
			if n > 0 {
				return true, ""
			}
		}
		return false, "pg_sleep not running yet"
	})
	start := time.Now()
	if err := c.PgConn().CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
			t.Fatalf("want 57014 query_canceled, got %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("cancel did not reach the server")
	}
	t.Logf("cancelled in %v", time.Since(start))
	var one int
	if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("session after cancel: %v", err)
	}
}

// rawSession logs in as the trust user over a raw socket.
func rawSession(t *testing.T, addr string) (net.Conn, *pgproto3.Frontend) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	fe := pgproto3.NewFrontend(conn, conn)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": trustUser, "database": "postgres"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	readUntilReady(t, fe)
	return conn, fe
}

func readUntilReady(t *testing.T, fe *pgproto3.Frontend) []pgproto3.BackendMessage {
	t.Helper()
	var got []pgproto3.BackendMessage
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("receive: %v (after %d messages)", err, len(got))
		}
		got = append(got, msg)
		if e, ok := msg.(*pgproto3.ErrorResponse); ok && e.Severity == "FATAL" {
			t.Fatalf("FATAL: %s", e.Message)
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			return got
		}
	}
}

// expectProtocolError: the router answers with an 08P01 ErrorResponse
// and closes the connection.
func expectProtocolError(t *testing.T, conn net.Conn, fe *pgproto3.Frontend, what string) {
	t.Helper()
	sawErr := false
	for {
		msg, err := fe.Receive()
		if err != nil {
			if !sawErr {
				t.Errorf("%s: connection closed without an ErrorResponse (%v)", what, err)
			}
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || strings.Contains(err.Error(), "reset") {
				return
			}
			t.Errorf("%s: %v", what, err)
			return
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			if e.Code != "08P01" {
				t.Errorf("%s: error %s %s", what, e.Code, e.Message)
			}
			sawErr = true
		}
	}
}

func testBadInput(t *testing.T, tr *testRouter) {
	ctx := testContext(t)
	raw := func(b ...[]byte) []byte { return bytes.Join(b, nil) }
	hdr := func(typ byte, n uint32) []byte {
		b := []byte{typ, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(b[1:], n)
		return b
	}
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"absurd length", hdr('Q', 0x7ffffff0)},
		{"negative length", hdr('Q', 0xfffffff0)},
		{"length below 4", hdr('P', 2)},
		{"unknown type", raw(hdr('z', 8), []byte("abcd"))},
		{"bad Parse body", raw(hdr('P', 6), []byte("ab"))},
		{"bad Bind body", raw(hdr('B', 9), []byte("\x00\x00\xff\xff\xff"))},
	} {
		conn, fe := rawSession(t, tr.rw)
		if _, err := conn.Write(tc.data); err != nil {
			t.Fatal(err)
		}
		expectProtocolError(t, conn, fe, tc.name)
	}
	// A garbage startup packet.
	for _, data := range [][]byte{{0, 0, 0, 3}, {0xff, 0xff, 0xff, 0xff, 1, 2, 3}, {0, 0, 0, 8, 0, 1, 2, 3}} {
		conn, err := net.Dial("tcp", tr.rw)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		conn.Write(data)
		io.Copy(io.Discard, conn) // the router closes it
		conn.Close()
	}
	// Vanishing mid-transaction, mid-query and mid-COPY: the server
	// connections are closed, not pooled in an unknown state.
	for _, steps := range [][]string{
		{"BEGIN", "INSERT INTO kv VALUES ('vanish', 'v') ON CONFLICT DO NOTHING"},
		{"COPY kv FROM STDIN"},
	} {
		conn, fe := rawSession(t, tr.rw)
		for _, q := range steps {
			fe.Send(&pgproto3.Query{String: q})
			fe.Flush()
			if strings.HasPrefix(q, "COPY") {
				for {
					msg, err := fe.Receive()
					if err != nil {
						t.Fatal(err)
					}
					if _, ok := msg.(*pgproto3.CopyInResponse); ok {
						break
					}
				}
				fe.Send(&pgproto3.CopyData{Data: []byte("half-a-row")})
				fe.Flush()
				continue
			}
			readUntilReady(t, fe)
		}
		conn.Close()
	}
	// Vanishing mid-query, with a statement that would outlive the test:
	// the router must stop it on the server. Once as soon as the router
	// has a server connection for it, once when the server runs it, and
	// once behind a pipelined short statement: the first cancel request
	// hits the short one, and a router that cancels only once leaves the
	// long one running.
	const sleeper = "SELECT pg_sleep(600) WHERE nextval('seq') > 0" // a write: on the primary
	const short = "SELECT pg_sleep(0.3) WHERE nextval('seq') > 0"
	for _, when := range []string{"attached", "running", "pipelined"} {
		conn, fe := rawSession(t, tr.rw)
		if when == "pipelined" {
			fe.Send(&pgproto3.Query{String: short})
		}
		fe.Send(&pgproto3.Query{String: sleeper})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		wait.For(t, 10*time.Second, "the statement to reach the server ("+when+")", func() (bool, string) {
			switch when {
			case "attached":
				return activeConns(tr) > 0, "no server connection attached"
			case "pipelined":
				return serverRunning(t, tr, short) > 0, "short statement not running on the server"
			}
			return serverRunning(t, tr, sleeper) > 0, "statement not running on the server"
		})
		conn.Close()
		waitPoolsIdle(t, tr)
		// The primary has no session left running the statement or idle
		// in a transaction, long before pg_sleep would end.
		wait.For(t, 20*time.Second, "the primary's router sessions to go idle", func() (bool, string) {
			var busy []string
			tr.cl.primary.Query(ctx, func(pc *pgx.Conn) error {
				rows, _ := pc.Query(ctx, "SELECT state || ': ' || query FROM pg_stat_activity WHERE application_name = 'pgha-router' AND (state <> 'idle' OR xact_start IS NOT NULL)")
				busy, _ = pgx.CollectRows(rows, pgx.RowTo[string])
				return nil
			})
			return len(busy) == 0, fmt.Sprintf("vanished %s: router sessions busy on the primary: %q", when, busy)
		})
		if n := serverRunning(t, tr, sleeper); n > 0 {
			t.Fatalf("vanished %s: the statement still runs on %d servers", when, n)
		}
	}
	// And the router still serves.
	c := connect(t, tr.rw, trustUser, "")
	var one int
	if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
	if tr.Snapshot().ProtocolErrors == 0 {
		t.Error("no protocol errors counted")
	}
}

// serverRunning counts the sessions running sql on any server.
func serverRunning(t *testing.T, tr *testRouter, sql string) int {
	ctx := testContext(t)
	total := 0
	for _, inst := range tr.cl.all() {
		var n int
		inst.Query(ctx, func(pc *pgx.Conn) error {
			return pc.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'", sql).Scan(&n)
		})
		total += n
	}
	return total
}

func activeConns(tr *testRouter) int {
	n := 0
	for _, p := range tr.Snapshot().Pools {
		n += p.Active
	}
	return n
}

// waitPoolsIdle: once clients are gone, no server connection is in use.
func waitPoolsIdle(t *testing.T, tr *testRouter) {
	t.Helper()
	wait.For(t, 20*time.Second, "the pools to go idle", func() (bool, string) {
		return activeConns(tr) == 0, fmt.Sprintf("pools still in use: %+v", tr.Snapshot().Pools)
	})
}

func testSwitch(t *testing.T, cl *cluster) {
	ctx := testContext(t)
	cfg := routerConfig(router.PoolTransaction)
	cfg.DisableLoadBalance = true
	tr := startRouter(t, cl, cfg)
	c := connect(t, tr.rw, trustUser, "")
	if s := tr.serverOf(t, c, "SELECT inet_server_port()"); s != "primary" {
		t.Fatalf("load balancing off: read on %s", s)
	}
	// A transaction in flight on the primary.
	inflight := connect(t, tr.rw, trustUser, "")
	tx, err := inflight.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	// Hold: a new transaction waits; a switch of the topology's primary
	// (here to standby1, as if it were promoted) releases it there.
	holdCtx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	err = tr.Hold(holdCtx)
	cancel()
	if err == nil {
		t.Fatal("Hold returned while a transaction was in flight")
	}
	bs := cl.backends()
	bs[0].Primary, bs[1].Primary = false, true
	tr.topo.Set(bs...)
	wait.For(t, 10*time.Second, "the topology change", func() (bool, string) {
		return tr.PoolNodes()[1].Role == "primary", "topology change not applied"
	})
	// The in-flight transaction gets a clean error, not a hang.
	if _, err := tx.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("in-flight transaction on the former primary continued")
	}
	if err := tr.Hold(ctx); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	go func() {
		var port int
		err := c.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- cl.portName(port)
	}()
	select {
	case s := <-got:
		t.Fatalf("a held transaction ran: %s", s)
	case <-time.After(300 * time.Millisecond): // it must still be waiting
	}
	tr.Resume()
	if s := <-got; s != "standby1" {
		t.Fatalf("after the switch a new transaction ran on %s, want standby1", s)
	}
}

// Reconfigure changes routing while the router serves: a session's reads
// move to the primary when load balancing is turned off and back when it is
// on, hba rules apply to the next login (not to sessions already in), and
// an invalid configuration changes nothing.
func testReconfigure(t *testing.T, cl *cluster) {
	ctx := testContext(t)
	cfg := routerConfig(router.PoolTransaction)
	tr := startRouter(t, cl, cfg)
	c := connect(t, tr.rw, trustUser, "")
	read := "SELECT inet_server_port()"
	wait.For(t, 10*time.Second, "a read on a standby", func() (bool, string) {
		s := tr.serverOf(t, c, read)
		return s != "primary", s
	})
	off := cfg
	off.DisableLoadBalance = true
	if err := tr.Reconfigure(off); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if s := tr.serverOf(t, c, read); s != "primary" {
			t.Fatalf("load balancing turned off: a read on %s", s)
		}
	}
	bad := cfg
	bad.PoolMode = "statement-ish"
	if err := tr.Reconfigure(bad); err == nil {
		t.Fatal("an invalid pool mode was accepted")
	}
	if s := tr.serverOf(t, c, read); s != "primary" {
		t.Fatalf("a refused Reconfigure changed the routing: a read on %s", s)
	}
	reject := cfg
	reject.HBA = append([]router.HBARule{{Users: []string{trustUser}, Method: router.AuthReject}}, cfg.HBA...)
	if err := tr.Reconfigure(reject); err != nil {
		t.Fatal(err)
	}
	if c2, err := pgx.Connect(ctx, connString(tr.rw, trustUser, "")); err == nil {
		c2.Close(ctx)
		t.Fatal("a login the new hba rejects was let in")
	}
	wait.For(t, 10*time.Second, "reads on a standby again, in the session logged in before", func() (bool, string) {
		s := tr.serverOf(t, c, read)
		return s != "primary", s
	})
}

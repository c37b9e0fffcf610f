package router_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
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

// testFastPath covers the poller's fast path (fast.go): what it serves
// itself, and every way it hands a session back to the general path.
func testFastPath(t *testing.T, cl *cluster) {
	cfg := routerConfig(router.PoolTransaction)
	cfg.PoolSize = 2 // small, so that sessions queue
	tr := startRouter(t, cl, cfg)
	simple := pgx.QueryExecModeSimpleProtocol

	t.Run("Serves", func(t *testing.T) {
		ctx := testContext(t)
		c := connect(t, tr.rw, trustUser, "")
		// The first read on each standby pool dials, which the fast path
		// leaves to the general path; warm both pools so that what is
		// measured below is the steady state.
		for range 20 {
			if _, err := c.Exec(ctx, "SELECT 1", simple); err != nil {
				t.Fatal(err)
			}
		}
		before := tr.Snapshot()
		seen := map[string]int{}
		for i := range 200 {
			var n, port int
			if err := c.QueryRow(ctx, "SELECT $1::int * 3, inet_server_port()", simple, i).Scan(&n, &port); err != nil || n != 3*i {
				t.Fatalf("query %d: %d %v", i, n, err)
			}
			seen[tr.cl.portName(port)]++
		}
		after := tr.Snapshot()
		// A message split across two reads is also handed back, so allow
		// a couple; a fast path that stopped serving would fall far short.
		if d := after.FastPath - before.FastPath; d < 198 {
			t.Errorf("fast path served %d of 200 simple reads", d)
		}
		if seen["primary"] > 0 || len(seen) != 1 {
			t.Errorf("fast-path reads went to %v, want one standby (the session's reads alone stay on one)", seen)
		}
		if d := after.ReadsToStandby - before.ReadsToStandby; d < 200 {
			t.Errorf("reads_standby grew by %d for 200 reads", d)
		}
		// An error from the server is an answer like any other.
		_, err := c.Exec(ctx, "SELECT 1/0", simple)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "22012" {
			t.Fatalf("SELECT 1/0: want 22012, got %v", err)
		}
		var one int
		if err := c.QueryRow(ctx, "SELECT 1", simple).Scan(&one); err != nil || one != 1 {
			t.Fatalf("after an error: %d %v", one, err)
		}
	})

	t.Run("PreparedStatements", func(t *testing.T) {
		ctx := testContext(t)
		// pgx's default mode: each statement is prepared once (a named
		// Parse), then run as Bind, Execute, Sync.
		c := connect(t, tr.rw, trustUser, "")
		run := func(i int) string {
			var n, port int
			if err := c.QueryRow(ctx, "SELECT $1::int * 5, inet_server_port()", i).Scan(&n, &port); err != nil || n != 5*i {
				t.Fatalf("prepared run %d: %d %v", i, n, err)
			}
			return tr.cl.portName(port)
		}
		for i := range 20 { // prepares, and warms both standby pools
			run(i)
		}
		before := tr.Snapshot()
		seen := map[string]int{}
		for i := range 200 {
			seen[run(i)]++
		}
		after := tr.Snapshot()
		if d := after.FastPath - before.FastPath; d < 198 {
			t.Errorf("fast path served %d of 200 prepared reads", d)
		}
		if seen["primary"] > 0 || len(seen) != 1 {
			t.Errorf("prepared reads went to %v, want one standby (the session's reads alone stay on one)", seen)
		}

		// The raw protocol: no ParseComplete of a Parse the router put
		// before the client's Bind may reach the client.
		conn, fe := rawSession(t, tr.rw)
		defer conn.Close()
		kinds := func(msgs []pgproto3.BackendMessage) string {
			var k []string
			for _, m := range msgs {
				k = append(k, strings.TrimPrefix(fmt.Sprintf("%T", m), "*pgproto3."))
			}
			return strings.Join(k, ",")
		}
		fe.Send(&pgproto3.Parse{Name: "s42", Query: "SELECT 42"})
		fe.Send(&pgproto3.Parse{Name: "missing", Query: "SELECT * FROM no_such_table_fast"})
		fe.Send(&pgproto3.Sync{})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		if got := kinds(readUntilReady(t, fe)); got != "ParseComplete,ParseComplete,ReadyForQuery" {
			t.Fatalf("prepare: %s", got)
		}
		before = tr.Snapshot()
		const runs = 10 // on both standbys' connections, new and reused
		for range runs {
			fe.Send(&pgproto3.Bind{PreparedStatement: "s42"})
			fe.Send(&pgproto3.Describe{ObjectType: 'P'})
			fe.Send(&pgproto3.Execute{})
			fe.Send(&pgproto3.Sync{})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			if got, want := kinds(readUntilReady(t, fe)), "BindComplete,RowDescription,DataRow,CommandComplete,ReadyForQuery"; got != want {
				t.Fatalf("Bind s42: %s, want %s", got, want)
			}
			// A statement PostgreSQL refuses fails where the client uses
			// it, every time: a failed injected Parse is not recorded as
			// prepared on that connection (else: 26000, no such statement).
			fe.Send(&pgproto3.Bind{PreparedStatement: "missing"})
			fe.Send(&pgproto3.Execute{})
			fe.Send(&pgproto3.Sync{})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			msgs := readUntilReady(t, fe)
			if len(msgs) != 2 {
				t.Fatalf("Bind missing: %s", kinds(msgs))
			}
			if e, ok := msgs[0].(*pgproto3.ErrorResponse); !ok || e.Code != "42P01" {
				t.Fatalf("Bind missing: %s %+v, want ErrorResponse 42P01", kinds(msgs), msgs[0])
			}
		}
		if d := tr.Snapshot().FastPath - before.FastPath; d < 2*runs-2 {
			t.Errorf("fast path served %d of %d raw prepared runs", d, 2*runs)
		}
	})

	t.Run("WritesAndTransactions", func(t *testing.T) {
		ctx := testContext(t)
		c := connect(t, tr.rw, trustUser, "")
		for i := range 20 {
			key := fmt.Sprintf("fast-%d", i)
			if w := tr.serverOf(t, c, "INSERT INTO kv VALUES ($1, 'w') ON CONFLICT (k) DO UPDATE SET v = 'w' RETURNING inet_server_port()", key); w != "primary" {
				t.Fatalf("write ran on %s", w)
			}
			// Read-your-writes holds on the fast path too.
			var v string
			if err := c.QueryRow(ctx, "SELECT v FROM kv WHERE k = $1", simple, key).Scan(&v); err != nil || v != "w" {
				t.Fatalf("read after write %d: %q %v", i, v, err)
			}
		}
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var inTx, port int
		if err := tx.QueryRow(ctx, "SELECT txid_current(), inet_server_port()", simple).Scan(&inTx, &port); err != nil {
			t.Fatal(err)
		}
		if name := tr.cl.portName(port); name != "primary" {
			t.Errorf("a read inside a transaction ran on %s", name)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("ReadYourWritesPosition", func(t *testing.T) {
		ctx := testContext(t)
		c := connect(t, tr.rw, trustUser, "")
		write := func(v int) {
			t.Helper()
			if _, err := c.Exec(ctx, fmt.Sprintf("INSERT INTO kv VALUES ('fast-ryw', '%d') ON CONFLICT (k) DO UPDATE SET v = '%d'", v, v), simple); err != nil {
				t.Fatal(err)
			}
		}
		// Fill the primary's pool (two connections): a read right after a
		// write may need the second while the first answers the position
		// question, and dialling is the general path's.
		var txs []pgx.Tx
		for range 2 {
			tx, err := connect(t, tr.rw, trustUser, "").Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			txs = append(txs, tx)
		}
		for _, tx := range txs {
			tx.Commit(ctx)
		}
		write(0)
		before := tr.Snapshot()
		for i := 1; i <= 10; i++ {
			write(i)
			var v string
			if err := c.QueryRow(ctx, "SELECT v FROM kv WHERE k = 'fast-ryw'", simple).Scan(&v); err != nil || v != strconv.Itoa(i) {
				t.Fatalf("read after write %d: %q %v", i, v, err)
			}
		}
		after := tr.Snapshot()
		if after.FastHandBacks != before.FastHandBacks {
			t.Errorf("%d hand-backs for simple writes and reads", after.FastHandBacks-before.FastHandBacks)
		}
		// The position was fetched (on the loop, after each write): once
		// the standbys replayed it, the session's reads go back to them.
		wait.For(t, 20*time.Second, "the session's reads to return to the standbys", func() (bool, string) {
			tr.refreshLSN(t)
			var port int
			if err := c.QueryRow(ctx, "SELECT inet_server_port()", simple).Scan(&port); err != nil {
				t.Fatal(err)
			}
			return tr.cl.portName(port) != "primary", "reads still on the primary"
		})
		// ... and each connection that answered went back to the pool.
		if d := primaryConnects(tr.Snapshot()) - primaryConnects(before); d != 0 {
			t.Errorf("%d new connections to the primary for 10 writes", d)
		}
	})

	t.Run("TransactionBlocks", func(t *testing.T) {
		conn, fe := rawSession(t, tr.rw)
		defer conn.Close()
		query := func(sql string, wantStatus byte) []string {
			t.Helper()
			fe.Send(&pgproto3.Query{String: sql})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			var rows []string
			for {
				m, err := fe.Receive()
				if err != nil {
					t.Fatalf("%s: %v", sql, err)
				}
				switch m := m.(type) {
				case *pgproto3.DataRow:
					rows = append(rows, string(m.Values[0]))
				case *pgproto3.ErrorResponse:
					rows = append(rows, "error "+m.Code)
				case *pgproto3.ReadyForQuery:
					if m.TxStatus != wantStatus {
						t.Fatalf("%s: ReadyForQuery %c, want %c", sql, m.TxStatus, wantStatus)
					}
					return rows
				}
			}
		}
		// A whole transaction, statement by statement, on the loop: one
		// transaction counted, on the primary, nothing handed back.
		// Warm-up: the primary's pool has a connection, so the next
		// transaction needs no dial (which the general path does).
		query("BEGIN", 'T')
		query("COMMIT", 'I')
		before := tr.Snapshot()
		query("BEGIN", 'T')
		query("INSERT INTO kv VALUES ('fast-tx', 'one') ON CONFLICT (k) DO UPDATE SET v = 'one'", 'T')
		if got := query("SELECT v FROM kv WHERE k = 'fast-tx'", 'T'); len(got) != 1 || got[0] != "one" {
			t.Fatalf("own write inside the transaction: %v", got)
		}
		ports := query("SELECT inet_server_port()", 'T')
		if got := query("SELECT 1/0", 'E'); len(got) != 1 || got[0] != "error 22012" {
			t.Fatalf("error in a transaction: %v", got)
		}
		query("ROLLBACK", 'I')
		after := tr.Snapshot()
		if len(ports) != 1 || tr.cl.portName(atoi(t, ports[0])) != "primary" {
			t.Errorf("the transaction ran on port %v, want the primary", ports)
		}
		if d := after.FastPath - before.FastPath; d != 1 {
			t.Errorf("fast path counted %d transactions for one", d)
		}
		if after.FastHandBacks != before.FastHandBacks {
			t.Errorf("%d hand-backs during a simple transaction", after.FastHandBacks-before.FastHandBacks)
		}
		if d := after.WritesToPrimary - before.WritesToPrimary; d != 1 {
			t.Errorf("writes counted %d for one transaction", d)
		}
		if got := query("SELECT count(*) FROM kv WHERE k = 'fast-tx'", 'I'); len(got) != 1 || got[0] != "0" {
			t.Errorf("rolled-back insert visible: %v", got)
		}

		// A Parse inside the transaction hands the session back with the
		// server connection attached: the general path finishes the
		// transaction on it.
		query("BEGIN", 'T')
		query("INSERT INTO kv VALUES ('fast-tx', 'two') ON CONFLICT (k) DO UPDATE SET v = 'two'", 'T')
		fe.Send(&pgproto3.Parse{Name: "in_tx", Query: "SELECT v FROM kv WHERE k = 'fast-tx'"})
		fe.Send(&pgproto3.Bind{PreparedStatement: "in_tx"})
		fe.Send(&pgproto3.Execute{})
		fe.Send(&pgproto3.Sync{})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		if got := firstColumns(t, fe, 1); len(got) != 1 || got[0] != "two" {
			t.Fatalf("prepared read inside the transaction: %v", got)
		}
		query("COMMIT", 'I')
		if n := primaryCount(t, tr, "SELECT count(*) FROM kv WHERE k = 'fast-tx' AND v = 'two'"); n != 1 {
			t.Fatalf("after COMMIT the primary has %d rows of the transaction's update, want 1", n)
		}
		waitPoolsIdle(t, tr)
	})

	t.Run("ClientVanishesInTransaction", func(t *testing.T) {
		ctx := testContext(t)
		conn, fe := rawSession(t, tr.rw)
		for _, sql := range []string{"SELECT 1", "BEGIN", "INSERT INTO kv VALUES ('fast-vanish', 'x')"} {
			fe.Send(&pgproto3.Query{String: sql})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			readUntilReady(t, fe)
		}
		conn.Close()
		// The server connection, in a transaction, never goes back to the
		// pool as it is: the insert is never committed, and every
		// connection is free again.
		waitPoolsIdle(t, tr)
		for range 4 { // more than the primary's pool holds
			// Inside a transaction, on the primary's pool: a connection
			// still in the vanished client's transaction would see its
			// uncommitted row.
			c := connect(t, tr.rw, trustUser, "")
			tx, err := c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var n int
			if err := tx.QueryRow(ctx, "SELECT count(*) FROM kv WHERE k = 'fast-vanish'", pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil || n != 0 {
				t.Fatalf("after the client vanished in a transaction: %d rows, %v", n, err)
			}
			tx.Rollback(ctx)
			c.Close(ctx)
		}
		if n := primaryCount(t, tr, "SELECT count(*) FROM kv WHERE k = 'fast-vanish'"); n != 0 {
			t.Fatalf("the vanished client's insert: %d rows", n)
		}
	})

	t.Run("PipelinedQueries", func(t *testing.T) {
		conn, fe := rawSession(t, tr.rw)
		before := tr.Snapshot()
		// Two Query messages in one write: the fast path hands them to
		// the general path, which answers both, in order.
		fe.Send(&pgproto3.Query{String: "SELECT 'first'"})
		fe.Send(&pgproto3.Query{String: "SELECT 'second'; SELECT 'third'"})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		got := firstColumns(t, fe, 2)
		if strings.Join(got, ",") != "first,second,third" {
			t.Errorf("pipelined answers: %v", got)
		}
		if tr.Snapshot().FastHandBacks == before.FastHandBacks {
			t.Error("the pipelined batch was not handed back")
		}
		conn.Close()
	})

	t.Run("QuerySentWhileOneRuns", func(t *testing.T) {
		conn, fe := rawSession(t, tr.rw)
		defer conn.Close()
		const slow = "SELECT 'a' FROM pg_sleep(0.2) /* fast sent while running */"
		fe.Send(&pgproto3.Query{String: slow})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		// The router read the first query and the server runs it: the
		// second arrives on its own, while the fast path waits for the
		// server. The client socket is edge-triggered, so the router
		// must remember to read it afterwards.
		waitActive(t, tr, slow, true)
		fe.Send(&pgproto3.Query{String: "SELECT 'b'"})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		got := firstColumns(t, fe, 2)
		if strings.Join(got, ",") != "a,b" {
			t.Errorf("answers %v, want a,b", got)
		}
	})

	t.Run("LargeAnswers", func(t *testing.T) {
		ctx := testContext(t)
		c := connect(t, tr.rw, trustUser, "")
		// One row larger than the fast path's buffer: handed back in
		// flight, relayed by a pump.
		var s string
		if err := c.QueryRow(ctx, "SELECT repeat('x', 200000)", simple).Scan(&s); err != nil || len(s) != 200000 {
			t.Fatalf("large row: %d bytes, %v", len(s), err)
		}
		// Many small rows, over many reads.
		var n, sum int64
		rows, err := c.Query(ctx, "SELECT g FROM generate_series(1, 50000) g", simple)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var g int64
			if err := rows.Scan(&g); err != nil {
				t.Fatal(err)
			}
			n++
			sum += g
		}
		if err := rows.Err(); err != nil || n != 50000 || sum != 50000*50001/2 {
			t.Fatalf("generate_series: %d rows, sum %d, %v", n, sum, err)
		}
	})

	t.Run("SlowClient", func(t *testing.T) {
		// The client does not read: the server must block on it
		// (ClientWrite), not the router buffer the whole answer.
		conn, fe := rawSession(t, tr.rw)
		// About 110 MB: more than every socket buffer on the way can hold
		// (the receive buffer's autotuning goes up to 32 MB here).
		const sql = "SELECT g, repeat('y', 100) FROM generate_series(1, 1000000) g /* slow client */"
		fe.Send(&pgproto3.Query{String: sql})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		ctx := testContext(t)
		wait.For(t, 20*time.Second, "a server to block writing "+sql, func() (bool, string) {
			for _, inst := range tr.cl.all() {
				var n int
				inst.Query(ctx, func(pc *pgx.Conn) error {
					return pc.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND wait_event = 'ClientWrite'", sql).Scan(&n)
				})
				if n > 0 {
					return true, ""
				}
			}
			var seen []string
			for _, inst := range tr.cl.all() {
				inst.Query(ctx, func(pc *pgx.Conn) error {
					rows, _ := pc.Query(ctx, "SELECT coalesce(state, '') || ' ' || coalesce(wait_event, '') FROM pg_stat_activity WHERE query = $1", sql)
					more, _ := pgx.CollectRows(rows, pgx.RowTo[string])
					seen = append(seen, more...)
					return nil
				})
			}
			return false, fmt.Sprintf("the server is not blocked writing to the router: %q", seen)
		})
		rows := 0
		for _, m := range readUntilReady(t, fe) {
			if _, ok := m.(*pgproto3.DataRow); ok {
				rows++
			}
		}
		if rows != 1000000 {
			t.Errorf("slow client got %d rows", rows)
		}
		conn.Close()
	})

	t.Run("Cancel", func(t *testing.T) {
		ctx := testContext(t)
		c := connect(t, tr.rw, trustUser, "")
		done := make(chan error, 1)
		go func() {
			_, err := c.Exec(ctx, "SELECT pg_sleep(60) /* fast cancel */", simple)
			done <- err
		}()
		waitActive(t, tr, "SELECT pg_sleep(60) /* fast cancel */", true)
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
		var one int
		if err := c.QueryRow(ctx, "SELECT 1", simple).Scan(&one); err != nil || one != 1 {
			t.Fatalf("session after cancel: %v", err)
		}
	})

	t.Run("ClientVanishes", func(t *testing.T) {
		conn, fe := rawSession(t, tr.rw)
		const sql = "SELECT pg_sleep(60) /* fast vanish */"
		fe.Send(&pgproto3.Query{String: sql})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		waitActive(t, tr, sql, true)
		conn.Close()
		// The router cancels what the client left running and the
		// connection goes back to the pool.
		waitActive(t, tr, sql, false)
		waitPoolsIdle(t, tr)
	})

	t.Run("ClientHangsUpBehindItsQuery", func(t *testing.T) {
		// The query and the end of the stream in one go: the router sees
		// them in one edge-triggered event, or two. Either way it must
		// not wait for a hang-up it was already told about.
		const sql = "SELECT pg_sleep(60) /* fast hang-up */"
		msg, err := (&pgproto3.Query{String: sql}).Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		for range 10 {
			conn, _ := rawSession(t, tr.rw)
			conn.Write(msg)
			conn.(*net.TCPConn).CloseWrite()
			io.Copy(io.Discard, conn) // until the router closes it
			conn.Close()
		}
		waitActive(t, tr, sql, false)
		waitPoolsIdle(t, tr)
		if n := tr.Snapshot().ClientsActive; n != 0 {
			t.Errorf("%d client sessions left", n)
		}
	})

	t.Run("ServerLost", func(t *testing.T) {
		ctx := testContext(t)
		c := connect(t, tr.rw, trustUser, "")
		const sql = "SELECT pg_sleep(60) /* fast lost */"
		done := make(chan error, 1)
		go func() {
			_, err := c.Exec(ctx, sql, simple)
			done <- err
		}()
		waitActive(t, tr, sql, true)
		for _, inst := range tr.cl.all() {
			inst.Query(ctx, func(pc *pgx.Conn) error {
				_, err := pc.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1", sql)
				return err
			})
		}
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("a query whose server connection died succeeded")
			}
			t.Logf("client saw: %v", err)
		case <-time.After(20 * time.Second):
			t.Fatal("the client hangs after its server connection died")
		}
		c2 := connect(t, tr.rw, trustUser, "")
		var one int
		if err := c2.QueryRow(ctx, "SELECT 1", simple).Scan(&one); err != nil || one != 1 {
			t.Fatalf("new session after a lost server: %v", err)
		}
	})

	t.Run("QueueForFullPool", func(t *testing.T) {
		// Six sessions, two connections per pool: fast-path sessions
		// wait their turn in the pool's queue, in order, and all finish.
		before := tr.Snapshot()
		concurrentSessions(t, tr.ro, 6, 15, "SELECT $1::int FROM pg_sleep(0.01)")
		after := tr.Snapshot()
		if after.PoolWaits == before.PoolWaits {
			t.Error("no session queued for a connection")
		}
		if after.FastPath-before.FastPath < 45 {
			t.Errorf("fast path served %d of 90 queued reads", after.FastPath-before.FastPath)
		}
		for _, p := range after.Pools {
			if p.Total > cfg.PoolSize {
				t.Errorf("pool %s has %d connections, more than pool_size %d", p.Backend, p.Total, cfg.PoolSize)
			}
		}
		waitPoolsIdle(t, tr)
	})

	t.Run("QueueForPrimaryThenHold", func(t *testing.T) {
		// Writes queue for the primary's two connections on the fast
		// path; each one is counted on its way to the primary until it
		// holds a connection (Router.Hold waits for those), and none is
		// left counted afterwards: Hold returns at once.
		before := tr.Snapshot()
		concurrentSessions(t, tr.rw, 6, 10, "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) SELECT 1, 1, $1::int, 0, now() FROM pg_sleep(0.01) RETURNING aid")
		if after := tr.Snapshot(); after.PoolWaits == before.PoolWaits {
			t.Error("no write queued for a connection to the primary")
		}
		ctx, cancel := context.WithTimeout(testContext(t), 5*time.Second)
		defer cancel()
		if err := tr.Hold(ctx); err != nil {
			t.Errorf("Hold after the writes: %v", err)
		}
		tr.Resume()
		waitPoolsIdle(t, tr)
	})

	t.Run("Disabled", func(t *testing.T) {
		cfg := routerConfig(router.PoolTransaction)
		cfg.DisableFastPath = true
		tr := startRouter(t, cl, cfg)
		ctx := testContext(t)
		c := connect(t, tr.rw, trustUser, "")
		for range 20 {
			var one int
			if err := c.QueryRow(ctx, "SELECT 1", simple).Scan(&one); err != nil {
				t.Fatal(err)
			}
		}
		if s := tr.Snapshot(); s.FastPath != 0 || s.FastHandBacks != 0 {
			t.Errorf("DisableFastPath: fast path served %d, handed back %d", s.FastPath, s.FastHandBacks)
		}
	})
	waitPoolsIdle(t, tr)
}

// waitActive waits until sql is running (active) on some server, or until
// it runs nowhere.
func waitActive(t *testing.T, tr *testRouter, sql string, want bool) {
	t.Helper()
	wait.For(t, 20*time.Second, fmt.Sprintf("%q running: %v", sql, want), func() (bool, string) {
		running := serverRunning(t, tr, sql) > 0
		return running == want, fmt.Sprintf("%q running: %v, want %v", sql, running, want)
	})
}

// firstColumns reads answers up to the readies-th ReadyForQuery and
// returns the first column of every row.
func firstColumns(t *testing.T, fe *pgproto3.Frontend, readies int) []string {
	t.Helper()
	var got []string
	for ready := 0; ready < readies; {
		m, err := fe.Receive()
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		switch m := m.(type) {
		case *pgproto3.DataRow:
			got = append(got, string(m.Values[0])) // copied before the next Receive
		case *pgproto3.ReadyForQuery:
			ready++
		}
	}
	return got
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// primaryCount runs a count on the primary directly.
func primaryCount(t *testing.T, tr *testRouter, sql string) int {
	t.Helper()
	ctx := testContext(t)
	var n int
	if err := tr.cl.primary.Query(ctx, func(pc *pgx.Conn) error { return pc.QueryRow(ctx, sql).Scan(&n) }); err != nil {
		t.Fatal(err)
	}
	return n
}

func primaryConnects(s router.StatsSnapshot) int64 {
	var n int64
	for _, p := range s.Pools {
		if p.Backend == "primary" {
			n += p.Connects
		}
	}
	return n
}

// concurrentSessions runs sql, which takes an int and returns it, count
// times in each of n sessions at once through addr (simple protocol), and
// checks every answer.
func concurrentSessions(t *testing.T, addr string, n, count int, sql string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		c := connect(t, addr, trustUser, "")
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := testContext(t)
			for j := range count {
				var got int
				if err := c.QueryRow(ctx, sql, pgx.QueryExecModeSimpleProtocol, i*100+j).Scan(&got); err != nil || got != i*100+j {
					errs <- fmt.Errorf("session %d statement %d: %d %v", i, j, got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

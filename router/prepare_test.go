package router_test

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgha/pgha/router"
)

// testPrepareWhilePoolBusy is the deadlock of pgbench -M prepared -c 64
// -j 2 with a pool of 20: pgbench prepares with a synchronous PQprepare
// (Parse, Sync) that blocks its thread while the thread's other clients
// hold every primary connection idle in a transaction. Here two sessions
// hold the two connections of the pool in BEGIN while a third prepares:
// the router must answer the prepare without a server connection. A
// statement the server refuses is then reported at its first use, every
// time it is used.
func testPrepareWhilePoolBusy(t *testing.T, cl *cluster) {
	ctx := testContext(t)
	cfg := routerConfig(router.PoolTransaction)
	cfg.PoolSize = 2
	cfg.DisableLoadBalance = true // everything on the primary's pool
	tr := startRouter(t, cl, cfg)

	conn, fe := rawSession(t, tr.rw) // logs in before the pool is full
	var holders []pgx.Tx
	for range cfg.PoolSize {
		tx, err := connect(t, tr.rw, trustUser, "").Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		holders = append(holders, tx)
	}
	if n := activeConns(tr); n != cfg.PoolSize {
		t.Fatalf("%d server connections in use, want the whole pool (%d)", n, cfg.PoolSize)
	}

	// Prepare-only batches, as PQprepare sends them: answered at once.
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fe.Send(&pgproto3.Parse{Name: "ins", Query: "INSERT INTO kv VALUES ($1, 'prepared') ON CONFLICT (k) DO UPDATE SET v = excluded.v"})
	fe.Send(&pgproto3.Sync{})
	fe.Send(&pgproto3.Parse{Name: "bad", Query: "SELEKT 1"})
	fe.Send(&pgproto3.Sync{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, what := range []string{"ins", "bad"} {
		got := readUntilReady(t, fe) // fails on the deadline without the fix
		if len(got) != 2 {
			t.Fatalf("prepare %s: %d messages %T, want ParseComplete, ReadyForQuery", what, len(got), got)
		}
		if _, ok := got[0].(*pgproto3.ParseComplete); !ok {
			t.Fatalf("prepare %s: got %T, want ParseComplete", what, got[0])
		}
		if z := got[1].(*pgproto3.ReadyForQuery); z.TxStatus != 'I' {
			t.Fatalf("prepare %s: ReadyForQuery %q", what, z.TxStatus)
		}
	}

	// The holders finish; the prepared statements run.
	for _, tx := range holders {
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	run := func(stmt string, params ...[]byte) []pgproto3.BackendMessage {
		t.Helper()
		fe.Send(&pgproto3.Bind{PreparedStatement: stmt, Parameters: params})
		fe.Send(&pgproto3.Execute{})
		fe.Send(&pgproto3.Sync{})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		return readUntilReady(t, fe)
	}
	for i := range 3 {
		got := run("ins", []byte("prepared-while-busy"))
		if _, ok := got[0].(*pgproto3.BindComplete); !ok || len(got) != 3 {
			t.Fatalf("run ins #%d: %T, want BindComplete, CommandComplete, ReadyForQuery", i, got)
		}
		// A refused statement fails at each use with the server's error, not
		// "prepared statement does not exist": no stale entry says it is
		// prepared on a server connection.
		got = run("bad")
		e, ok := got[0].(*pgproto3.ErrorResponse)
		if !ok || e.Code != "42601" || len(got) != 2 {
			t.Fatalf("run bad #%d: %T %+v, want ErrorResponse 42601, ReadyForQuery", i, got, got[0])
		}
		if z := got[1].(*pgproto3.ReadyForQuery); z.TxStatus != 'I' {
			t.Fatalf("run bad #%d: ReadyForQuery %q", i, z.TxStatus)
		}
	}
}

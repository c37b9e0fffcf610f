package router_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgha/pgha/router"
)

// testChangedResultShape: after DDL changes a prepared statement's result
// shape, the client gets PostgreSQL's 0A000 "cached plan must not change
// result type" through the router too, also when the statement runs on a
// server connection it was never prepared on (the router prepares it
// there again and would otherwise return rows of the new shape); the
// session goes on, and the statement prepared again works; and a client
// that prepares the same text after the DDL is not given the old plan's
// error on a connection that holds it. A pool of two makes the connection
// certain: another client holds the other.
func testChangedResultShape(t *testing.T, cl *cluster, noFast bool) {
	ctx := testContext(t)
	cfg := routerConfig(router.PoolTransaction)
	cfg.PoolSize = 2
	cfg.DisableFastPath = noFast
	tr := startRouter(t, cl, cfg)
	if err := cl.primary.Exec(ctx, "DROP TABLE IF EXISTS pgha_shape; CREATE TABLE pgha_shape (a int)"); err != nil {
		t.Fatal(err)
	}
	c1 := connect(t, tr.rw, trustUser, "").PgConn()
	// A write that returns rows: it runs on the primary outside a
	// transaction, where the router prepares statements again.
	const ins = "INSERT INTO pgha_shape VALUES ($1) RETURNING *"
	if _, err := c1.Prepare(ctx, "ins", ins, nil); err != nil { // Parse, Describe, Sync: the client sees one column
		t.Fatal(err)
	}
	if res := c1.ExecPrepared(ctx, "ins", [][]byte{[]byte("1")}, nil, nil).Read(); res.Err != nil || len(res.Rows) != 1 || len(res.Rows[0]) != 1 {
		t.Fatalf("ins before the DDL: %v %q", res.Err, res.Rows)
	}
	// Another client holds the connection the statement was prepared on.
	c2 := connect(t, tr.rw, trustUser, "")
	tx, err := c2.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if err := cl.primary.Exec(ctx, "ALTER TABLE pgha_shape ADD COLUMN b int"); err != nil {
		t.Fatal(err)
	}
	res := c1.ExecPrepared(ctx, "ins", [][]byte{[]byte("2")}, nil, nil).Read()
	var pgErr *pgconn.PgError
	if !errors.As(res.Err, &pgErr) || pgErr.Code != "0A000" || !strings.Contains(pgErr.Message, "cached plan must not change result type") {
		t.Fatalf("ins after the DDL on another server connection: %v, rows %q; want PostgreSQL's 0A000 cached plan must not change result type", res.Err, res.Rows)
	}
	// As PostgreSQL: it stays so until the client prepares it again.
	if res := c1.ExecPrepared(ctx, "ins", [][]byte{[]byte("3")}, nil, nil).Read(); !errors.As(res.Err, &pgErr) || pgErr.Code != "0A000" {
		t.Errorf("ins a second time after the DDL: %v; want 0A000 again", res.Err)
	}
	if err := c1.Deallocate(ctx, "ins"); err != nil {
		t.Fatal(err)
	}
	if _, err := c1.Prepare(ctx, "ins", ins, nil); err != nil {
		t.Fatal(err)
	}
	if res := c1.ExecPrepared(ctx, "ins", [][]byte{[]byte("4")}, nil, nil).Read(); res.Err != nil || len(res.Rows) != 1 || len(res.Rows[0]) != 2 {
		t.Errorf("ins prepared again: %v %q; want one row of two columns", res.Err, res.Rows)
	}
	// The failed Binds wrote nothing; the statement before and after did.
	var n int
	if err := tx.QueryRow(ctx, "SELECT count(*) FROM pgha_shape").Scan(&n); err != nil || n != 2 {
		t.Errorf("rows in pgha_shape: %d, %v; want 2 (values 1 and 4)", n, err)
	}

	// A client that prepares the same text after the DDL shares its server
	// name; run on the connection that still holds the plan from before
	// the DDL, it must get its rows, not that plan's 0A000.
	c3 := connect(t, tr.rw, trustUser, "").PgConn()
	if _, err := c3.Prepare(ctx, "ins3", ins, nil); err != nil { // on the second connection: the first is held
		t.Fatal(err)
	}
	c4 := connect(t, tr.rw, trustUser, "")
	tx4, err := c4.Begin(ctx) // holds the second connection
	if err != nil {
		t.Fatal(err)
	}
	defer tx4.Rollback(ctx)
	if _, err := tx4.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil { // frees the first
		t.Fatal(err)
	}
	if res := c3.ExecPrepared(ctx, "ins3", [][]byte{[]byte("5")}, nil, nil).Read(); res.Err != nil || len(res.Rows) != 1 || len(res.Rows[0]) != 2 {
		t.Errorf("ins3, prepared after the DDL, on the connection prepared before it: %v %q; want one row of two columns", res.Err, res.Rows)
	}
}

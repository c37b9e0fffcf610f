package router

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Result shapes of prepared statements (transaction mode).
//
// On one PostgreSQL session a prepared statement keeps the result shape
// it was prepared with: after DDL that changes it (ALTER TABLE ... ADD
// COLUMN under a SELECT *), its next Bind fails with 0A000 "cached plan
// must not change result type", and drivers (pgx, JDBC) react by
// preparing it again. Through the router a client's statement is
// prepared again on whichever server connection serves it next; there
// the new shape would come back silently, and a client that decodes rows
// by the RowDescription it was given gets rows of another shape.
//
// So the router remembers the shape each statement was first described
// with (relay), and before it prepares the statement on another server
// connection it asks that server for the shape (checkShapes: Parse,
// Describe and Flush, one round trip before the batch). Server names are
// shared by clients that prepare the same text: a connection may hold a
// plan prepared before the DDL while the client prepared its statement
// after it. Where the connection's plan is known to have another shape
// than the client's (relay records what each connection described), the
// router prepares it there again the same way (Close first). When it changed,
// every later Bind of the statement fails as PostgreSQL's would: the
// router sends a Bind of a statement that does not exist in its place, so
// that the server fails it and skips to Sync exactly as it fails a Bind
// (an open transaction is aborted too), and relay gives the client
// PostgreSQL's 0A000 instead of that error.

// shapeOf is the part of a statement's description that PostgreSQL
// compares (equalTupleDescs): the columns' names, types and modifiers,
// or no rows at all.
func shapeOf(msg pgproto3.BackendMessage) string {
	rd, ok := msg.(*pgproto3.RowDescription)
	if !ok {
		return "no data"
	}
	var b strings.Builder
	for _, f := range rd.Fields {
		fmt.Fprintf(&b, "%q %d %d %d;", f.Name, f.DataTypeOID, f.DataTypeSize, f.TypeModifier)
	}
	return b.String()
}

// changedPlanStmt names the statement the router binds in place of one
// whose shape changed; no statement of that name is ever prepared.
const changedPlanStmt = "pgha_cached_plan_changed"

// isChangedPlanError: resp is the server's answer to a Bind of
// changedPlanStmt.
func isChangedPlanError(resp *pgproto3.ErrorResponse) bool {
	return resp.Code == "26000" && strings.Contains(resp.Message, strconv.Quote(changedPlanStmt))
}

// asChangedPlan turns that answer into PostgreSQL's own error for a
// statement whose result shape changed.
func asChangedPlan(resp *pgproto3.ErrorResponse) {
	resp.Code = "0A000"
	resp.Message = "cached plan must not change result type"
	resp.Detail, resp.Hint, resp.Routine, resp.File, resp.Line = "", "", "RevalidateCachedQuery", "plancache.c", 0
}

// needsShapeCheck: before st runs on sc outside a transaction, checkShapes
// must ask sc for its shape: the client has seen one, and sc lacks the
// statement or holds it with another shape. mu held, or the session on
// the fast path.
func needsShapeCheck(sc *serverConn, st *stmt) bool {
	if st.shape == "" || st.changed {
		return false
	}
	if !sc.prepared[st.serverName] {
		return true
	}
	shape, ok := sc.shapes[st.serverName]
	return ok && shape != st.shape
}

// noteServerShape records that sc described st's server-side statement
// with shape. mu held.
func noteServerShape(sc *serverConn, st *stmt, shape string) {
	if sc.shapes == nil {
		sc.shapes = map[string]string{}
	}
	sc.shapes[st.serverName] = shape
}

// checkShapes prepares on sc, before the pending batch is sent, every
// statement the batch binds or describes that sc lacks or holds with
// another shape than the client has seen, and marks those whose shape
// changed since the client saw it. sc is idle,
// outside a transaction (dispatch). A statement the server refuses stays
// unprepared: the batch prepares it again and the client gets the error
// in its place.
func (c *client) checkShapes(sc *serverConn) error {
	if !c.txnMode {
		return nil
	}
	var check []*stmt
	c.mu.Lock()
	for _, m := range c.pending {
		var name string
		switch m := m.(type) {
		case *pgproto3.Bind:
			name = m.PreparedStatement
		case *pgproto3.Describe:
			if m.ObjectType != 'S' {
				continue
			}
			name = m.Name
		default:
			continue
		}
		if st := c.stmtFor(name); st != nil && needsShapeCheck(sc, st) && !slices.Contains(check, st) {
			check = append(check, st)
		}
	}
	c.mu.Unlock()
	if len(check) == 0 {
		return nil
	}
	sc.conn.SetDeadline(time.Now().Add(c.r.settings().QueryWaitTimeout))
	defer sc.conn.SetDeadline(time.Time{})
	for _, st := range check {
		shape, ok, err := sc.describeNew(st, sc.prepared[st.serverName])
		if err != nil {
			return err
		}
		c.mu.Lock()
		if !ok {
			delete(sc.prepared, st.serverName)
			c.mu.Unlock()
			continue
		}
		sc.prepared[st.serverName] = true
		noteServerShape(sc, st, shape)
		if shape != st.shape {
			st.changed = true
			c.r.log.Debug("prepared statement's result shape changed since the client described it", "client", c.remote, "statement", st.serverName)
		}
		c.mu.Unlock()
	}
	return nil
}

// describeNew prepares st on the idle sc (closing its plan there first:
// again) and returns its shape; ok is false when the server refused it
// (then sc is idle again, the statement not prepared).
func (sc *serverConn) describeNew(st *stmt, again bool) (shape string, ok bool, err error) {
	if again {
		sc.send(&pgproto3.Close{ObjectType: 'S', Name: st.serverName})
	}
	p := st.parse
	sc.send(&p)
	sc.send(&pgproto3.Describe{ObjectType: 'S', Name: st.serverName})
	sc.send(&pgproto3.Flush{})
	if err := sc.flush(); err != nil {
		return "", false, err
	}
	for {
		msg, err := sc.receive()
		if err != nil {
			return "", false, err
		}
		switch m := msg.(type) {
		case *pgproto3.RowDescription, *pgproto3.NoData:
			return shapeOf(m), true, nil
		case *pgproto3.ErrorResponse:
			return "", false, sc.syncAfterError()
		}
	}
}

// syncAfterError ends an extended-protocol exchange the server failed
// (it skips everything up to Sync) and waits until it is idle again.
func (sc *serverConn) syncAfterError() error {
	sc.send(&pgproto3.Sync{})
	if err := sc.flush(); err != nil {
		return err
	}
	for {
		msg, err := sc.receive()
		if err != nil {
			return err
		}
		if z, ok := msg.(*pgproto3.ReadyForQuery); ok {
			if z.TxStatus != 'I' {
				sc.broken.Store(true)
			}
			return nil
		}
	}
}

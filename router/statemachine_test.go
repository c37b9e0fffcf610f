package router

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// The router answers server messages on two paths: the general path's
// relay (client.go) and the event loop's relayBuffered (fast.go). This
// file feeds both the same server byte streams, from a scripted server,
// and compares what the client receives with what a client connected to
// that server directly receives, and what state each path leaves the
// server connection in (reused, re-prepared, reset or closed).

// script is what the scripted server answers to a statement "case:NAME":
// the messages an Execute (or the Query) produces, and whether the server
// then ends the connection instead of going on.
type script struct {
	msgs  []pgproto3.BackendMessage
	close bool
}

var (
	rowDesc = &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("x"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}}}
	row     = func(s string) *pgproto3.DataRow { return &pgproto3.DataRow{Values: [][]byte{[]byte(s)}} }
	done    = func(tag string) *pgproto3.CommandComplete { return &pgproto3.CommandComplete{CommandTag: []byte(tag)} }
)

var scripts = map[string]script{
	"rows":   {msgs: []pgproto3.BackendMessage{rowDesc, row("a"), row("b"), done("SELECT 2")}},
	"notice": {msgs: []pgproto3.BackendMessage{rowDesc, row("a"), &pgproto3.NoticeResponse{Severity: "NOTICE", Code: "00000", Message: "midway"}, row("b"), done("SELECT 2")}},
	"param":  {msgs: []pgproto3.BackendMessage{rowDesc, row("a"), &pgproto3.ParameterStatus{Name: "application_name", Value: "changed"}, done("SELECT 1")}},
	"error":  {msgs: []pgproto3.BackendMessage{rowDesc, row("a"), &pgproto3.ErrorResponse{Severity: "ERROR", Code: "22012", Message: "division by zero"}}},
	"fatal":  {msgs: []pgproto3.BackendMessage{&pgproto3.ErrorResponse{Severity: "FATAL", Code: "57P01", Message: "terminating connection due to administrator command"}}, close: true},
	"vanish": {msgs: []pgproto3.BackendMessage{rowDesc, row("a")}, close: true},
	"copyout": {msgs: []pgproto3.BackendMessage{&pgproto3.CopyOutResponse{ColumnFormatCodes: []uint16{0}},
		&pgproto3.CopyData{Data: []byte("1\n")}, &pgproto3.CopyData{Data: []byte("2\n")}, &pgproto3.CopyDone{}, done("COPY 2")}},
	"big": {msgs: []pgproto3.BackendMessage{rowDesc, row(strings.Repeat("x", 3*msgReaderSize)), done("SELECT 1")}},
}

// scriptServer is a PostgreSQL stand-in that speaks both query protocols
// like PostgreSQL: named statements per connection, an error skips the
// extended messages up to Sync, transaction status follows BEGIN, COMMIT,
// ROLLBACK and errors. It logs every message it receives, per connection.
type scriptServer struct {
	ln    net.Listener
	mu    sync.Mutex
	conns int
	log   []string // "connN: message"
}

func newScriptServer(t *testing.T) *scriptServer {
	s := &scriptServer{ln: listen(t)}
	go func() {
		for {
			conn, err := s.ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns++
			id := s.conns
			s.mu.Unlock()
			go s.session(conn, id)
		}
	}()
	return s
}

func (s *scriptServer) note(id int, format string, args ...any) {
	s.mu.Lock()
	s.log = append(s.log, fmt.Sprintf("conn%d: ", id)+fmt.Sprintf(format, args...))
	s.mu.Unlock()
}

func (s *scriptServer) session(conn net.Conn, id int) {
	defer conn.Close()
	be := pgproto3.NewBackend(conn, conn)
	if _, err := be.ReceiveStartupMessage(); err != nil {
		return
	}
	be.Send(&pgproto3.AuthenticationOk{})
	be.Send(&pgproto3.ParameterStatus{Name: "server_version", Value: "15.0"})
	be.Send(&pgproto3.BackendKeyData{ProcessID: uint32(id), SecretKey: []byte{1, 2, 3, 4}})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if be.Flush() != nil {
		return
	}
	status := byte('I')
	skipping := false // after an error in an extended batch, until Sync
	prepared := map[string]string{}
	portal := ""
	fail := func(code, msg string) {
		be.Send(&pgproto3.ErrorResponse{Severity: "ERROR", Code: code, Message: msg})
		if status == 'T' {
			status = 'E'
		}
	}
	// run answers sql; false when the server ends the connection.
	run := func(sql string, extended bool) bool {
		name, ok := strings.CutPrefix(sql, "case:")
		if !ok {
			switch u := strings.ToUpper(sql); {
			case strings.HasPrefix(u, "BEGIN"):
				status = 'T'
				be.Send(done("BEGIN"))
			case strings.HasPrefix(u, "COMMIT"), strings.HasPrefix(u, "ROLLBACK"):
				status = 'I'
				be.Send(done(strings.Fields(u)[0]))
			case strings.Contains(u, "PG_CURRENT_WAL_INSERT_LSN"):
				be.Send(rowDesc)
				be.Send(row("0/3000060"))
				be.Send(done("SELECT 1"))
			default:
				be.Send(done("SET"))
			}
			return true
		}
		sc := scripts[name]
		for _, m := range sc.msgs {
			be.Send(m)
			if e, ok := m.(*pgproto3.ErrorResponse); ok && e.Severity == "ERROR" {
				if status == 'T' {
					status = 'E'
				}
				skipping = extended
			}
		}
		if sc.close {
			be.Flush()
			return false
		}
		return true
	}
	for {
		msg, err := be.Receive()
		if err != nil {
			return
		}
		switch m := msg.(type) {
		case *pgproto3.Query:
			s.note(id, "Query %s", m.String)
			if status == 'E' && !strings.HasPrefix(strings.ToUpper(m.String), "ROLLBACK") {
				fail("25P02", "current transaction is aborted, commands ignored until end of transaction block")
			} else if !run(m.String, false) {
				return
			}
			be.Send(&pgproto3.ReadyForQuery{TxStatus: status})
			be.Flush()
		case *pgproto3.Parse:
			s.note(id, "Parse %q %s", m.Name, m.Query)
			switch {
			case skipping:
			case m.Name != "" && prepared[m.Name] != "":
				fail("42P05", fmt.Sprintf("prepared statement %q already exists", m.Name))
				skipping = true
			default:
				prepared[m.Name] = m.Query
				be.Send(&pgproto3.ParseComplete{})
			}
		case *pgproto3.Bind:
			s.note(id, "Bind %q", m.PreparedStatement)
			switch q, ok := prepared[m.PreparedStatement]; {
			case skipping:
			case !ok:
				fail("26000", fmt.Sprintf("prepared statement %q does not exist", m.PreparedStatement))
				skipping = true
			default:
				portal = q
				be.Send(&pgproto3.BindComplete{})
			}
		case *pgproto3.Describe:
			s.note(id, "Describe %c %q", m.ObjectType, m.Name)
			if skipping {
				break
			}
			q := portal
			if m.ObjectType == 'S' {
				q = prepared[m.Name]
				be.Send(&pgproto3.ParameterDescription{})
			}
			if strings.HasPrefix(q, "case:") {
				be.Send(rowDesc)
			} else {
				be.Send(&pgproto3.NoData{})
			}
		case *pgproto3.Execute:
			s.note(id, "Execute")
			if !skipping && !run(portal, true) {
				return
			}
		case *pgproto3.Close:
			s.note(id, "Close %c %q", m.ObjectType, m.Name)
			if !skipping {
				if m.ObjectType == 'S' {
					delete(prepared, m.Name)
				}
				be.Send(&pgproto3.CloseComplete{})
			}
		case *pgproto3.Sync:
			s.note(id, "Sync")
			skipping = false
			be.Send(&pgproto3.ReadyForQuery{TxStatus: status})
			be.Flush()
		case *pgproto3.Flush:
			be.Flush()
		case *pgproto3.Terminate:
			s.note(id, "Terminate")
			return
		}
	}
}

// smCase is an exchange of one or more clients (their sessions are opened
// as needed, and in order): batches of messages, each answered up to
// ReadyForQuery or the connection's end.
type smCase struct {
	name    string
	batches []batch
	// routerFatal: the router adds its own FATAL (server connection lost)
	// where a direct client just sees the connection end.
	routerFatal bool
}

type batch struct {
	client int
	msgs   []pgproto3.FrontendMessage
}

func q(sql string) batch {
	return batch{msgs: []pgproto3.FrontendMessage{&pgproto3.Query{String: sql}}}
}

func ext(msgs ...pgproto3.FrontendMessage) batch { return batch{msgs: msgs} }

func by(client int, b batch) batch { b.client = client; return b }

var smCases = []smCase{
	{name: "Rows", batches: []batch{q("case:rows")}},
	{name: "NoticeMidResult", batches: []batch{q("case:notice")}},
	{name: "ParameterStatusMidResult", batches: []batch{q("case:param"), q("case:rows")}},
	{name: "Error", batches: []batch{q("case:error"), q("case:rows")}},
	{name: "ErrorInTransaction", batches: []batch{q("BEGIN"), q("case:error"), q("case:rows"), q("ROLLBACK"), q("case:rows")}},
	{name: "FatalThenClose", batches: []batch{q("case:fatal")}},
	{name: "ServerVanishesMidResult", batches: []batch{q("case:vanish")}, routerFatal: true},
	{name: "CopyOut", batches: []batch{q("case:copyout"), q("case:rows")}},
	{name: "LargerThanBuffer", batches: []batch{q("case:big"), q("case:rows")}},
	{name: "PipelineErrorInPreparedBinds", batches: []batch{
		ext(&pgproto3.Parse{Name: "s1", Query: "case:rows"}, &pgproto3.Parse{Name: "s2", Query: "case:error"}, &pgproto3.Sync{}),
		ext(&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{},
			&pgproto3.Bind{PreparedStatement: "s2"}, &pgproto3.Execute{},
			&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{}),
		ext(&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}),
	}},
	{name: "PipelineUnnamedWithError", batches: []batch{ext(
		&pgproto3.Parse{Query: "case:rows"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: "case:error"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: "case:rows"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{},
	)}},
	// The router answers a batch of Parses itself and prepares each
	// statement where it first runs: Parses it puts before the client's
	// Binds, whose answers the client must not see. Here on a connection
	// opened after another client's FATAL ended the first, with an error
	// that skips one of those Parses (so the next batch needs it again).
	{name: "InjectedParsesAndAnError", batches: []batch{
		ext(&pgproto3.Parse{Name: "s1", Query: "case:rows"}, &pgproto3.Parse{Name: "s2", Query: "case:error"}, &pgproto3.Sync{}),
		by(1, q("case:fatal")),
		by(2, q("case:rows")),
		ext(&pgproto3.Bind{PreparedStatement: "s2"}, &pgproto3.Execute{},
			&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{}),
		ext(&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{}),
		by(2, ext(&pgproto3.Parse{Name: "s1", Query: "case:notice"}, &pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{})),
	}},
}

// TestOneStateMachine runs every case directly against the scripted
// server and through routers with and without the fast path; the client
// must receive the same messages on both paths as directly (plus, where a
// server vanishes, the router's own FATAL), and both paths must leave the
// server connections in the same state: the same messages reach the
// server, for this client and the next one, and the pool holds the same.
func TestOneStateMachine(t *testing.T) {
	next := []batch{q("case:rows")}
	for _, tc := range smCases {
		t.Run(tc.name, func(t *testing.T) {
			direct := newScriptServer(t)
			want := runCase(t, direct.ln.Addr().String(), tc.batches)
			if tc.routerFatal {
				want = append(want[:len(want)-1], `{"Type":"ErrorResponse","Severity":"FATAL","Code":"08006"}`, "EOF")
			}
			wantNext := runCase(t, direct.ln.Addr().String(), next)

			type pathRun struct {
				got, next  []string
				log        []string
				idle, open int
			}
			var runs [2]pathRun
			for i, noFast := range []bool{false, true} {
				srv := newScriptServer(t)
				r, addr := smRouter(t, srv, noFast)
				p := r.pool(srv.ln.Addr().String(), "d", "u")
				runs[i].got = runCase(t, addr, tc.batches)
				settle(t, p)
				runs[i].next = runCase(t, addr, next)
				settle(t, p)
				runs[i].idle, runs[i].open = p.counts()
				srv.mu.Lock()
				runs[i].log = append([]string(nil), srv.log...)
				srv.mu.Unlock()
				if s := r.Snapshot(); !noFast && s.FastPath+s.FastHandBacks == 0 {
					t.Errorf("the fast path took no part: %+v", s)
				}
			}
			for i, name := range []string{"fast path", "general path"} {
				if d := diffLines(want, runs[i].got); d != "" {
					t.Errorf("%s: what the client received, direct (-) against the router (+):\n%s", name, d)
				}
				if d := diffLines(wantNext, runs[i].next); d != "" {
					t.Errorf("%s: what the next client received, direct (-) against the router (+):\n%s", name, d)
				}
			}
			fast, general := runs[0], runs[1]
			if d := diffLines(general.log, fast.log); d != "" {
				t.Errorf("messages the server received, general path (-) against fast path (+):\n%s", d)
			}
			if fast.idle != general.idle || fast.open != general.open {
				t.Errorf("pool after the case: fast path idle %d open %d, general path idle %d open %d", fast.idle, fast.open, general.idle, general.open)
			}
		})
	}
}

// settle waits until no session holds a connection of p: the last one
// may still be going back to it (read-your-writes asks the primary for
// its position after the client has ReadyForQuery).
func settle(t *testing.T, p *pool) {
	deadline := time.Now().Add(5 * time.Second)
	for p.active.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("pool still has %d active connections", p.active.Load())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// smRouter is a transaction-mode router in front of srv (trust logins,
// srv the primary), with or without the fast path; addr is its port. Its
// pool has one connection: a batch that follows a write waits for the
// read-your-writes question on it (asked after the client has
// ReadyForQuery, at once on the fast path) instead of another one being
// dialed, so both paths use the same server connections.
func smRouter(t *testing.T, srv *scriptServer, noFast bool) (*Router, string) {
	tcp := srv.ln.Addr().(*net.TCPAddr)
	topo := NewBackendSet(Backend{Name: "p", Host: "127.0.0.1", Port: tcp.Port, Primary: true, Healthy: true})
	r, err := New(Config{HBA: []HBARule{{Method: AuthTrust}}, ServerConnectTimeout: 5 * time.Second, PoolSize: 1, DisableFastPath: noFast}, topo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	ln := listen(t)
	go r.Serve(t.Context(), ln, ReadWrite)
	return r, ln.Addr().String()
}

// runCase sends each batch on its client's session (logged in to addr as
// user u, database d, when first used) and reads the answers up to
// ReadyForQuery; it returns the messages received after login, one JSON
// line each (an ErrorResponse as its severity and code: the router's own
// wording may differ), "EOF" where a connection ended, and a line before
// each batch.
func runCase(t *testing.T, addr string, batches []batch) []string {
	clients := map[int]*pgproto3.Frontend{}
	ended := map[int]bool{}
	var out []string
	for i, b := range batches {
		out = append(out, fmt.Sprintf("--- batch %d, client %d", i, b.client))
		if ended[b.client] {
			out = append(out, "EOF")
			continue
		}
		fe := clients[b.client]
		if fe == nil {
			fe = login(t, addr)
			clients[b.client] = fe
		}
		for _, m := range b.msgs {
			fe.Send(m)
		}
		if err := fe.Flush(); err != nil {
			out = append(out, "EOF")
			ended[b.client] = true
			continue
		}
		for {
			msg, err := fe.Receive()
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatalf("batch %d: no answer: %v (so far %q)", i, err, out)
				}
				out = append(out, "EOF")
				ended[b.client] = true
				break
			}
			out = append(out, renderMsg(msg))
			if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
	}
	for _, fe := range clients {
		fe.Send(&pgproto3.Terminate{})
		fe.Flush()
	}
	return out
}

// login opens a session to addr and reads up to its first ReadyForQuery.
func login(t *testing.T, addr string) *pgproto3.Frontend {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(conn, conn)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "u", "database": "d"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("login: %v", err)
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			return fe
		}
	}
}

func renderMsg(msg pgproto3.BackendMessage) string {
	if e, ok := msg.(*pgproto3.ErrorResponse); ok {
		return fmt.Sprintf(`{"Type":"ErrorResponse","Severity":%q,"Code":%q}`, e.Severity, e.Code)
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return fmt.Sprintf("%T: %v", msg, err)
	}
	if len(b) > 200 {
		return fmt.Sprintf("%s... (%d bytes)", b[:200], len(b))
	}
	return string(b)
}

// diffLines: "" when a and b are equal, else both, line by line, from
// the first difference.
func diffLines(a, b []string) string {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	if i == len(a) && i == len(b) {
		return ""
	}
	var sb strings.Builder
	for _, l := range a[max(0, i-2):] {
		fmt.Fprintf(&sb, "- %s\n", l)
	}
	for _, l := range b[max(0, i-2):] {
		fmt.Fprintf(&sb, "+ %s\n", l)
	}
	return sb.String()
}

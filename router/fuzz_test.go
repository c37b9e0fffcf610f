package router

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// fuzzRouter is a router whose only backend refuses connections and whose
// pool already knows the server parameters, so a client logs in (trust)
// and every message path up to the server dial runs without PostgreSQL.
func fuzzRouter(t testing.TB) *Router {
	topo := NewBackendSet(Backend{Name: "p", Host: "127.0.0.1", Port: 1, Primary: true, Healthy: true})
	r, err := New(Config{HBA: []HBARule{{Method: AuthTrust}}, ServerConnectTimeout: time.Second, MaxMessageSize: 1 << 16}, topo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	for _, db := range []string{"postgres", "u"} {
		r.pool("127.0.0.1:1", db, "u").params = map[string]string{"server_version": "15.0"}
	}
	return r
}

// runStream feeds data to a client session as the bytes a client sent over
// loopback TCP, half-closes, and reads the answers until the router closes.
func runStream(t testing.TB, r *Router, ln net.Listener, data []byte) {
	cli, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	// The session ends when r.sessions is back to zero (they run one at a
	// time here); serveClient itself returns early when the session goes
	// to the fast path.
	r.sessions.Add(1)
	go r.serveClient(srv, ReadWrite)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.sessions.Wait()
	}()
	cli.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		cli.Write(data)
		cli.(*net.TCPConn).CloseWrite()
	}()
	io.Copy(io.Discard, cli)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("session did not end after %q", data)
	}
}

func listen(t testing.TB) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func startupBytes(params map[string]string) []byte {
	b, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: params}).Encode(nil)
	return b
}

// startupBytes31 is a StartupMessage asking for protocol 3.1.
func startupBytes31(params map[string]string) []byte {
	b := startupBytes(params)
	b[7] = 1
	return b
}

func enc(msgs ...pgproto3.FrontendMessage) []byte {
	var b []byte
	for _, m := range msgs {
		b, _ = m.Encode(b)
	}
	return b
}

// FuzzReadStartup feeds arbitrary client bytes (startup packet, then
// messages) to a session: it must never panic or hang, whatever the
// lengths and types say. Seeds are in testdata/fuzz/FuzzReadStartup too.
func FuzzReadStartup(f *testing.F) {
	login := startupBytes(map[string]string{"user": "u", "database": "postgres"})
	ssl, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	cancel, _ := (&pgproto3.CancelRequest{ProcessID: 7, SecretKey: []byte{1, 2, 3, 4}}).Encode(nil)
	f.Add(login)
	f.Add(append(ssl, login...))
	f.Add(cancel)
	f.Add(join(login, enc(&pgproto3.Query{String: "SHOW POOL_NODES"}, &pgproto3.Query{String: "show stats;"}, &pgproto3.Terminate{})...))
	f.Add(join(login, enc(&pgproto3.Parse{Name: "s", Query: "SELECT $1"}, &pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})...))
	f.Add(join(login, enc(&pgproto3.Sync{}, &pgproto3.Flush{}, &pgproto3.Query{String: "INSERT INTO t VALUES (1)"})...))
	f.Add(join(login, 'Q', 0x7f, 0xff, 0xff, 0xff))
	f.Add(join(login, 'P', 0, 0, 0, 6, 'a', 'b'))
	f.Add([]byte{0, 0, 0, 8, 4, 210, 22, 47})
	gss := []byte{0, 0, 0, 8, 4, 210, 22, 48}
	f.Add(join(gss, login...))                                   // GSSENCRequest, 'N', then clear text
	f.Add(join(join(ssl, ssl...), login...))                     // a second SSLRequest is refused
	f.Add(join([]byte{0x40, 0, 0, 0}, make([]byte, 64)...))      // a 1 GiB startup packet
	f.Add(startupBytes31(map[string]string{"user": "u"}))        // protocol 3.1: NegotiateProtocolVersion
	f.Add(join(login, enc(&pgproto3.CopyFail{Message: "x"})...)) // CopyFail outside COPY
	r := fuzzRouter(f)
	ln := listen(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		runStream(t, r, ln, data)
	})
}

// FuzzClassify: Classify never panics, and a statement that starts with
// a write keyword is never a read.
func FuzzClassify(f *testing.F) {
	for _, tc := range classifyCases {
		f.Add(tc.sql)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		Classify(sql, nil)
		if Classify("INSERT INTO t VALUES (1);"+sql, nil) != ClassWrite {
			t.Errorf("INSERT followed by %q classified as a read", sql)
		}
	})
}

// TestStreamBadInput runs the fuzz seeds as a test, checking that no
// session is left registered.
func TestStreamBadInput(t *testing.T) {
	r := fuzzRouter(t)
	ln := listen(t)
	login := startupBytes(map[string]string{"user": "u", "database": "postgres"})
	for _, data := range [][]byte{
		login,
		join(login, 'Q', 0x7f, 0xff, 0xff, 0xff),
		join(login, 'z', 0, 0, 0, 4),
		join(login, enc(&pgproto3.Query{String: "SELECT 1"})...),
		{0, 0, 0, 3},
	} {
		runStream(t, r, ln, data)
	}
	s := r.Snapshot()
	if s.ClientsActive != 0 || s.ProtocolErrors == 0 {
		t.Errorf("after bad streams: %+v", s)
	}
}

// join returns a new slice: a followed by b.
func join(a []byte, b ...byte) []byte { return append(append([]byte{}, a...), b...) }

package router

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// TestLoginOnEventLoop: a trusted client whose pool knows the server's
// parameters logs in on the event loop (login.go), whatever way its
// startup packets arrive; every other login goes to a goroutine and ends
// as it did before. Each client runs a query after its login.
func TestLoginOnEventLoop(t *testing.T) {
	srv := newScriptServer(t)
	r, addr := smRouter(t, srv, false)
	startup := func(params map[string]string) []byte { return startupBytes(params) }
	login := startup(map[string]string{"user": "u", "database": "d"})
	ssl := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), sslRequestCode)
	gss := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), gssEncRequestCode)
	query := enc(&pgproto3.Query{String: "case:rows"})
	long := startup(map[string]string{"user": "u", "database": "d", "application_name": strings.Repeat("x", 600)})

	// session sends the pieces (after the previous one was answered, when
	// wait says so), then a query unless it came with the login; it
	// returns what came back.
	session := func(t *testing.T, pieces [][]byte, withQuery bool) string {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		var got []byte
		for _, p := range pieces {
			if _, err := conn.Write(p); err != nil {
				t.Fatal(err)
			}
			if len(p) == 8 && (binary.BigEndian.Uint32(p[4:]) == sslRequestCode || binary.BigEndian.Uint32(p[4:]) == gssEncRequestCode) {
				var b [1]byte
				if _, err := io.ReadFull(conn, b[:]); err != nil {
					t.Fatal(err)
				}
				got = append(got, b[0])
			} else {
				time.Sleep(20 * time.Millisecond) // arrives in pieces
			}
		}
		if !withQuery {
			conn.Write(query)
		}
		fe := pgproto3.NewFrontend(conn, conn)
		var names []string
		rfq := 0
		for rfq < 2 {
			msg, err := fe.Receive()
			if err != nil {
				t.Fatalf("after %q: %v", names, err)
			}
			switch m := msg.(type) {
			case *pgproto3.ReadyForQuery:
				rfq++
			case *pgproto3.ErrorResponse:
				t.Fatalf("error %s %s", m.Code, m.Message)
			case *pgproto3.DataRow:
				names = append(names, string(m.Values[0]))
			}
		}
		return string(got) + strings.Join(names, ",")
	}

	// The first login dials the server (on a goroutine); the pool then
	// knows its parameters.
	if got := session(t, [][]byte{login}, false); got != "a,b" {
		t.Fatalf("first session: %q", got)
	}
	cases := []struct {
		name   string
		pieces [][]byte
		query  bool // the query is in the last piece
		onLoop bool
		ns     string // the answers to encryption requests
	}{
		{"Plain", [][]byte{login}, false, true, ""},
		{"SSLRequestAnsweredN", [][]byte{ssl, login}, false, true, "N"},
		{"GSSENCRequestAnsweredN", [][]byte{gss, login}, false, true, "N"},
		{"BothRequests", [][]byte{gss, ssl, login}, false, true, "NN"},
		{"InPieces", [][]byte{login[:3], login[3:11], login[11:]}, false, true, ""},
		{"QueryBehindStartup", [][]byte{append(append([]byte{}, login...), query...)}, true, true, ""},
		{"LongStartupPacket", [][]byte{long}, false, false, ""},
		{"SSLRequestThenLongPacket", [][]byte{ssl, long}, false, false, "N"},
		{"OtherDatabase", [][]byte{startup(map[string]string{"user": "u", "database": "other"})}, false, false, ""}, // its pool must dial
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := r.Snapshot().LoopLogins
			got := session(t, tc.pieces, tc.query)
			if want := tc.ns + "a,b"; got != want {
				t.Errorf("got %q, want %q", got, want)
			}
			if d := r.Snapshot().LoopLogins - before; (d == 1) != tc.onLoop {
				t.Errorf("%d logins on the event loop, want on the loop: %v", d, tc.onLoop)
			}
		})
	}
}

// TestLoginTimeoutOnEventLoop: a client that sends nothing, or half a
// startup packet, is told "canceling authentication due to timeout"
// (57014) once ClientLoginTimeout passes, as PostgreSQL's
// authentication_timeout does, and is disconnected.
func TestLoginTimeoutOnEventLoop(t *testing.T) {
	srv := newScriptServer(t)
	tcp := srv.ln.Addr().(*net.TCPAddr)
	topo := NewBackendSet(Backend{Name: "p", Host: "127.0.0.1", Port: tcp.Port, Primary: true, Healthy: true})
	r, err := New(Config{HBA: []HBARule{{Method: AuthTrust}}, ClientLoginTimeout: 300 * time.Millisecond}, topo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	ln := listen(t)
	go r.Serve(t.Context(), ln, ReadWrite)
	login := startupBytes(map[string]string{"user": "u", "database": "d"})
	for _, sent := range [][]byte{nil, login[:10]} {
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		conn.Write(sent)
		fe := pgproto3.NewFrontend(conn, conn)
		msg, err := fe.Receive()
		if e, ok := msg.(*pgproto3.ErrorResponse); !ok || e.Code != "57014" {
			t.Fatalf("after sending %d bytes: %#v, %v; want 57014", len(sent), msg, err)
		}
		if _, err := fe.Receive(); err == nil {
			t.Fatalf("after sending %d bytes: the connection stays open after the FATAL", len(sent))
		}
	}
}

// TestPasswordLoginOnEventLoop: md5 and SCRAM logins whose secret is in
// Config.Users run their exchange on the event loop (SCRAM only with the
// stored verifier: PBKDF2 stays off the loop), right or wrong password
// alike, as pgconn (pgx's libpq) sees them: the right one runs a query,
// the wrong one gets 28P01. A SCRAM client-first message longer than the
// loop's buffer is still read whole.
func TestPasswordLoginOnEventLoop(t *testing.T) {
	srv := newScriptServer(t)
	tcp := srv.ln.Addr().(*net.TCPAddr)
	for _, tc := range []struct {
		name   string
		method AuthMethod
		secret string
		onLoop bool
	}{
		{"MD5", AuthMD5, "secret", true},
		{"MD5Hash", AuthMD5, MD5Hash("u", "secret"), true},
		{"MD5RuleSCRAMVerifier", AuthMD5, SCRAMVerifier("secret"), true}, // SCRAM, as PostgreSQL
		{"SCRAMVerifier", AuthSCRAM, SCRAMVerifier("secret"), true},
		// PBKDF2 for every login: on a goroutine, not on the loop.
		{"SCRAMFromPassword", AuthSCRAM, "secret", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topo := NewBackendSet(Backend{Name: "p", Host: "127.0.0.1", Port: tcp.Port, Primary: true, Healthy: true})
			r, err := New(Config{HBA: []HBARule{{Method: tc.method}}, Users: map[string]string{"u": tc.secret}, ServerConnectTimeout: 5 * time.Second}, topo)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { r.Close() })
			ln := listen(t)
			go r.Serve(t.Context(), ln, ReadWrite)
			connect := func(password string) error {
				ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
				defer cancel()
				conn, err := pgconn.Connect(ctx, fmt.Sprintf("postgres://u:%s@%s/d?sslmode=disable", password, ln.Addr()))
				if err != nil {
					return err
				}
				defer conn.Close(ctx)
				res, err := conn.Exec(ctx, "case:rows").ReadAll()
				if err != nil || len(res) != 1 || len(res[0].Rows) != 2 {
					t.Fatalf("query after login: %v, %v", res, err)
				}
				return nil
			}
			if err := connect("secret"); err != nil { // dials the server: on a goroutine
				t.Fatal(err)
			}
			before := r.Snapshot()
			if err := connect("secret"); err != nil {
				t.Fatal(err)
			}
			var pgErr *pgconn.PgError
			if err := connect("wrong"); !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
				t.Fatalf("wrong password: %v, want 28P01", err)
			}
			after := r.Snapshot()
			if d := after.LoopLogins - before.LoopLogins; (d == 1) != tc.onLoop {
				t.Errorf("%d logins on the event loop, want on the loop: %v", d, tc.onLoop)
			}
			if d := after.ClientsRejected - before.ClientsRejected; d != 1 {
				t.Errorf("%d clients rejected, want 1", d)
			}
			if tc.method != AuthSCRAM || !tc.onLoop {
				return
			}
			// A client-first message of 1000 bytes (a long nonce).
			conn, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			fe := pgproto3.NewFrontend(conn, conn)
			fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "u", "database": "d"}})
			fe.Flush()
			if msg, err := fe.Receive(); err != nil {
				t.Fatal(err)
			} else if _, ok := msg.(*pgproto3.AuthenticationSASL); !ok {
				t.Fatalf("got %T, want AuthenticationSASL", msg)
			}
			fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=" + strings.Repeat("x", 1000))})
			fe.Flush()
			if msg, err := fe.Receive(); err != nil {
				t.Fatal(err)
			} else if c, ok := msg.(*pgproto3.AuthenticationSASLContinue); !ok || !strings.Contains(string(c.Data), strings.Repeat("x", 1000)) {
				t.Fatalf("got %#v, want AuthenticationSASLContinue with the client's nonce", msg)
			}
		})
	}
}

// TestLoginFillsTheBuffer: a StartupMessage of exactly the loop's buffer
// size with a query behind it, still on the socket when the login ends:
// the query is answered (the session reads on at once instead of waiting
// for an event that already came).
func TestLoginFillsTheBuffer(t *testing.T) {
	srv := newScriptServer(t)
	r, addr := smRouter(t, srv, false)
	first := startupBytes(map[string]string{"user": "u", "database": "d"})
	login := func(pad int) []byte {
		return startupBytes(map[string]string{"user": "u", "database": "d", "application_name": strings.Repeat("x", pad)})
	}
	exact := login(loginBufSize - len(login(0)))
	if len(exact) != loginBufSize {
		t.Fatalf("startup packet of %d bytes, want %d", len(exact), loginBufSize)
	}
	for i, pkt := range [][]byte{first, exact} {
		before := r.Snapshot().LoopLogins
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		conn.Write(append(append([]byte{}, pkt...), enc(&pgproto3.Query{String: "case:rows"})...))
		fe := pgproto3.NewFrontend(conn, conn)
		for rfq := 0; rfq < 2; {
			msg, err := fe.Receive()
			if err != nil {
				t.Fatalf("login %d: %v", i, err)
			}
			if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
				rfq++
			}
		}
		if i == 1 && r.Snapshot().LoopLogins == before {
			t.Error("the login went to a goroutine, not the case under test")
		}
	}
}

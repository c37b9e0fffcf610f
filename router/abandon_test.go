package router

import (
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// stubServer is a PostgreSQL stand-in that trusts every login, never
// answers a query by itself, and reports what the router sends it: the
// race a vanished client leaves the router with (a cancel request that
// arrives before the statement started is lost) is played on purpose,
// by ignoring the first cancel requests.
type stubServer struct {
	ln        net.Listener
	ignore    int // cancel requests to ignore before ending the query
	mu        sync.Mutex
	cancels   int
	copyFails int
	queries   chan struct{} // one receive per Query
	ended     chan struct{} // closed when the query's connection closes
	answer    chan struct{} // ends the running query with an error
}

func newStubServer(t *testing.T, ignore int) *stubServer {
	s := &stubServer{ln: listen(t), ignore: ignore, queries: make(chan struct{}, 8),
		ended: make(chan struct{}), answer: make(chan struct{}, 1)}
	go s.serve()
	return s
}

func (s *stubServer) port() int { return s.ln.Addr().(*net.TCPAddr).Port }

func (s *stubServer) serve() {
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		go s.session(conn)
	}
}

func (s *stubServer) session(conn net.Conn) {
	defer conn.Close()
	be := pgproto3.NewBackend(conn, conn)
	msg, err := be.ReceiveStartupMessage()
	if err != nil {
		return
	}
	if _, ok := msg.(*pgproto3.CancelRequest); ok {
		s.mu.Lock()
		s.cancels++
		n := s.cancels
		s.mu.Unlock()
		if n > s.ignore {
			select {
			case s.answer <- struct{}{}:
			default:
			}
		}
		return
	}
	be.Send(&pgproto3.AuthenticationOk{})
	be.Send(&pgproto3.ParameterStatus{Name: "server_version", Value: "15.0"})
	be.Send(&pgproto3.BackendKeyData{ProcessID: 42, SecretKey: []byte{1, 2, 3, 4}})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if be.Flush() != nil {
		return
	}
	received := make(chan pgproto3.FrontendMessage)
	go func() {
		defer close(received)
		for {
			msg, err := be.Receive()
			if err != nil {
				return
			}
			received <- msg
		}
	}()
	running := false
	for {
		select {
		case msg, ok := <-received:
			if !ok {
				if running {
					close(s.ended)
				}
				return
			}
			switch msg.(type) {
			case *pgproto3.Query:
				running = true
				s.queries <- struct{}{}
			case *pgproto3.CopyFail:
				s.mu.Lock()
				s.copyFails++
				s.mu.Unlock()
			}
		case <-s.answer:
			be.Send(&pgproto3.ErrorResponse{Severity: "ERROR", Code: "57014", Message: "canceling statement due to user request"})
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
			be.Flush()
		}
	}
}

// TestAbandonRetriesCancel: a client vanishes while its statement runs;
// the server ignores the first cancel request (as PostgreSQL does when it
// lands before the statement started). The router keeps cancelling until
// the server answers, then closes the server connection instead of
// pooling it.
func TestAbandonRetriesCancel(t *testing.T) {
	srv := newStubServer(t, 1)
	topo := NewBackendSet(Backend{Name: "p", Host: "127.0.0.1", Port: srv.port(), Primary: true, Healthy: true})
	r, err := New(Config{HBA: []HBARule{{Method: AuthTrust}}, ServerConnectTimeout: 5 * time.Second}, topo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	ln := listen(t)
	go r.Serve(t.Context(), ln, ReadWrite)

	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	fe := pgproto3.NewFrontend(conn, conn)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "u", "database": "d"}})
	fe.Send(&pgproto3.Query{String: "SELECT pg_sleep(600)"})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-srv.queries:
	case <-time.After(10 * time.Second):
		t.Fatal("the query did not reach the server")
	}
	conn.Close()
	select {
	case <-srv.ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the router did not close the abandoned server connection")
	}
	srv.mu.Lock()
	cancels, copyFails := srv.cancels, srv.copyFails
	srv.mu.Unlock()
	if cancels < 2 {
		t.Errorf("%d cancel requests, want a retry after the ignored one", cancels)
	}
	if copyFails != 1 {
		t.Errorf("%d CopyFail messages, want 1 (ends a COPY FROM STDIN; ignored otherwise)", copyFails)
	}
	pool := r.pool(net.JoinHostPort("127.0.0.1", strconv.Itoa(srv.port())), "d", "u")
	if idle, total := pool.counts(); idle != 0 || total != 0 || pool.active.Load() != 0 {
		t.Errorf("after abandoning: idle %d total %d active %d, want the connection closed", idle, total, pool.active.Load())
	}
}

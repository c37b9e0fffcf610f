package router_test

import (
	"context"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgha/pgha/internal/wait"
	"github.com/pgha/pgha/router"
)

// gate is a TCP forwarder to a server that, once shut, holds each new
// connection until opened: a router dialing through it is stuck between
// routing a transaction and holding a server connection.
type gate struct {
	ln      net.Listener
	target  string
	shut    atomic.Bool
	open    chan struct{}
	waiting atomic.Int32 // connections held at the gate
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   []net.Conn // closed at the end: the router's pool keeps its own
}

func (g *gate) track(c net.Conn) {
	g.mu.Lock()
	g.conns = append(g.conns, c)
	g.mu.Unlock()
}

func newGate(t *testing.T, target string) *gate {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{ln: ln, target: target, open: make(chan struct{})}
	g.wg.Add(1)
	go g.serve()
	t.Cleanup(func() {
		ln.Close()
		g.release()
		g.mu.Lock()
		for _, c := range g.conns {
			c.Close()
		}
		g.mu.Unlock()
		g.wg.Wait()
	})
	return g
}

func (g *gate) port() int { return g.ln.Addr().(*net.TCPAddr).Port }

func (g *gate) release() {
	select {
	case <-g.open:
	default:
		close(g.open)
	}
}

func (g *gate) serve() {
	defer g.wg.Done()
	for {
		c, err := g.ln.Accept()
		if err != nil {
			return
		}
		g.track(c)
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			defer c.Close()
			if g.shut.Load() {
				g.waiting.Add(1)
				<-g.open
			}
			s, err := net.Dial("tcp", g.target)
			if err != nil {
				return
			}
			g.track(s)
			defer s.Close()
			go func() { io.Copy(s, c); s.Close() }()
			io.Copy(c, s)
		}()
	}
}

// testHoldWaitsForDial: a transaction that passed the hold check while its
// server connection to the primary was still being opened holds up Hold,
// so a switchover never starts while it is about to run on the old
// primary.
func testHoldWaitsForDial(t *testing.T, cl *cluster) {
	ctx := testContext(t)
	cfg := routerConfig(router.PoolTransaction)
	// No server connection outlives its transaction: the write below
	// opens a new one, through the gate.
	cfg.ServerLifetime = time.Nanosecond
	tr := startRouter(t, cl, cfg)
	bs := cl.backends()
	g := newGate(t, net.JoinHostPort(bs[0].Host, strconv.Itoa(bs[0].Port)))
	bs[0].Port = g.port()
	tr.topo.Set(bs...)
	wait.For(t, 10*time.Second, "the topology change", func() (bool, string) {
		return tr.PoolNodes()[0].Port == g.port(), "topology change not applied"
	})
	c := connect(t, tr.rw, trustUser, "")
	g.shut.Store(true)

	wrote := make(chan error, 1)
	go func() {
		_, err := c.PgConn().Exec(ctx, "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 1, now())").ReadAll()
		wrote <- err
	}()
	wait.For(t, 10*time.Second, "the router to dial the primary for the write", func() (bool, string) {
		select {
		case err := <-wrote:
			t.Fatalf("the write did not wait for the gate: %v", err)
		default:
		}
		return g.waiting.Load() > 0, "the router did not dial the primary for the write"
	})

	var opened atomic.Bool
	held := make(chan error, 1)
	go func() {
		hctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		err := tr.Hold(hctx)
		if err == nil && !opened.Load() {
			t.Error("Hold returned while a write was still opening its connection to the primary")
		}
		held <- err
	}()
	// Hold must still be waiting when the gate opens; give it the time it
	// needs to return wrongly (it polls every 5 ms).
	select {
	case err := <-held:
		t.Fatalf("Hold returned (%v) while a write was still opening its connection to the primary", err)
	case <-time.After(100 * time.Millisecond):
	}
	opened.Store(true)
	g.release()
	if err := <-wrote; err != nil {
		t.Fatalf("the write: %v", err)
	}
	if err := <-held; err != nil {
		t.Fatalf("Hold: %v", err)
	}
	tr.Resume()
}

// A client logging in while the primary does not answer (a lost host: no
// SYN-ACK, no reply) is logged in on the new primary as soon as the
// topology names it: the dial to the old one ends when its pool retires,
// not at server_connect_timeout. Chaos, host loss of the leader and the
// primary: writers that reconnected through the VIP during the failover
// were refused 0.4 s after the new primary was routed, when the SYN to
// the lost host was finally answered by a reset.
func testLoginFollowsFailover(t *testing.T, cl *cluster) {
	ctx := testContext(t)
	cfg := routerConfig(router.PoolTransaction)
	cfg.PrimaryWait = 20 * time.Second
	cfg.ServerConnectTimeout = 30 * time.Second
	cfg.DisableLoadBalance = true // the query below shows where writes go
	tr := startRouter(t, cl, cfg)
	bs := cl.backends()
	g := newGate(t, net.JoinHostPort(bs[0].Host, strconv.Itoa(bs[0].Port)))
	g.shut.Store(true)
	bs[0].Port = g.port()
	tr.topo.Set(bs...)
	wait.For(t, 10*time.Second, "the topology change", func() (bool, string) {
		return tr.PoolNodes()[0].Port == g.port(), "topology change not applied"
	})

	type result struct {
		port int
		err  error
	}
	got := make(chan result, 1)
	go func() {
		c, err := pgx.Connect(ctx, connString(tr.rw, trustUser, ""))
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close(context.Background())
		var port int
		err = c.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port)
		got <- result{port, err}
	}()
	wait.For(t, 10*time.Second, "the login to wait on the unanswering primary", func() (bool, string) {
		return g.waiting.Load() > 0, "the router has not dialed the primary"
	})

	tr.topo.Set(cl.backends()...) // the failover: another primary
	select {
	case r := <-got:
		if r.err != nil {
			t.Fatalf("login during the failover: %v", r.err)
		}
		if name := cl.portName(r.port); name != cl.names[0] {
			t.Fatalf("the session ran on %s, want the primary %s", name, cl.names[0])
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the login still waits on the old primary 5 s after the topology named the new one")
	}
}

// Close ends a session that is retrying a primary that cannot be reached
// (it would wait up to PrimaryWait for the topology to replace it), and
// returns at once: the agent's front loop waits in Close before it can
// take the VIP again. The chaos campaign had an agent that lost and
// regained Raft leadership wait minutes in Close for one such session,
// with no VIP anywhere.
func testCloseEndsWaitingSession(t *testing.T, cl *cluster) {
	ctx := testContext(t)
	cfg := routerConfig(router.PoolTransaction)
	cfg.PrimaryWait = time.Minute
	cfg.DisableLoadBalance = true
	tr := startRouter(t, cl, cfg)
	c := connect(t, tr.rw, trustUser, "")
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	// The primary's address now refuses connections.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	bs := cl.backends()
	bs[0].Port = dead
	tr.topo.Set(bs...)
	wait.For(t, 10*time.Second, "the topology change", func() (bool, string) {
		return tr.PoolNodes()[0].Port == dead, "topology change not applied"
	})
	queried := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, "SELECT 1")
		queried <- err
	}()
	// The query retries the dead primary (up to a minute); give it time
	// to be in that loop, then close.
	select {
	case err := <-queried:
		t.Fatalf("the query did not wait for a primary: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	closed := make(chan struct{})
	start := time.Now()
	go func() {
		tr.Close()
		close(closed)
	}()
	select {
	case <-closed:
		t.Logf("Close returned after %v", time.Since(start).Round(time.Millisecond))
	case <-time.After(5 * time.Second):
		t.Fatal("Close still waits for a session 5 s later")
	}
	if err := <-queried; err == nil {
		t.Error("the query succeeded through a closed router")
	}
}

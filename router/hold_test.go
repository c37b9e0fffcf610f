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

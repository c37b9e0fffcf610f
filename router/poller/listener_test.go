package poller

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/nettest"
	"golang.org/x/sys/unix"
)

// listenerPipe is a nettest.MakePipe whose accepted end comes from a
// poller.Listener (the router's clients) and whose dialed end is wrapped.
func listenerPipe() (c1, c2 net.Conn, stop func(), err error) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, nil, nil, err
	}
	defer ln.Close()
	p, err := New()
	if err != nil {
		return nil, nil, nil, err
	}
	pl, err := p.Listen(ln)
	if err != nil {
		p.Close()
		return nil, nil, nil, err
	}
	defer pl.Close()
	type result struct {
		c   *Conn
		err error
	}
	accepted := make(chan result, 1)
	go func() {
		c, err := pl.Accept()
		accepted <- result{c, err}
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		p.Close()
		return nil, nil, nil, err
	}
	a := <-accepted
	if a.err != nil {
		d.Close()
		p.Close()
		return nil, nil, nil, a.err
	}
	wd, err := p.Wrap(d)
	if err != nil {
		a.c.Close()
		p.Close()
		return nil, nil, nil, err
	}
	return a.c, wd, func() { wd.Close(); a.c.Close(); p.Close() }, nil
}

func TestListenerConnConformance(t *testing.T) { nettest.TestConn(t, listenerPipe) }

// TestListenerAcceptsWithOptions: a connection accepted by a Listener has
// the options the router's clients need without a system call of its own
// (inherited from the listening socket: TCP_NODELAY, Go's keep-alive),
// is non-blocking, knows both addresses, and Close ends a waiting Accept
// with net.ErrClosed.
func TestListenerAcceptsWithOptions(t *testing.T) {
	p := newPoller(t)
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pl, err := p.Listen(ln)
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	c, err := pl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, o := range []struct {
		name       string
		level, opt int
		want       int
	}{
		{"TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
		{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, keepAliveIdle},
		{"TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, keepAliveInterval},
		{"TCP_KEEPCNT", unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepAliveCount},
	} {
		got, err := unix.GetsockoptInt(c.fd, o.level, o.opt)
		if err != nil || got != o.want {
			t.Errorf("accepted socket: %s = %d (%v), want %d", o.name, got, err, o.want)
		}
	}
	if fl, err := unix.FcntlInt(uintptr(c.fd), unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK == 0 {
		t.Errorf("accepted socket is blocking (flags %#x, %v)", fl, err)
	}
	if c.RemoteAddr().String() != d.LocalAddr().String() || c.LocalAddr().String() != ln.Addr().String() {
		t.Errorf("addresses: remote %v local %v, want %v and %v", c.RemoteAddr(), c.LocalAddr(), d.LocalAddr(), ln.Addr())
	}
	if _, err := d.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(waitLimit))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q, %v", buf, err)
	}

	done := make(chan error, 1)
	go func() {
		_, err := pl.Accept()
		done <- err
	}()
	pl.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Accept still waits after the listener was closed")
	}
}

// echoOnLoop answers what it reads, on the poller goroutine.
type echoOnLoop struct{}

func (echoOnLoop) Ready(c *Conn, _ uint32) {
	var b [64]byte
	for {
		n, err := c.TryRead(b[:])
		if err != nil {
			if !errors.Is(err, ErrWouldBlock) {
				c.Close()
			}
			return
		}
		c.TryWrite(b[:n])
	}
}

// TestServeOnLoop: connections waiting before ServeOnLoop and more than
// one turn's batch of them (acceptBatch) are all accepted, on the poller
// goroutine, each with the handler set by accepted seeing the data that
// came with it; after Close no connection is accepted.
func TestServeOnLoop(t *testing.T) {
	p := newPoller(t)
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pl, err := p.Listen(ln)
	if err != nil {
		t.Fatal(err)
	}
	n := 3 * acceptBatch
	var clients []net.Conn
	for i := 0; i < n; i++ {
		d, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		fmt.Fprintf(d, "%03d", i) // before the accept
		clients = append(clients, d)
	}
	var accepted atomic.Int32
	failed, err := pl.ServeOnLoop(func(c *Conn) {
		accepted.Add(1)
		c.SetHandler(echoOnLoop{})
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range clients {
		d.SetDeadline(time.Now().Add(10 * time.Second))
		var b [3]byte
		if _, err := io.ReadFull(d, b[:]); err != nil || string(b[:]) != fmt.Sprintf("%03d", i) {
			t.Fatalf("client %d: echo %q, %v", i, b, err)
		}
	}
	if got := accepted.Load(); got != int32(n) {
		t.Errorf("accepted %d, want %d", got, n)
	}
	pl.Close()
	ln.Close()
	select {
	case err := <-failed:
		t.Errorf("accepting failed: %v", err)
	default:
	}
	if _, err := pl.Accept(); err == nil {
		t.Error("Accept after ServeOnLoop and Close succeeded")
	}
}

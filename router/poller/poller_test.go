package poller

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/nettest"
	"golang.org/x/sys/unix"
)

// waitLimit bounds every wait of these tests for something that should
// happen promptly.
const waitLimit = 10 * time.Second

// ---------------------------------------------------------------------------
// helpers

func newPoller(t *testing.T) *Poller {
	t.Helper()
	p, err := New()
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// rawPair returns two connected sockets still in the Go runtime's poller.
// network is "tcp" or "unix".
func rawPair(t testing.TB, network string) (dialed, accepted net.Conn) {
	t.Helper()
	var ln net.Listener
	var err error
	switch network {
	case "tcp":
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	case "unix":
		dir, derr := os.MkdirTemp("", "poller")
		if derr != nil {
			t.Fatalf("MkdirTemp: %v", derr)
		}
		defer os.RemoveAll(dir)
		ln, err = net.Listen("unix", filepath.Join(dir, "s"))
	default:
		t.Fatalf("network %q", network)
	}
	if err != nil {
		t.Fatalf("listen %s: %v", network, err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	d, err := net.Dial(ln.Addr().Network(), ln.Addr().String())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	r := <-ch
	if r.err != nil {
		d.Close()
		t.Fatalf("accept: %v", r.err)
	}
	if tb, ok := t.(*testing.T); ok {
		tb.Cleanup(func() { d.Close(); r.c.Close() })
	}
	return d, r.c
}

// pair returns a Conn on p and its peer, a plain net.Conn.
func pair(t *testing.T, p *Poller, network string) (*Conn, net.Conn) {
	t.Helper()
	a, b := rawPair(t, network)
	c, err := p.Wrap(a)
	if err != nil {
		t.Fatalf("Wrap: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c, b
}

// wrappedPair returns two connected Conns on p.
func wrappedPair(t *testing.T, p *Poller, network string) (*Conn, *Conn) {
	t.Helper()
	a, b := rawPair(t, network)
	ca, err := p.Wrap(a)
	if err != nil {
		t.Fatalf("Wrap: %v", err)
	}
	cb, err := p.Wrap(b)
	if err != nil {
		ca.Close()
		t.Fatalf("Wrap: %v", err)
	}
	t.Cleanup(func() { ca.Close(); cb.Close() })
	return ca, cb
}

// eventually polls cond until it holds or waitLimit passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // polling interval, not synchronisation
	}
}

func allStacks() string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return string(buf[:n])
		}
		buf = make([]byte, 2*len(buf))
	}
}

// countParked counts goroutines started by the calling goroutine (the
// test's) that are parked (not running, not in a system call) with fn on
// their stack.
func countParked(t *testing.T, fn string) int {
	st := make([]byte, 64)
	st = st[:runtime.Stack(st, false)]
	marker := " in goroutine " + gid(st) + "\n"
	n := 0
	for _, g := range strings.Split(allStacks(), "\n\n") {
		hdr, _, _ := strings.Cut(g, "\n")
		if strings.Contains(hdr, "[running]") || strings.Contains(hdr, "[runnable]") || strings.Contains(hdr, "[syscall") {
			continue
		}
		if strings.Contains(g+"\n", marker) && strings.Contains(g, fn) {
			n++
		}
	}
	return n
}

// waitParked waits until n goroutines of the test are parked in fn: a
// Read or Write that found nothing to do and waits for the poller.
func waitParked(t *testing.T, fn string, n int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d goroutine(s) parked in %s", n, fn), func() bool { return countParked(t, fn) >= n })
}

const (
	inRead  = "poller.(*Conn).Read("
	inWrite = "poller.(*Conn).Write("
)

type result struct {
	n    int
	data []byte
	err  error
}

// goRead starts a Read of up to size bytes.
func goRead(c net.Conn, size int) <-chan result {
	ch := make(chan result, 1)
	go func() {
		b := make([]byte, size)
		n, err := c.Read(b)
		ch <- result{n, b[:n], err}
	}()
	return ch
}

func goWrite(c net.Conn, b []byte) <-chan result {
	ch := make(chan result, 1)
	go func() {
		n, err := c.Write(b)
		ch <- result{n: n, err: err}
	}()
	return ch
}

func await(t *testing.T, what string, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(waitLimit):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) && errors.As(err, &ne) && ne.Timeout()
}

// inq is the number of bytes waiting in c's receive queue.
func inq(t *testing.T, c *Conn) int {
	t.Helper()
	n, err := unix.IoctlGetInt(c.fd, unix.SIOCINQ)
	if err != nil {
		t.Fatalf("ioctl SIOCINQ: %v", err)
	}
	return n
}

func gid(stack []byte) string {
	s := strings.TrimPrefix(string(stack), "goroutine ")
	id, _, _ := strings.Cut(s, " ")
	return id
}

// handlerFunc adapts a function to Handler.
type handlerFunc func(c *Conn, ev uint32)

func (f handlerFunc) Ready(c *Conn, ev uint32) { f(c, ev) }

// call records one Handler.Ready call.
type call struct {
	ev     uint32
	onLoop bool   // the stack shows the poller goroutine's loop
	gid    string // goroutine id
	data   []byte // what TryRead got, if the handler read
	err    error  // TryRead's last error, if the handler read
}

// recorder returns a handler that records each call on a channel (it never
// blocks: a full channel is reported by the test as an error). With read,
// it reads the socket until ErrWouldBlock or another error on every call.
func recorder(read bool) (Handler, chan call) {
	ch := make(chan call, 1000)
	h := handlerFunc(func(c *Conn, ev uint32) {
		st := make([]byte, 4096)
		st = st[:runtime.Stack(st, false)]
		cl := call{ev: ev, onLoop: bytes.Contains(st, []byte("poller.(*Poller).loop(")), gid: gid(st)}
		if read {
			buf := make([]byte, 3) // small: several reads per event
			for {
				n, err := c.TryRead(buf)
				cl.data = append(cl.data, buf[:n]...)
				if err != nil {
					cl.err = err
					break
				}
			}
		}
		select {
		case ch <- cl:
		default:
			panic("handler call record channel full")
		}
	})
	return h, ch
}

func nextCall(t *testing.T, ch <-chan call, want func(call) bool) call {
	t.Helper()
	timeout := time.After(waitLimit)
	for {
		select {
		case cl := <-ch:
			if !cl.onLoop {
				t.Errorf("Handler.Ready(ev=%#x) called outside the poller goroutine", cl.ev)
			}
			if want(cl) {
				return cl
			}
		case <-timeout:
			t.Fatal("timed out waiting for a Handler.Ready call")
		}
	}
}

// ---------------------------------------------------------------------------
// 1. net.Conn conformance

func makePipe(network string) nettest.MakePipe {
	return func() (c1, c2 net.Conn, stop func(), err error) {
		var ln net.Listener
		var dir string
		switch network {
		case "tcp":
			ln, err = net.Listen("tcp", "127.0.0.1:0")
		case "unix":
			dir, err = os.MkdirTemp("", "poller")
			if err != nil {
				return nil, nil, nil, err
			}
			ln, err = net.Listen("unix", filepath.Join(dir, "s"))
		}
		if err != nil {
			return nil, nil, nil, err
		}
		defer func() {
			ln.Close()
			if dir != "" {
				os.RemoveAll(dir)
			}
		}()
		accepted := make(chan net.Conn, 1)
		go func() {
			c, _ := ln.Accept()
			accepted <- c
		}()
		d, err := net.Dial(ln.Addr().Network(), ln.Addr().String())
		if err != nil {
			return nil, nil, nil, err
		}
		a := <-accepted
		if a == nil {
			d.Close()
			return nil, nil, nil, errors.New("accept failed")
		}
		p, err := New()
		if err != nil {
			d.Close()
			a.Close()
			return nil, nil, nil, err
		}
		wd, err := p.Wrap(d)
		if err != nil {
			a.Close()
			p.Close()
			return nil, nil, nil, err
		}
		wa, err := p.Wrap(a)
		if err != nil {
			wd.Close()
			p.Close()
			return nil, nil, nil, err
		}
		stop = func() {
			wd.Close()
			wa.Close()
			p.Close()
		}
		return wd, wa, stop, nil
	}
}

func TestConnConformanceTCP(t *testing.T)  { nettest.TestConn(t, makePipe("tcp")) }
func TestConnConformanceUnix(t *testing.T) { nettest.TestConn(t, makePipe("unix")) }

// ---------------------------------------------------------------------------
// 2. Wrap

func TestWrapTakesSocket(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			p := newPoller(t)
			a, peer := rawPair(t, network)
			laddr, raddr := a.LocalAddr().String(), a.RemoteAddr().String()
			c, err := p.Wrap(a)
			if err != nil {
				t.Fatalf("Wrap: %v", err)
			}
			defer c.Close()

			if _, err := a.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
				t.Errorf("original Read after Wrap: err = %v, want net.ErrClosed", err)
			}
			if _, err := a.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
				t.Errorf("original Write after Wrap: err = %v, want net.ErrClosed", err)
			}
			if got := c.LocalAddr().String(); got != laddr {
				t.Errorf("LocalAddr = %q, want %q", got, laddr)
			}
			if got := c.RemoteAddr().String(); got != raddr {
				t.Errorf("RemoteAddr = %q, want %q", got, raddr)
			}
			if got := c.LocalAddr().Network(); got != network {
				t.Errorf("LocalAddr().Network() = %q, want %q", got, network)
			}

			if _, err := c.Write([]byte("ping")); err != nil {
				t.Fatalf("Write: %v", err)
			}
			buf := make([]byte, 4)
			peer.SetReadDeadline(time.Now().Add(waitLimit))
			if _, err := io.ReadFull(peer, buf); err != nil || string(buf) != "ping" {
				t.Fatalf("peer read %q, %v; want \"ping\"", buf, err)
			}
			if _, err := peer.Write([]byte("pong")); err != nil {
				t.Fatalf("peer Write: %v", err)
			}
			c.SetReadDeadline(time.Now().Add(waitLimit))
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "pong" {
				t.Fatalf("read %q, %v; want \"pong\"", buf, err)
			}
			if network == "tcp" {
				if err := c.SetNoDelay(false); err != nil {
					t.Errorf("SetNoDelay: %v", err)
				}
				v, err := unix.GetsockoptInt(c.fd, unix.IPPROTO_TCP, unix.TCP_NODELAY)
				if err != nil || v != 0 {
					t.Errorf("TCP_NODELAY = %d, %v after SetNoDelay(false)", v, err)
				}
			}
		})
	}
}

func TestWrapRejectsConnWithoutFD(t *testing.T) {
	p := newPoller(t)
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if c, err := p.Wrap(a); err == nil {
		c.Close()
		t.Fatal("Wrap(net.Pipe end) succeeded")
	}
}

// ---------------------------------------------------------------------------
// 3. Read: wake-up, deadlines, Close

func TestReadWakesOnData(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			p := newPoller(t)
			c, peer := pair(t, p, network)
			ch := goRead(c, 64)
			waitParked(t, inRead, 1)
			if _, err := peer.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			r := await(t, "Read to wake on data", ch)
			if r.err != nil || string(r.data) != "hello" {
				t.Fatalf("Read = %q, %v; want \"hello\"", r.data, r.err)
			}
		})
	}
}

func TestReadDeadlineExpired(t *testing.T) {
	p := newPoller(t)
	c, peer := pair(t, p, "tcp")

	c.SetReadDeadline(time.Now().Add(-time.Second))
	n, err := c.Read(make([]byte, 16))
	if n != 0 || !isTimeout(err) {
		t.Fatalf("Read with past deadline = %d, %v; want 0 and a timeout", n, err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" {
		t.Errorf("Read error %v is not a read *net.OpError", err)
	}

	// A future deadline expires while the Read waits.
	start := time.Now()
	c.SetReadDeadline(start.Add(50 * time.Millisecond))
	r := await(t, "Read to time out", goRead(c, 16))
	if r.n != 0 || !isTimeout(r.err) {
		t.Fatalf("Read with 50ms deadline = %d, %v; want 0 and a timeout", r.n, r.err)
	}
	if el := time.Since(start); el < 50*time.Millisecond {
		t.Errorf("Read timed out after %v, before its deadline", el)
	}

	// An expired deadline fails a Read even when data is waiting, as with
	// the runtime's poller.
	if _, err := peer.Write([]byte("data")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "data in the receive queue", func() bool { return inq(t, c) == 4 })
	c.SetReadDeadline(time.Now().Add(-time.Second))
	n, err = c.Read(make([]byte, 16))
	if n != 0 || !isTimeout(err) {
		t.Errorf("Read with past deadline and data waiting = %d, %v; want 0 and a timeout", n, err)
	}

	// A later deadline makes the Conn usable again.
	c.SetReadDeadline(time.Now().Add(waitLimit))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "data" {
		t.Fatalf("Read with a future deadline = %q, %v; want \"data\"", buf, err)
	}
}

func TestSetReadDeadlineWakesBlockedRead(t *testing.T) {
	p := newPoller(t)
	c, _ := pair(t, p, "tcp")
	ch := goRead(c, 16)
	waitParked(t, inRead, 1)
	c.SetReadDeadline(time.Now())
	r := await(t, "blocked Read to see the new deadline", ch)
	if r.n != 0 || !isTimeout(r.err) {
		t.Fatalf("Read = %d, %v; want 0 and a timeout", r.n, r.err)
	}
}

func TestSetReadDeadlineExtendsBlockedRead(t *testing.T) {
	p := newPoller(t)
	c, peer := pair(t, p, "tcp")
	c.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	ch := goRead(c, 16)
	waitParked(t, inRead, 1)
	c.SetReadDeadline(time.Time{}) // the Read must now wait for data
	select {
	case r := <-ch:
		t.Fatalf("Read returned %d, %v after its deadline was cleared", r.n, r.err)
	case <-time.After(100 * time.Millisecond):
	}
	peer.Write([]byte("late"))
	r := await(t, "Read", ch)
	if r.err != nil || string(r.data) != "late" {
		t.Fatalf("Read = %q, %v; want \"late\"", r.data, r.err)
	}
}

func TestCloseWakesBlockedReadAndWrite(t *testing.T) {
	p := newPoller(t)
	c, peer := pair(t, p, "tcp")
	peer.(*net.TCPConn).SetReadBuffer(16 << 10)
	rch := goRead(c, 16)
	wch := goWrite(c, make([]byte, 64<<20)) // the peer never reads
	waitParked(t, inRead, 1)
	waitParked(t, inWrite, 1)
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	r := await(t, "Read to wake on Close", rch)
	if !errors.Is(r.err, net.ErrClosed) {
		t.Errorf("Read after Close: %v, want net.ErrClosed", r.err)
	}
	w := await(t, "Write to wake on Close", wch)
	if !errors.Is(w.err, net.ErrClosed) {
		t.Errorf("Write after Close: %v, want net.ErrClosed", w.err)
	}
	if w.n <= 0 || w.n >= 64<<20 {
		t.Errorf("Write wrote %d bytes, want a partial write", w.n)
	}
	select {
	case <-c.Closed():
	default:
		t.Error("Closed() not closed after Close")
	}
	if err := c.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close = %v, want net.ErrClosed", err)
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read on closed Conn = %v, want net.ErrClosed", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write on closed Conn = %v, want net.ErrClosed", err)
	}
	if _, err := c.TryWrite([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("TryWrite on closed Conn = %v, want net.ErrClosed", err)
	}
	if err := c.SetNoDelay(true); !errors.Is(err, net.ErrClosed) {
		t.Errorf("SetNoDelay on closed Conn = %v, want net.ErrClosed", err)
	}
	// The peer sees the connection go.
	peer.SetReadDeadline(time.Now().Add(waitLimit))
	if _, err := io.Copy(io.Discard, peer); err != nil && !errors.Is(err, unix.ECONNRESET) {
		t.Errorf("peer read after Close: %v", err)
	}
}

// Two Reads wait at once and one arrival of data is enough for both: the
// second must not sleep through data the first left in the socket.
func TestConcurrentReadersNoLostWakeup(t *testing.T) {
	p := newPoller(t)
	c, peer := pair(t, p, "tcp")
	ch1 := goRead(c, 1)
	ch2 := goRead(c, 1)
	waitParked(t, inRead, 2)
	if _, err := peer.Write([]byte("ab")); err != nil {
		t.Fatal(err)
	}
	var got []byte
	for i, ch := range []<-chan result{ch1, ch2} {
		select {
		case r := <-ch:
			if r.err != nil {
				t.Fatalf("Read %d: %v", i, r.err)
			}
			got = append(got, r.data...)
		case <-time.After(waitLimit):
			left := inq(t, c)
			c.Close()
			t.Fatalf("Read %d still blocked with %d byte(s) in the socket", i, left)
		}
	}
	if len(got) != 2 || !bytes.ContainsRune(got, 'a') || !bytes.ContainsRune(got, 'b') {
		t.Fatalf("Reads got %q, want \"a\" and \"b\"", got)
	}
}

// ---------------------------------------------------------------------------
// 4. EOF and TryRead

func TestPeerCloseEOF(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			p := newPoller(t)

			// Blocking Read: the data, then io.EOF, also for a Read already
			// waiting when the peer closes.
			c, peer := pair(t, p, network)
			if _, err := peer.Write([]byte("last")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4)
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "last" {
				t.Fatalf("Read = %q, %v", buf, err)
			}
			ch := goRead(c, 16)
			waitParked(t, inRead, 1)
			peer.Close()
			if r := await(t, "Read to see EOF", ch); r.n != 0 || r.err != io.EOF {
				t.Fatalf("Read after peer close = %d, %v; want 0, io.EOF", r.n, r.err)
			}
			if n, err := c.Read(buf); n != 0 || err != io.EOF {
				t.Errorf("second Read after peer close = %d, %v; want 0, io.EOF", n, err)
			}
			if n, err := c.TryRead(buf); n != 0 || err != io.EOF {
				t.Errorf("TryRead after peer close = %d, %v; want 0, io.EOF", n, err)
			}

			// TryRead alone.
			c2, peer2 := pair(t, p, network)
			if n, err := c2.TryRead(buf); n != 0 || err != ErrWouldBlock {
				t.Fatalf("TryRead on an empty socket = %d, %v; want 0, ErrWouldBlock", n, err)
			}
			if n, err := c2.TryRead(nil); n != 0 || err != nil {
				t.Errorf("TryRead(nil) = %d, %v; want 0, nil", n, err)
			}
			peer2.Write([]byte("xy"))
			var got []byte
			eventually(t, "TryRead to return the data", func() bool {
				n, err := c2.TryRead(buf)
				if err != nil && err != ErrWouldBlock {
					t.Fatalf("TryRead: %v", err)
				}
				got = append(got, buf[:n]...)
				return len(got) >= 2
			})
			if string(got) != "xy" {
				t.Fatalf("TryRead got %q, want \"xy\"", got)
			}
			if _, err := c2.TryRead(buf); err != ErrWouldBlock {
				t.Fatalf("TryRead on a drained socket: %v, want ErrWouldBlock", err)
			}
			peer2.Close()
			var err error
			eventually(t, "TryRead to see the peer's close", func() bool {
				_, err = c2.TryRead(buf)
				return err != ErrWouldBlock
			})
			if err != io.EOF {
				t.Fatalf("TryRead after peer close: %v, want io.EOF", err)
			}
		})
	}
}

func TestTryWrite(t *testing.T) {
	p := newPoller(t)
	c, peer := pair(t, p, "tcp")
	peer.(*net.TCPConn).SetReadBuffer(16 << 10)
	if n, err := c.TryWrite([]byte("abc")); n != 3 || err != nil {
		t.Fatalf("TryWrite = %d, %v; want 3, nil", n, err)
	}
	// Fill the socket: TryWrite then takes nothing and says so.
	big := make([]byte, 1<<20)
	total := 3
	for i := 0; ; i++ {
		n, err := c.TryWrite(big)
		total += n
		if err == ErrWouldBlock {
			if n != 0 {
				t.Fatalf("TryWrite returned %d with ErrWouldBlock", n)
			}
			break
		}
		if err != nil {
			t.Fatalf("TryWrite: %v", err)
		}
		if i > 1000 {
			t.Fatal("TryWrite never blocked")
		}
	}
	// Everything it reported written arrives.
	peer.SetReadDeadline(time.Now().Add(waitLimit))
	got := make([]byte, total)
	if _, err := io.ReadFull(peer, got); err != nil {
		t.Fatalf("peer read: %v", err)
	}
	if string(got[:3]) != "abc" {
		t.Fatalf("peer got %q first", got[:3])
	}
}

// ---------------------------------------------------------------------------
// 5. Write

func checksumReader(t *testing.T, r io.Reader, size int, slow bool) <-chan [32]byte {
	ch := make(chan [32]byte, 1)
	go func() {
		h := sha256.New()
		buf := make([]byte, 4096)
		got := 0
		for i := 0; got < size; i++ {
			n, err := r.Read(buf)
			h.Write(buf[:n])
			got += n
			if err != nil {
				t.Errorf("peer read after %d bytes: %v", got, err)
				break
			}
			if slow && i%64 == 0 {
				time.Sleep(time.Millisecond) // a slow reader, not synchronisation
			}
		}
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		ch <- sum
	}()
	return ch
}

func TestLargeWrite(t *testing.T) {
	const size = 8 << 20
	data := make([]byte, size)
	rand.New(rand.NewSource(1)).Read(data)
	want := sha256.Sum256(data)
	for _, tc := range []struct {
		network string
		wrapped bool // the reading peer is a Conn too
	}{{"tcp", false}, {"tcp", true}, {"unix", false}, {"unix", true}} {
		t.Run(fmt.Sprintf("%s/wrappedPeer=%v", tc.network, tc.wrapped), func(t *testing.T) {
			p := newPoller(t)
			a, b := rawPair(t, tc.network)
			if tc.network == "tcp" {
				// Small buffers: the Write has to wait many times.
				a.(*net.TCPConn).SetWriteBuffer(32 << 10)
				b.(*net.TCPConn).SetReadBuffer(32 << 10)
			}
			c, err := p.Wrap(a)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var peer net.Conn = b
			if tc.wrapped {
				cb, err := p.Wrap(b)
				if err != nil {
					t.Fatal(err)
				}
				defer cb.Close()
				peer = cb
			}
			peer.SetReadDeadline(time.Now().Add(60 * time.Second))
			c.SetWriteDeadline(time.Now().Add(60 * time.Second))
			sum := checksumReader(t, peer, size, true)
			n, err := c.Write(data)
			if n != size || err != nil {
				t.Fatalf("Write = %d, %v; want %d, nil", n, err, size)
			}
			select {
			case got := <-sum:
				if got != want {
					t.Fatal("data arrived corrupted (checksum mismatch)")
				}
			case <-time.After(60 * time.Second):
				t.Fatal("timed out waiting for the peer to read everything")
			}
		})
	}
}

func TestWriteDeadline(t *testing.T) {
	p := newPoller(t)
	c, peer := pair(t, p, "tcp")
	peer.(*net.TCPConn).SetReadBuffer(16 << 10)
	const size = 64 << 20

	// A Write blocked because the peer does not read wakes with a timeout
	// when the deadline is set from another goroutine.
	ch := goWrite(c, make([]byte, size))
	waitParked(t, inWrite, 1)
	c.SetWriteDeadline(time.Now())
	r := await(t, "blocked Write to see the deadline", ch)
	if !isTimeout(r.err) {
		t.Fatalf("Write error %v, want a timeout", r.err)
	}
	if r.n <= 0 || r.n >= size {
		t.Errorf("Write wrote %d of %d bytes, want a partial write", r.n, size)
	}
	var oe *net.OpError
	if !errors.As(r.err, &oe) || oe.Op != "write" {
		t.Errorf("Write error %v is not a write *net.OpError", r.err)
	}

	// A deadline in the past fails a Write at once, writing nothing, even
	// with room in the socket: see the second half.
	c.SetWriteDeadline(time.Now().Add(-time.Second))
	if n, err := c.Write([]byte("x")); n != 0 || !isTimeout(err) {
		t.Errorf("Write with past deadline = %d, %v; want 0 and a timeout", n, err)
	}

	// A future deadline expires during the Write.
	c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	r = await(t, "Write to time out", goWrite(c, make([]byte, size)))
	if !isTimeout(r.err) {
		t.Fatalf("Write error %v, want a timeout", r.err)
	}
}

func TestWriteDeadlineWithRoom(t *testing.T) {
	p := newPoller(t)
	c, peer := pair(t, p, "tcp")
	c.SetWriteDeadline(time.Now().Add(-time.Second))
	if n, err := c.Write([]byte("lost")); n != 0 || !isTimeout(err) {
		t.Errorf("Write with past deadline = %d, %v; want 0 and a timeout", n, err)
	}
	c.SetWriteDeadline(time.Time{})
	if _, err := c.Write([]byte("kept")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	peer.SetReadDeadline(time.Now().Add(waitLimit))
	if _, err := io.ReadFull(peer, buf); err != nil || string(buf) != "kept" {
		t.Fatalf("peer read %q, %v; want \"kept\" (a Write past its deadline sent data)", buf, err)
	}
}

// ---------------------------------------------------------------------------
// 6. Handler

func TestHandlerKick(t *testing.T) {
	p := newPoller(t)
	c, _ := pair(t, p, "tcp")
	h, calls := recorder(false)
	c.SetHandler(h)
	c.Kick()
	first := nextCall(t, calls, func(cl call) bool { return cl.ev == EvKick })
	p.Kick(c)
	second := nextCall(t, calls, func(cl call) bool { return cl.ev == EvKick })
	if first.gid != second.gid {
		t.Errorf("Ready called on goroutines %s and %s, want one poller goroutine", first.gid, second.gid)
	}
}

// With no handler, Kick wakes waiting Reads: here one whose data came
// with an event nobody passed on (a handler took it and was then removed
// without SetHandler's own wake-up).
func TestKickWithoutHandlerWakesWaiters(t *testing.T) {
	p := newPoller(t)
	c, peer := pair(t, p, "tcp")
	ch := goRead(c, 16)
	waitParked(t, inRead, 1)
	h, calls := recorder(false)
	c.SetHandler(h)
	peer.Write([]byte("k"))
	nextCall(t, calls, func(cl call) bool { return cl.ev&unix.EPOLLIN != 0 })
	c.handler.Store(nil) // unlike SetHandler(nil), wakes nobody
	select {
	case r := <-ch:
		t.Fatalf("Read returned %q, %v before the Kick", r.data, r.err)
	default:
	}
	c.Kick()
	if r := await(t, "Read to wake on Kick", ch); r.err != nil || string(r.data) != "k" {
		t.Fatalf("Read = %q, %v; want \"k\"", r.data, r.err)
	}
}

func TestHandlerReadsOnPollerGoroutine(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			p := newPoller(t)
			c, peer := pair(t, p, network)
			h, calls := recorder(true)
			c.SetHandler(h)
			c.Kick() // readiness before SetHandler is not lost
			// Wait for the kick's call before writing, or it may be the
			// one that reads the message (spurious events are allowed).
			nextCall(t, calls, func(cl call) bool { return cl.ev&EvKick != 0 })
			msg := "hello, handler"
			if _, err := peer.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			var got []byte
			sawIn := false
			gids := map[string]bool{}
			nextCall(t, calls, func(cl call) bool {
				t.Logf("call ev=%#x data=%q err=%v", cl.ev, cl.data, cl.err)
				gids[cl.gid] = true
				if cl.ev&unix.EPOLLIN != 0 {
					sawIn = true
				}
				if cl.err != ErrWouldBlock {
					t.Errorf("handler TryRead stopped with %v, want ErrWouldBlock", cl.err)
				}
				got = append(got, cl.data...)
				return len(got) >= len(msg)
			})
			if string(got) != msg {
				t.Fatalf("handler read %q, want %q", got, msg)
			}
			if !sawIn {
				t.Error("no Ready call had EPOLLIN set")
			}
			if len(gids) != 1 {
				t.Errorf("Ready ran on goroutines %v, want one", gids)
			}

			// A second message: a fresh EPOLLIN call (edge-triggered, the
			// handler drained the socket).
			peer.Write([]byte("again"))
			got = nil
			nextCall(t, calls, func(cl call) bool {
				t.Logf("call ev=%#x data=%q err=%v", cl.ev, cl.data, cl.err)
				got = append(got, cl.data...)
				return cl.ev&unix.EPOLLIN != 0 && len(got) >= 5
			})
			if string(got) != "again" {
				t.Fatalf("handler read %q, want \"again\"", got)
			}

			// Peer close: the handler sees EOF.
			peer.Close()
			nextCall(t, calls, func(cl call) bool { return cl.err == io.EOF })
		})
	}
}

// With a handler set, events go to it; a Read waiting all along must be
// woken by SetHandler(nil), since the handler may have taken the event of
// data it did not read.
func TestSetHandlerNilNoLostWakeup(t *testing.T) {
	p := newPoller(t)
	c, peer := pair(t, p, "tcp")
	ch := goRead(c, 16)
	waitParked(t, inRead, 1)

	h, calls := recorder(false) // takes events, reads nothing
	c.SetHandler(h)
	if _, err := peer.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	nextCall(t, calls, func(cl call) bool { return cl.ev&unix.EPOLLIN != 0 })
	c.SetHandler(nil)
	r := await(t, "the waiting Read after SetHandler(nil)", ch)
	if r.err != nil || string(r.data) != "abc" {
		t.Fatalf("Read = %q, %v; want \"abc\"", r.data, r.err)
	}

	// Later data goes to blocking Reads again.
	ch = goRead(c, 16)
	waitParked(t, inRead, 1)
	peer.Write([]byte("def"))
	r = await(t, "Read after SetHandler(nil)", ch)
	if r.err != nil || string(r.data) != "def" {
		t.Fatalf("Read = %q, %v; want \"def\"", r.data, r.err)
	}
	select {
	case cl := <-calls:
		t.Errorf("handler called (ev=%#x) after SetHandler(nil)", cl.ev)
	default:
	}
}

func TestCloseWithHandler(t *testing.T) {
	p := newPoller(t)
	c, _ := pair(t, p, "tcp")
	other, _ := pair(t, p, "tcp")

	var mu sync.Mutex
	var afterClose []call // EvKick calls seen after Close
	closed := false
	gotKick := make(chan struct{}, 1)
	c.SetHandler(handlerFunc(func(c *Conn, ev uint32) {
		if ev != EvKick {
			return
		}
		_, err := c.TryRead(make([]byte, 8))
		mu.Lock()
		if closed {
			afterClose = append(afterClose, call{ev: ev, err: err})
		}
		mu.Unlock()
		select {
		case gotKick <- struct{}{}:
		default:
		}
	}))
	otherKicked := make(chan struct{}, 1)
	other.SetHandler(handlerFunc(func(_ *Conn, ev uint32) {
		if ev == EvKick {
			otherKicked <- struct{}{}
		}
	}))

	mu.Lock()
	closed = true
	mu.Unlock()
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-gotKick:
	case <-time.After(waitLimit):
		t.Fatal("Close did not call the handler with EvKick")
	}
	// Kicks run in order: once other's kick is seen, any further call for
	// c would have been made.
	other.Kick()
	select {
	case <-otherKicked:
	case <-time.After(waitLimit):
		t.Fatal("kick of the other Conn not delivered")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(afterClose) != 1 {
		t.Fatalf("handler called %d times with EvKick after Close, want 1", len(afterClose))
	}
	if err := afterClose[0].err; !errors.Is(err, net.ErrClosed) {
		t.Errorf("TryRead in the handler after Close: %v, want net.ErrClosed", err)
	}
}

// An echo server on the poller goroutine: TryRead, TryWrite, and a pending
// buffer flushed on EPOLLOUT.
type echoHandler struct {
	pending []byte
	buf     [1024]byte
	errs    chan error
}

func (e *echoHandler) Ready(c *Conn, ev uint32) {
	for {
		for len(e.pending) > 0 {
			n, err := c.TryWrite(e.pending)
			e.pending = e.pending[n:]
			if err == ErrWouldBlock {
				return // EPOLLOUT will call again
			}
			if err != nil {
				e.fail(err)
				return
			}
		}
		n, err := c.TryRead(e.buf[:])
		if err == ErrWouldBlock {
			return
		}
		if err != nil {
			if err != io.EOF && !errors.Is(err, net.ErrClosed) {
				e.fail(err)
			}
			return
		}
		e.pending = append(e.pending[:0:0], e.buf[:n]...)
	}
}

func (e *echoHandler) fail(err error) {
	select {
	case e.errs <- err:
	default:
	}
}

func TestHandlerEcho(t *testing.T) {
	p := newPoller(t)
	errs := make(chan error, 1)
	const pairs, rounds = 10, 200
	var wg sync.WaitGroup
	for i := 0; i < pairs; i++ {
		server, client := wrappedPair(t, p, "tcp")
		server.SetHandler(&echoHandler{errs: errs})
		server.Kick()
		client.SetDeadline(time.Now().Add(60 * time.Second))
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(i)))
			for r := 0; r < rounds; r++ {
				msg := make([]byte, 1+rng.Intn(100<<10))
				rng.Read(msg)
				wch := goWrite(client, msg)
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(client, got); err != nil {
					errs <- fmt.Errorf("pair %d round %d: read: %v", i, r, err)
					return
				}
				if w := <-wch; w.err != nil {
					errs <- fmt.Errorf("pair %d round %d: write: %v", i, r, w.err)
					return
				}
				if !bytes.Equal(got, msg) {
					errs <- fmt.Errorf("pair %d round %d: echo differs", i, r)
					return
				}
			}
		}(i)
	}
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
}

// ---------------------------------------------------------------------------
// 7. Poller.Close

func loopGoroutines() int {
	return strings.Count(allStacks(), "poller.(*Poller).loop(")
}

func TestPollerClose(t *testing.T) {
	before := loopGoroutines()
	p, err := New()
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the poller goroutine to show", func() bool { return loopGoroutines() == before+1 })
	c, peer := pair(t, p, "tcp")
	h, _ := recorder(false)
	c2, _ := pair(t, p, "tcp")
	c2.SetHandler(h)

	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Poller.Close did not return")
	}
	select {
	case <-p.stopped:
	default:
		t.Fatal("poller goroutine not stopped after Close")
	}
	eventually(t, "the poller goroutine to exit", func() bool { return loopGoroutines() == before })
	if err := p.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}

	// Wrap fails.
	a, _ := rawPair(t, "tcp")
	if wc, err := p.Wrap(a); !errors.Is(err, net.ErrClosed) {
		if wc != nil {
			wc.Close()
		}
		t.Errorf("Wrap after Close: %v, want net.ErrClosed", err)
	}

	// The poller's descriptors are closed; make their numbers be reused by
	// a pipe's write end, then close Conns (one with a handler, which
	// kicks) and kick: nothing may reach the pipe.
	var pfd [2]int
	if err := unix.Pipe2(pfd[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pfd[0])
	defer unix.Close(pfd[1])
	var dups []int
	defer func() {
		for _, fd := range dups {
			unix.Close(fd)
		}
	}()
	reused := 0
	for _, fd := range pfd {
		if fd == p.wakefd || fd == p.epfd {
			reused++
		}
	}
	for i := 0; i < 64 && reused < 2; i++ {
		fd, err := unix.Dup(pfd[1])
		if err != nil {
			t.Fatal(err)
		}
		dups = append(dups, fd)
		if fd == p.wakefd || fd == p.epfd {
			reused++
		}
	}
	if reused < 2 {
		t.Logf("descriptors of the closed poller not reused (%d of 2)", reused)
	}

	if err := c.Close(); err != nil {
		t.Errorf("Conn.Close after Poller.Close: %v", err)
	}
	if err := c2.Close(); err != nil {
		t.Errorf("Conn.Close (with handler) after Poller.Close: %v", err)
	}
	p.Kick(c2)
	if n, err := unix.Read(pfd[0], make([]byte, 64)); err != unix.EAGAIN {
		t.Errorf("a descriptor number the closed poller had was written to: read %d, %v", n, err)
	}
	// c really closed its socket.
	peer.SetReadDeadline(time.Now().Add(waitLimit))
	if _, err := io.Copy(io.Discard, peer); err != nil {
		t.Errorf("peer after Close: %v", err)
	}
}

// ---------------------------------------------------------------------------
// 8. Concurrency

func TestConcurrentRoundTrips(t *testing.T) {
	const pairs, rounds = 50, 1000
	p := newPoller(t)
	errs := make(chan error, 2*pairs)
	var wg sync.WaitGroup
	for i := 0; i < pairs; i++ {
		network := "tcp"
		if i%5 == 4 {
			network = "unix"
		}
		client, server := wrappedPair(t, p, network)
		dl := time.Now().Add(120 * time.Second)
		client.SetDeadline(dl)
		server.SetDeadline(dl)
		wg.Add(2)
		// Server: echo each length-prefixed message, reversed.
		go func() {
			defer wg.Done()
			hdr := make([]byte, 4)
			for r := 0; r < rounds; r++ {
				if _, err := io.ReadFull(server, hdr); err != nil {
					errs <- fmt.Errorf("server read header: %w", err)
					return
				}
				body := make([]byte, binary.BigEndian.Uint32(hdr))
				if _, err := io.ReadFull(server, body); err != nil {
					errs <- fmt.Errorf("server read body: %w", err)
					return
				}
				for a, b := 0, len(body)-1; a < b; a, b = a+1, b-1 {
					body[a], body[b] = body[b], body[a]
				}
				if _, err := server.Write(append(hdr, body...)); err != nil {
					errs <- fmt.Errorf("server write: %w", err)
					return
				}
			}
		}()
		go func(i int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(i)))
			for r := 0; r < rounds; r++ {
				size := 8 + rng.Intn(2000)
				if r%100 == 99 {
					size = 64<<10 + rng.Intn(64<<10)
				}
				msg := make([]byte, 4+size)
				binary.BigEndian.PutUint32(msg, uint32(size))
				binary.BigEndian.PutUint32(msg[4:], uint32(i))
				binary.BigEndian.PutUint32(msg[size:], uint32(r)) // last 4 bytes
				rng.Read(msg[8:size])
				if _, err := client.Write(msg); err != nil {
					errs <- fmt.Errorf("pair %d round %d: write: %w", i, r, err)
					return
				}
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(client, got); err != nil {
					errs <- fmt.Errorf("pair %d round %d: read: %w", i, r, err)
					return
				}
				body := got[4:]
				for a, b := 0, len(body)-1; a < b; a, b = a+1, b-1 {
					body[a], body[b] = body[b], body[a]
				}
				if !bytes.Equal(got, msg) {
					errs <- fmt.Errorf("pair %d round %d: response differs", i, r)
					return
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// Many goroutines close Conns while others read, write and kick them.
func TestConcurrentCloseRace(t *testing.T) {
	p := newPoller(t)
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		c, peer := pair(t, p, "tcp")
		if i%2 == 0 {
			c.SetHandler(handlerFunc(func(c *Conn, ev uint32) { c.TryRead(make([]byte, 64)) }))
		}
		wg.Add(4)
		go func() { defer wg.Done(); c.Read(make([]byte, 64)) }()
		go func() {
			defer wg.Done()
			for {
				if _, err := c.Write(make([]byte, 1024)); err != nil {
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			for j := 0; j < 10; j++ {
				c.Kick()
				peer.Write([]byte("x"))
			}
		}()
		go func() { defer wg.Done(); c.Close() }()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(waitLimit):
		t.Fatal("Reads or Writes still blocked after Close")
	}
}

func TestDeadlineBeforeEpoch(t *testing.T) {
	if got := unixNano(time.Time{}); got != 0 {
		t.Errorf("unixNano(zero) = %d", got)
	}
	if got := unixNano(time.Unix(-5, 0)); got <= 0 {
		t.Errorf("unixNano(before 1970) = %d, want > 0 (a past deadline)", got)
	}
	if got := unixNano(time.Unix(0, 0)); got <= 0 {
		t.Errorf("unixNano(epoch) = %d, want > 0 (a past deadline)", got)
	}
	now := time.Now().UnixNano()
	if got := unixNano(time.Unix(-1<<40, 0)); got <= 0 || got > now {
		t.Errorf("unixNano(year -32873) = %d, want a past deadline", got)
	}
	if got := unixNano(time.Unix(1<<40, 0)); got < now {
		t.Errorf("unixNano(year 36812) = %d, want a future deadline", got)
	}
	if got, want := unixNano(time.Unix(5, 6)), int64(5e9+6); got != want {
		t.Errorf("unixNano(5.000000006) = %d, want %d", got, want)
	}
}

// A deadline too far ahead for int64 nanoseconds is no deadline at all,
// not one in the past.
func TestFarFutureDeadline(t *testing.T) {
	p := newPoller(t)
	c, peer := pair(t, p, "tcp")
	for _, d := range []time.Time{time.Now().Add(math.MaxInt64), time.Unix(1<<40, 0)} {
		c.SetReadDeadline(d)
		ch := goRead(c, 16)
		eventually(t, "Read to block, or return", func() bool {
			select {
			case r := <-ch:
				t.Fatalf("Read with deadline %v returned %d, %v", d, r.n, r.err)
			default:
			}
			return countParked(t, inRead) == 1
		})
		peer.Write([]byte("z"))
		if r := await(t, "Read", ch); r.err != nil || string(r.data) != "z" {
			t.Fatalf("Read = %q, %v", r.data, r.err)
		}
	}
}

// TestSetHandlerAfterClose: a handler set on a Conn that another
// goroutine closed first (Close found no handler to tell: the router's
// login handed the session to the fast path while Router.Close closed
// the client) still gets the EvKick call that lets it end the session.
func TestSetHandlerAfterClose(t *testing.T) {
	p := newPoller(t)
	c, _ := pair(t, p, "tcp")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	kicked := make(chan error, 1)
	c.SetHandler(handlerFunc(func(c *Conn, ev uint32) {
		if ev == EvKick {
			_, err := c.TryRead(make([]byte, 8))
			kicked <- err
		}
	}))
	select {
	case err := <-kicked:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("read in the kick: %v, want net.ErrClosed", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("a handler set after Close was never called")
	}
}

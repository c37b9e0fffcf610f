package poller

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrWouldBlock: TryRead or TryWrite found nothing to read or no room to
// write.
var ErrWouldBlock = errors.New("poller: operation would block")

// Conn is a stream socket registered with a Poller. It is a net.Conn:
// blocking Read and Write wait for the poller's events, with deadlines.
// TryRead and TryWrite never wait, for a Handler.
type Conn struct {
	p            *Poller
	fd           int
	netw         string
	laddr, raddr net.Addr

	// The descriptor is closed once Close was called and no read or write
	// uses it (refs), so that a number the kernel reuses is never read.
	mu      sync.Mutex
	refs    int
	closing bool
	fdOpen  bool

	closed chan struct{}
	rready chan struct{} // capacity 1: "the socket may be readable now"
	wready chan struct{}
	rdl    atomic.Int64 // read deadline, Unix nanoseconds; 0 none
	wdl    atomic.Int64
	rmu    sync.Mutex // one Read at a time: see Read
	wmu    sync.Mutex // one Write at a time, whole

	handler atomic.Pointer[handlerRef]
	// readEvents counts the socket's read-side events (data, its end, an
	// error), whoever serves them: a connection whose count has not moved
	// since the last read is known to have received nothing (ReadEvents),
	// without a system call to find out.
	readEvents atomic.Uint32
}

type handlerRef struct{ h Handler }

// Wrap moves nc's socket from the Go runtime's poller to p: the socket is
// duplicated, nc is closed, and the Conn returned owns the duplicate. nc
// must be a *net.TCPConn or *net.UnixConn.
func (p *Poller) Wrap(nc net.Conn) (*Conn, error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("poller: %T has no file descriptor", nc)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	var derr error
	if err := raw.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, fmt.Errorf("poller: dup: %w", derr)
	}
	// The duplicate shares the open file, already non-blocking; closing
	// nc takes it out of the runtime's epoll set.
	nc.Close()
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	c := p.newConn(fd, nc.LocalAddr().Network(), nc.LocalAddr(), nc.RemoteAddr())
	if err := p.add(c); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return c, nil
}

// newConn is a Conn for the open, non-blocking socket fd, not yet added.
func (p *Poller) newConn(fd int, netw string, laddr, raddr net.Addr) *Conn {
	return &Conn{p: p, fd: fd, netw: netw, laddr: laddr, raddr: raddr, fdOpen: true,
		closed: make(chan struct{}), rready: make(chan struct{}, 1), wready: make(chan struct{}, 1)}
}

// SetHandler makes h serve c's events on the poller goroutine (nil: wake
// blocked readers and writers again). Set it from the poller goroutine, or
// from a goroutine that then calls Kick, so that readiness that came
// before is not lost. A handler set on a Conn that another goroutine has
// closed meanwhile (Close found no handler to tell) gets Close's EvKick
// call all the same.
func (c *Conn) SetHandler(h Handler) {
	if h == nil {
		c.handler.Store(nil)
		signal(c.rready) // a waiter may have missed an event the handler took
		signal(c.wready)
		return
	}
	c.handler.Store(&handlerRef{h})
	// Close marks closing under mu, then looks for a handler: one of the
	// two sees the other.
	c.mu.Lock()
	closing := c.closing
	c.mu.Unlock()
	if closing {
		c.p.Kick(c)
	}
}

// Kick: see Poller.Kick.
func (c *Conn) Kick() { c.p.Kick(c) }

// ReadEvents is the number of read-side events the poller has seen on the
// socket so far (data arriving, the peer's end, an error): what arrives
// after a read that emptied the socket changes it.
func (c *Conn) ReadEvents() uint32 { return c.readEvents.Load() }

func (c *Conn) ready(ev uint32) {
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.readEvents.Add(1)
	}
	if h := c.handler.Load(); h != nil {
		h.h.Ready(c, ev)
		return
	}
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR|EvKick) != 0 {
		signal(c.rready)
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR|EvKick) != 0 {
		signal(c.wready)
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (c *Conn) incref() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return false
	}
	c.refs++
	return true
}

func (c *Conn) decref() {
	c.mu.Lock()
	c.refs--
	closeNow := c.closing && c.refs == 0 && c.fdOpen
	if closeNow {
		c.fdOpen = false
	}
	c.mu.Unlock()
	if closeNow {
		unix.Close(c.fd)
	}
}

// TryRead reads what the socket holds, without waiting: ErrWouldBlock when
// nothing, io.EOF when the peer closed.
func (c *Conn) TryRead(b []byte) (int, error) {
	if !c.incref() {
		return 0, c.opErr("read", net.ErrClosed)
	}
	defer c.decref()
	for {
		n, err := rawRead(c.fd, b)
		switch {
		case err == nil && n == 0 && len(b) > 0:
			return 0, io.EOF
		case err == nil:
			return n, nil
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return 0, ErrWouldBlock
		}
		return 0, c.opErr("read", os.NewSyscallError("read", err))
	}
}

// TryWrite writes as much of b as the socket takes now; ErrWouldBlock when
// it took nothing.
func (c *Conn) TryWrite(b []byte) (int, error) {
	if !c.incref() {
		return 0, c.opErr("write", net.ErrClosed)
	}
	defer c.decref()
	for {
		n, err := rawWrite(c.fd, b)
		switch {
		case err == nil:
			return n, nil
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return 0, ErrWouldBlock
		}
		return 0, c.opErr("write", os.NewSyscallError("write", err))
	}
}

// Read implements net.Conn.
func (c *Conn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	// One Read at a time, as in package net: an arrival of data is one
	// edge-triggered event, which wakes one waiting Read; a second one
	// waiting beside it would sleep through what the first left unread.
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for {
		// A deadline that passed fails the Read even with data waiting,
		// as in package net.
		if expired(&c.rdl) {
			return 0, c.opErr("read", os.ErrDeadlineExceeded)
		}
		n, err := c.TryRead(b)
		if err != ErrWouldBlock {
			return n, err
		}
		if err := c.wait(c.rready, &c.rdl); err != nil {
			return 0, c.opErr("read", err)
		}
	}
}

// Write implements net.Conn: it returns when all of b is written, or with
// the error that stopped it.
func (c *Conn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	done := 0
	for done < len(b) {
		if expired(&c.wdl) {
			return done, c.opErr("write", os.ErrDeadlineExceeded)
		}
		n, err := c.TryWrite(b[done:])
		done += n
		if err == nil {
			continue
		}
		if err != ErrWouldBlock {
			return done, err
		}
		if err := c.wait(c.wready, &c.wdl); err != nil {
			return done, c.opErr("write", err)
		}
	}
	return done, nil
}

// expired reports whether the deadline in dl has passed.
func expired(dl *atomic.Int64) bool {
	d := dl.Load()
	return d != 0 && time.Now().UnixNano() >= d
}

// wait blocks until ready is signalled, the deadline passes or c closes.
func (c *Conn) wait(ready chan struct{}, dl *atomic.Int64) error {
	for {
		d := dl.Load()
		var timeout <-chan time.Time
		var t *time.Timer
		if d != 0 {
			left := time.Until(time.Unix(0, d))
			if left <= 0 {
				return os.ErrDeadlineExceeded
			}
			t = time.NewTimer(left)
			timeout = t.C
		}
		select {
		case <-ready:
			if t != nil {
				t.Stop()
			}
			return nil
		case <-c.closed:
			if t != nil {
				t.Stop()
			}
			return net.ErrClosed
		case <-timeout:
			// Look at the deadline again: it may have moved.
		}
	}
}

// Close implements net.Conn. A handler set on c gets one last EvKick call
// (its reads then fail with net.ErrClosed).
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return c.opErr("close", net.ErrClosed)
	}
	c.closing = true
	c.mu.Unlock()
	c.p.remove(c)
	close(c.closed)
	c.mu.Lock()
	closeNow := c.refs == 0 && c.fdOpen
	if closeNow {
		c.fdOpen = false
	}
	c.mu.Unlock()
	if closeNow {
		unix.Close(c.fd)
	}
	if c.handler.Load() != nil {
		c.p.Kick(c)
	}
	return nil
}

// Closed is closed when Close is called.
func (c *Conn) Closed() <-chan struct{} { return c.closed }

func (c *Conn) LocalAddr() net.Addr  { return c.laddr }
func (c *Conn) RemoteAddr() net.Addr { return c.raddr }

func (c *Conn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

// SetReadDeadline implements net.Conn; a Read already waiting sees the new
// deadline.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.rdl.Store(unixNano(t))
	signal(c.rready)
	return nil
}

func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.wdl.Store(unixNano(t))
	signal(c.wready)
	return nil
}

// unixNano is t as a deadline: 0 for none, 1 for any time up to 1970.
// UnixNano is undefined outside about 1678..2262, so times after
// maxDeadline (time.Now().Add(math.MaxInt64), say) are clamped, not
// wrapped into the past.
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	if !t.After(time.Unix(0, 0)) {
		return 1 // long past
	}
	if t.After(maxDeadline) {
		return math.MaxInt64
	}
	return t.UnixNano()
}

var maxDeadline = time.Unix(0, math.MaxInt64)

// SetNoDelay sets TCP_NODELAY (a no-op for a Unix socket).
func (c *Conn) SetNoDelay(on bool) error {
	if c.netw != "tcp" && c.netw != "tcp4" && c.netw != "tcp6" {
		return nil
	}
	v := 0
	if on {
		v = 1
	}
	if !c.incref() {
		return net.ErrClosed
	}
	defer c.decref()
	return unix.SetsockoptInt(c.fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, v)
}

func (c *Conn) opErr(op string, err error) error {
	if err == io.EOF {
		return err
	}
	return &net.OpError{Op: op, Net: c.netw, Source: c.laddr, Addr: c.raddr, Err: err}
}

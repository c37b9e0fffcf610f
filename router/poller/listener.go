package poller

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Listener accepts TCP connections straight onto a Poller. Accepting with
// net.Listener and then Wrap costs a login eleven system calls more: the
// runtime registers the socket with its own epoll and asks for its local
// address, sets four keep-alive options and TCP_NODELAY, and Wrap
// duplicates the descriptor, closes the original (out of the runtime's
// epoll again) and sets it non-blocking. Here accept4 makes the socket
// non-blocking, the options are set once on the listening socket (Linux
// copies them to every socket it accepts), and the local address is the
// listener's.
//
// It accepts on a duplicate of the listening socket, which the runtime
// polls as a file (a net.Listener's own RawConn cannot wait to read): the
// socket listens until both the net.Listener and this Listener are
// closed.
type Listener struct {
	p     *Poller
	dup   int // the duplicate, until Accept or ServeOnLoop takes it
	laddr net.Addr

	mu     sync.Mutex
	file   *os.File // Accept's: the duplicate, polled by the runtime
	raw    syscall.RawConn
	loop   *Conn // ServeOnLoop's: the duplicate, polled by p
	closed atomic.Bool
}

// Keep-alive as Go sets it on the connections a net.Listener accepts:
// probes after 15 s of silence, every 15 s, nine of them.
const (
	keepAliveIdle     = 15
	keepAliveInterval = 15
	keepAliveCount    = 9
)

// Listen makes a Listener accepting on ln's socket; close both.
func (p *Poller) Listen(ln *net.TCPListener) (*Listener, error) {
	lraw, err := ln.SyscallConn()
	if err != nil {
		return nil, err
	}
	dup := -1
	var serr error
	err = lraw.Control(func(fd uintptr) {
		for _, o := range []struct{ level, name, value int }{
			{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
			{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, keepAliveIdle},
			{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, keepAliveInterval},
			{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepAliveCount},
			{unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
		} {
			if serr = unix.SetsockoptInt(int(fd), o.level, o.name, o.value); serr != nil {
				return
			}
		}
		dup, serr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return nil, fmt.Errorf("poller: listening socket: %w", err)
	}
	return &Listener{p: p, dup: dup, laddr: ln.Addr()}, nil
}

// Close closes the duplicate: a waiting Accept returns net.ErrClosed, and
// ServeOnLoop accepts no more.
func (l *Listener) Close() error {
	l.closed.Store(true)
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.file != nil:
		return l.file.Close()
	case l.loop != nil:
		return l.loop.Close()
	case l.dup >= 0:
		err := unix.Close(l.dup)
		l.dup = -1
		return err
	}
	return nil
}

// takeDup hands the duplicate to Accept or ServeOnLoop, once.
func (l *Listener) takeDup() (int, error) {
	if l.closed.Load() {
		return -1, net.ErrClosed
	}
	if l.dup < 0 {
		return -1, errors.New("poller: the listener is taken by Accept or ServeOnLoop already")
	}
	fd := l.dup
	l.dup = -1
	return fd, nil
}

// Accept waits for the next connection (in the runtime's poller, as
// net.Listener does) and registers it with p. After Close it returns an
// error wrapping net.ErrClosed.
func (l *Listener) Accept() (*Conn, error) {
	l.mu.Lock()
	if l.file == nil {
		fd, err := l.takeDup()
		if err != nil {
			l.mu.Unlock()
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.laddr, Err: err}
		}
		// Non-blocking already (the flag belongs to the socket, shared
		// with ln): NewFile registers it with the runtime's poller.
		l.file = os.NewFile(uintptr(fd), "listener "+l.laddr.String())
		if l.raw, err = l.file.SyscallConn(); err != nil {
			l.mu.Unlock()
			return nil, err
		}
	}
	l.mu.Unlock()
	for {
		fd := -1
		var sa syscall.Sockaddr
		var aerr error
		err := l.raw.Read(func(lfd uintptr) bool {
			fd, sa, aerr = accept4(int(lfd))
			return aerr != unix.EAGAIN
		})
		if err != nil {
			if l.closed.Load() {
				err = net.ErrClosed // the runtime says "use of closed file"
			}
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.laddr, Err: err}
		}
		switch aerr {
		case nil:
		case unix.EINTR, unix.ECONNABORTED:
			continue // the client gave up before it was accepted
		default:
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.laddr, Err: aerr}
		}
		c := l.p.newConn(fd, "tcp", l.laddr, sockaddrAddr(sa))
		if err := l.p.add(c); err != nil {
			unix.Close(fd)
			return nil, err
		}
		return c, nil
	}
}

// ServeOnLoop accepts the connections on the poller goroutine itself, as
// PgBouncer's event loop does: no goroutine wakes up for a connection,
// and accepted is called there with each one, registered already, so
// that the handler it sets sees the socket's first event (it must not
// block, as a Handler). A connection that logs in and runs one
// transaction (pgbench -C) costs the accept goroutine's two wake-ups and
// a Kick less. The returned channel gets the error that stopped the
// accepting (EMFILE, ...), once; Close stops it. Not with Accept.
func (l *Listener) ServeOnLoop(accepted func(*Conn)) (<-chan error, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fd, err := l.takeDup()
	if err != nil {
		return nil, err
	}
	a := &acceptor{laddr: l.laddr, accepted: accepted, failed: make(chan error, 1)}
	c := l.p.newConn(fd, "tcp", l.laddr, nil)
	c.SetHandler(a)
	if err := l.p.add(c); err != nil {
		unix.Close(fd)
		return nil, err
	}
	l.loop = c
	l.p.Kick(c) // connections that came before the registration
	return a.failed, nil
}

// acceptBatch: an acceptor takes at most this many connections per turn,
// then lets the loop serve the others' events (and kicks itself).
const acceptBatch = 32

type acceptor struct {
	laddr    net.Addr
	accepted func(*Conn)
	failed   chan error
}

func (a *acceptor) Ready(c *Conn, _ uint32) {
	for i := 0; i < acceptBatch; i++ {
		if !c.incref() {
			return // closed
		}
		fd, sa, err := accept4(c.fd)
		c.decref()
		switch err {
		case nil:
		case unix.EAGAIN:
			return
		case unix.EINTR, unix.ECONNABORTED:
			continue // the client gave up before it was accepted
		default:
			select {
			case a.failed <- &net.OpError{Op: "accept", Net: "tcp", Addr: a.laddr, Err: os.NewSyscallError("accept4", err)}:
			default:
			}
			c.SetHandler(nil)
			return
		}
		nc := c.p.newConn(fd, "tcp", a.laddr, sockaddrAddr(sa))
		// Registered before its handler is set: on this goroutine no
		// event is served in between, and the one the registration
		// reports (data already there) is served after this call.
		if err := c.p.add(nc); err != nil {
			unix.Close(fd)
			return // the poller is closing
		}
		a.accepted(nc)
	}
	c.p.Kick(c) // more may wait: the next turn
}

// accept4 accepts a connection, non-blocking and close-on-exec. The
// standard library's, as the net package uses: x/sys/unix's asks every
// IPv4 socket's protocol with getsockopt (for L2TP), one system call more
// per client.
func accept4(fd int) (int, syscall.Sockaddr, error) {
	return syscall.Accept4(fd, syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC)
}

// sockaddrAddr is sa as a *net.TCPAddr.
func sockaddrAddr(sa syscall.Sockaddr) net.Addr {
	switch sa := sa.(type) {
	case *syscall.SockaddrInet4:
		return &net.TCPAddr{IP: append(net.IP(nil), sa.Addr[:]...), Port: sa.Port}
	case *syscall.SockaddrInet6:
		a := &net.TCPAddr{IP: append(net.IP(nil), sa.Addr[:]...), Port: sa.Port}
		if sa.ZoneId != 0 {
			if ifi, err := net.InterfaceByIndex(int(sa.ZoneId)); err == nil {
				a.Zone = ifi.Name
			}
		}
		return a
	}
	return &net.TCPAddr{}
}

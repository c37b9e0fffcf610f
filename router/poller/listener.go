package poller

import (
	"fmt"
	"net"
	"os"
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
	p      *Poller
	file   *os.File // the duplicate
	raw    syscall.RawConn
	laddr  net.Addr
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
	// Non-blocking already (the flag belongs to the socket, shared with
	// ln): NewFile registers it with the runtime's poller.
	file := os.NewFile(uintptr(dup), "listener "+ln.Addr().String())
	raw, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, err
	}
	return &Listener{p: p, file: file, raw: raw, laddr: ln.Addr()}, nil
}

// Close closes the duplicate: a waiting Accept returns net.ErrClosed.
func (l *Listener) Close() error {
	l.closed.Store(true)
	return l.file.Close()
}

// Accept waits for the next connection (in the runtime's poller, as
// net.Listener does) and registers it with p. After Close it returns an
// error wrapping net.ErrClosed.
func (l *Listener) Accept() (*Conn, error) {
	for {
		fd := -1
		var sa unix.Sockaddr
		var aerr error
		err := l.raw.Read(func(lfd uintptr) bool {
			fd, sa, aerr = unix.Accept4(int(lfd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
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

// sockaddrAddr is sa as a *net.TCPAddr.
func sockaddrAddr(sa unix.Sockaddr) net.Addr {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: append(net.IP(nil), sa.Addr[:]...), Port: sa.Port}
	case *unix.SockaddrInet6:
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

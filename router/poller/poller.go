// Package poller is the router's own network poller: one epoll instance
// and one goroutine that waits on it, and Conn, a net.Conn whose socket is
// registered there instead of in the Go runtime's netpoller.
//
// Why not the runtime's: a goroutine per client blocked in Read costs, per
// transaction, a failed read (EAGAIN) before every wait, a park and a
// wake-up through the scheduler, often a futex to start a spinning thread:
// about 35 µs of CPU against PgBouncer's 14 on this class of machine. With
// the socket here, a Handler can serve a connection on the poller goroutine
// itself, as PgBouncer's event loop does: one epoll_wait, a read and a
// write per message, no goroutine switch. Goroutines that still do blocking
// I/O on a Conn (the router's general path, TLS) are woken by the poller
// goroutine through a channel instead.
package poller

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Handler serves a Conn on the poller goroutine while it is set
// (Conn.SetHandler). Ready is called with the epoll events of the socket,
// or with EvKick after Poller.Kick or Conn.Close. It must not block. Events
// may be spurious: a read can find nothing (ErrWouldBlock).
type Handler interface {
	Ready(c *Conn, events uint32)
}

// yieldEvery: the loop yields its P at least this often, well within
// the runtime's 10 ms preemption period (forcePreemptNS).
const yieldEvery = 5 * time.Millisecond

// EvKick marks a call of Handler.Ready that no socket event caused.
const EvKick = 1 << 31

// Poller owns one epoll instance.
type Poller struct {
	epfd   int
	wakefd int // eventfd: Kick and Close wake epoll_wait

	mu    sync.Mutex
	conns map[int32]*Conn
	kicks []*Conn
	done  bool
	// sleeping: the loop found no kicks and is in, or about to enter,
	// epoll_wait without a timeout; a Kick must wake it through wakefd.
	sleeping bool

	stopped chan struct{}
}

// New starts a poller goroutine.
func New() (*Poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wakefd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	p := &Poller{epfd: epfd, wakefd: wakefd, conns: map[int32]*Conn{}, stopped: make(chan struct{})}
	go p.loop()
	return p, nil
}

// Close stops the poller goroutine. Conns still open stay usable only for
// closing.
func (p *Poller) Close() error {
	p.mu.Lock()
	if p.done {
		p.mu.Unlock()
		return nil
	}
	p.done = true
	p.mu.Unlock()
	p.wake()
	<-p.stopped
	unix.Close(p.wakefd)
	return unix.Close(p.epfd)
}

// Kick calls c's handler on the poller goroutine with EvKick, soon; with
// no handler set it wakes c's blocked readers and writers instead. After
// Close it does nothing.
func (p *Poller) Kick(c *Conn) {
	// Under mu: Close marks done under mu before it closes wakefd, so a
	// write here never goes to a closed (and maybe reused) descriptor.
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return
	}
	p.kicks = append(p.kicks, c)
	if p.sleeping {
		p.sleeping = false // one wake-up per sleep is enough
		p.wake()
	}
}

func (p *Poller) wake() {
	var one = [8]byte{1}
	unix.Write(p.wakefd, one[:]) // EAGAIN only when the counter is full: already awake
}

func (p *Poller) loop() {
	defer close(p.stopped)
	events := make([]unix.EpollEvent, 128)
	var kicks []*Conn
	lastYield := time.Now()
	for {
		// This goroutine never blocks in Go, only in epoll_wait and
		// non-blocking system calls, so to the runtime it looks like one
		// that has run for ever: every 10 ms sysmon would preempt it,
		// take its P away in the middle of epoll_wait and drop back to
		// polling every 20 µs (measured: thousands of sysmon wake-ups a
		// second, 0.4 per transaction at one client). A yield now and
		// then tells the scheduler it is not.
		if time.Since(lastYield) > yieldEvery {
			runtime.Gosched()
			lastYield = time.Now()
		}
		// Kicks made while the loop was busy, most of them by the
		// handlers it just ran (a pool handing a connection to a queued
		// session), are served here without a round trip through the
		// eventfd: Kick writes it only while the loop sleeps.
		p.mu.Lock()
		if p.done {
			p.mu.Unlock()
			return
		}
		timeout := -1
		if len(p.kicks) > 0 {
			kicks, p.kicks = p.kicks, kicks[:0]
			timeout = 0
		}
		p.sleeping = timeout < 0
		p.mu.Unlock()
		for i, c := range kicks {
			c.ready(EvKick)
			kicks[i] = nil
		}
		kicks = kicks[:0]

		n, err := unix.EpollWait(p.epfd, events, timeout)
		if timeout < 0 {
			p.mu.Lock()
			p.sleeping = false
			p.mu.Unlock()
		}
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			panic(fmt.Sprintf("poller: epoll_wait: %v", err)) // EBADF, EINVAL: a bug here
		}
		for i := 0; i < n; i++ {
			fd := events[i].Fd
			if int(fd) == p.wakefd {
				var buf [8]byte
				unix.Read(p.wakefd, buf[:])
				continue
			}
			p.mu.Lock()
			c := p.conns[fd]
			p.mu.Unlock()
			if c != nil {
				c.ready(events[i].Events)
			}
		}
	}
}

// add and remove call epoll_ctl under mu, and not once done is set: Close
// closes epfd after that, and the number may be reused.
func (p *Poller) add(c *Conn) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return net.ErrClosed
	}
	// Edge-triggered: an event per arrival of data or of send space, and
	// none while the socket merely stays readable; readers read until a
	// short read or EAGAIN.
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(c.fd)}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, c.fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl add: %w", err)
	}
	p.conns[int32(c.fd)] = c
	return nil
}

// remove unregisters c; the caller closes the descriptor afterwards.
func (p *Poller) remove(c *Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.done {
		unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
	}
	if p.conns[int32(c.fd)] == c {
		delete(p.conns, int32(c.fd))
	}
}

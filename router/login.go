package router

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgha/pgha/router/poller"
)

// A login on the event loop. A client that connects for each transaction
// (pgbench -C, PHP, serverless functions) would otherwise cost a goroutine
// start, a blocking read per startup packet and two wake-ups before its
// first query reaches the fast path. loginOnLoop reads the startup packets
// on the poller goroutine, answers an SSLRequest or GSSENCRequest 'N' when
// the router has no TLS, and when what remains needs no round trip (the
// client's HBA rule is trust and the pool already knows the server's
// parameters) it greets the client and gives the session to the fast
// path at once. Anything else (TLS, a password, a cancel request, a server
// to dial first, a malformed or oversized packet, a slow client) goes to a
// goroutine, client.serve, with the bytes read so far (client.pre): the
// login goes on there exactly as if it had started there.

// loginBufSize holds the startup packets of ordinary clients (libpq's is
// about 100 bytes); a larger one goes to the goroutine.
const loginBufSize = 512

type loginOnLoop struct {
	c        *client
	pc       *poller.Conn
	buf      [loginBufSize]byte
	n        int // buf[:n] read
	timer    *time.Timer
	timedOut atomic.Bool
}

// startLogin begins c's login on the event loop.
func startLogin(c *client, pc *poller.Conn) {
	l := &loginOnLoop{c: c, pc: pc}
	l.timer = time.AfterFunc(time.Until(c.loginDeadline), func() {
		l.timedOut.Store(true)
		pc.Kick()
	})
	pc.SetHandler(l)
	pc.Kick() // what arrived with the connection
}

// Ready implements poller.Handler.
func (l *loginOnLoop) Ready(_ *poller.Conn, ev uint32) {
	if l.timedOut.Load() || isClosed(l.pc) {
		l.toGoroutine() // which meets the deadline, or the closed socket
		return
	}
	hup := ev&hangup != 0
	for l.n < len(l.buf) {
		space := len(l.buf) - l.n
		n, err := l.pc.TryRead(l.buf[l.n:])
		if errors.Is(err, poller.ErrWouldBlock) {
			break
		}
		if err != nil {
			l.toGoroutine() // the goroutine's read meets the error and says so
			return
		}
		l.n += n
		if n < space && !hup {
			break // the socket is empty: no read just to hear EAGAIN
		}
	}
	l.parse()
}

// parse serves the whole startup packets in buf.
func (l *loginOnLoop) parse() {
	c := l.c
	for {
		if l.n < 4 {
			if l.n == len(l.buf) {
				l.toGoroutine()
			}
			return
		}
		size := int(binary.BigEndian.Uint32(l.buf[:4]))
		if size < 8 || size > len(l.buf) {
			l.toGoroutine() // refused there, or read there (a long packet)
			return
		}
		if l.n < size {
			return // the rest is on its way
		}
		code := binary.BigEndian.Uint32(l.buf[4:8])
		switch {
		case (code == sslRequestCode && !c.sslAnswered && c.r.cfg.TLS == nil) || (code == gssEncRequestCode && !c.gssAnswered):
			if n, err := l.pc.TryWrite([]byte{'N'}); n != 1 || err != nil {
				l.toGoroutine()
				return
			}
			if code == sslRequestCode {
				c.sslAnswered = true
			} else {
				c.gssAnswered = true
			}
			l.n = copy(l.buf[:], l.buf[size:l.n])
		case code == pgproto3.ProtocolVersion30:
			l.startup(size)
			return
		default:
			l.toGoroutine() // TLS, a cancel request, a refusal
			return
		}
	}
}

// startup serves the StartupMessage buf[:size]: on the event loop if the
// login needs no round trip, else on a goroutine.
func (l *loginOnLoop) startup(size int) {
	c := l.c
	sm, err := decodeStartupMessage(l.buf[4:size])
	if err != nil || !c.trusted(sm) {
		l.toGoroutine()
		return
	}
	params := c.cachedServerParams()
	if params == nil {
		l.toGoroutine() // serverParams dials the server
		return
	}
	if err := c.beginLogin(sm); err != nil {
		c.wbuf = c.wbuf[:0]
		l.stop()
		go func() {
			c.refuse(err)
			c.end(nil)
		}()
		return
	}
	c.greet(params)
	l.stop()
	c.mr = newClientReader(c.conn)
	c.mr.preload(l.buf[size:l.n]) // a query sent behind the StartupMessage
	c.loggedIn()
	n, err := l.pc.TryWrite(c.wbuf)
	if errors.Is(err, poller.ErrWouldBlock) {
		n, err = 0, nil
	}
	if err != nil || n < len(c.wbuf) || c.fast == nil {
		// The rest, and the session, on a goroutine (resume writes
		// c.wbuf first, or meets the error).
		c.wbuf = c.wbuf[:copy(c.wbuf, c.wbuf[n:])]
		go c.resume(fastResult{})
		return
	}
	c.wbuf = c.wbuf[:0]
	c.r.stats.LoopLogins.Add(1)
	c.enterFast()
}

// trusted: the StartupMessage names a user and the client's HBA rule
// trusts it, with nothing beyond a plain login asked for.
func (c *client) trusted(sm *pgproto3.StartupMessage) bool {
	user, db := sm.Parameters["user"], sm.Parameters["database"]
	if db == "" {
		db = user
	}
	if user == "" {
		return false
	}
	for k := range sm.Parameters {
		if k == "replication" || len(k) > 5 && k[:5] == "_pq_." {
			return false
		}
	}
	rule := c.hbaRule(db, user)
	if rule == nil || rule.Method != AuthTrust {
		return false
	}
	c.user, c.db = user, db // for cachedServerParams; beginLogin sets the same
	return true
}

// hbaRule is the first HBA rule matching the client, nil for none.
func (c *client) hbaRule(db, user string) *HBARule {
	addr := c.remoteIP()
	hba := c.r.settings().HBA
	for i := range hba {
		if hba[i].matches(db, user, addr, c.encrypted) {
			return &hba[i]
		}
	}
	return nil
}

// remoteIP is the client's address; the zero Addr for a Unix socket.
func (c *client) remoteIP() netip.Addr {
	addr := netip.Addr{}
	if ta, ok := c.conn.RemoteAddr().(*net.TCPAddr); ok {
		addr, _ = netip.AddrFromSlice(ta.IP)
	}
	return addr
}

// cachedServerParams is what serverParams would answer, when the pool
// already knows it; else nil.
func (c *client) cachedServerParams() map[string]string {
	v := c.r.view.Load()
	b, ok := v.primaryBackend()
	if c.role == ReadOnly || !ok {
		if s, sok := v.pickStandby(0, 0); sok {
			b, ok = s, true
		}
	}
	if !ok {
		return nil
	}
	p := c.r.pool(b.Addr(), c.db, c.user)
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.params
}

// stop leaves the event loop's part of the login.
func (l *loginOnLoop) stop() {
	l.timer.Stop()
	l.pc.SetHandler(nil)
}

// toGoroutine hands the login, and what was read of it, to client.serve.
func (l *loginOnLoop) toGoroutine() {
	l.stop()
	l.c.pre = append([]byte(nil), l.buf[:l.n]...)
	go l.c.serve()
}

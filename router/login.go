package router

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgha/pgha/router/poller"
)

// A login on the event loop. A client that connects for each transaction
// (pgbench -C, PHP, serverless functions) would otherwise cost a goroutine
// start, a blocking read per startup packet and two wake-ups before its
// first query reaches the fast path. loginOnLoop reads the startup packets
// on the poller goroutine (Serve accepts there too), answers an SSLRequest
// or GSSENCRequest 'N' when the router has no TLS, and when the rest needs
// no round trip to a server (the pool already knows the server's
// parameters, and the password, if the client's HBA rule asks for one, is
// in Config.Users rather than behind auth_query) it runs the password
// exchange (md5 or SCRAM, the same steps as the goroutine's: authExchange),
// greets the client and gives the session to the fast path. Up to the
// exchange, anything else (TLS, a cancel request, a server to ask first, a
// malformed or oversized packet) goes to a goroutine, client.serve, with
// the bytes read so far (client.pre): the login goes on there exactly as
// if it had started there. From the exchange on, a failure refuses the
// client on a goroutine (refuse writes and logs).

// loginBufSize holds the startup packets of ordinary clients (libpq's is
// about 100 bytes) and their password messages; a larger startup packet
// goes to the goroutine, a larger password message grows the buffer up to
// the goroutine's limit for them.
const loginBufSize = 512

// maxAuthMessage is the largest password message a client may send
// before it is authenticated (startup's decoder limit).
const maxAuthMessage = 8192

type loginOnLoop struct {
	c        *client
	pc       *poller.Conn
	small    [loginBufSize]byte
	buf      []byte // small, or larger for a long password message
	n        int    // buf[:n] read
	timer    *time.Timer
	timedOut atomic.Bool

	ex     authExchange      // the password exchange under way
	params map[string]string // the server's, for the greeting
	// drained: the last read emptied the socket (it did not stop at a
	// full buffer), so what the client sends next comes with an event.
	drained bool
}

// startLogin begins c's login on the event loop.
func startLogin(c *client, pc *poller.Conn) {
	l := &loginOnLoop{c: c, pc: pc}
	l.buf = l.small[:]
	l.timer = time.AfterFunc(time.Until(c.loginDeadline), func() {
		l.timedOut.Store(true)
		pc.Kick()
	})
	// On the poller goroutine (Serve): the socket's first event comes
	// after this, to l.
	pc.SetHandler(l)
}

// Ready implements poller.Handler.
func (l *loginOnLoop) Ready(_ *poller.Conn, ev uint32) {
	if l.timedOut.Load() || isClosed(l.pc) {
		if l.ex != nil {
			err := errClientGone
			if l.timedOut.Load() {
				err = l.c.loginTimeout()
			}
			l.refuse(err)
			return
		}
		l.toGoroutine() // which meets the deadline, or the closed socket
		return
	}
	hup := ev&hangup != 0
	l.drained = false
	for l.n < len(l.buf) {
		space := len(l.buf) - l.n
		n, err := l.pc.TryRead(l.buf[l.n:])
		if errors.Is(err, poller.ErrWouldBlock) {
			l.drained = true
			break
		}
		if err != nil {
			if l.ex != nil {
				l.refuse(errClientGone) // gone in the middle of its password
				return
			}
			l.toGoroutine() // the goroutine's read meets the error and says so
			return
		}
		l.n += n
		if n < space && !hup {
			l.drained = true
			break // the socket is empty: no read just to hear EAGAIN
		}
	}
	if l.ex != nil {
		l.exchange()
		return
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
			l.consume(size)
		case code == pgproto3.ProtocolVersion30:
			l.startup(size)
			return
		default:
			l.toGoroutine() // TLS, a cancel request, a refusal
			return
		}
	}
}

// consume drops the first size bytes of buf.
func (l *loginOnLoop) consume(size int) {
	l.n = copy(l.buf, l.buf[size:l.n])
}

// startup serves the StartupMessage buf[:size]: on the event loop if the
// login needs no round trip to a server, else on a goroutine.
func (l *loginOnLoop) startup(size int) {
	c := l.c
	sm, err := decodeStartupMessage(l.buf[4:size])
	if err != nil || !c.plainLogin(sm) {
		l.toGoroutine()
		return
	}
	if l.params = c.cachedServerParams(); l.params == nil {
		l.toGoroutine() // serverParams dials the server
		return
	}
	// The goroutine's order (startup): admitted, then authenticated.
	if err := c.beginLogin(sm); err != nil {
		l.refuse(err)
		return
	}
	ex, err := c.passwordExchange()
	if err != nil {
		l.refuse(err)
		return
	}
	l.consume(size)
	if ex == nil {
		l.finish() // trust
		return
	}
	l.ex = ex
	l.reply(ex.start())
}

// exchange serves the client's password messages in buf.
func (l *loginOnLoop) exchange() {
	for l.n >= 5 {
		typ := l.buf[0]
		size := 1 + int(binary.BigEndian.Uint32(l.buf[1:5]))
		switch {
		case typ == 'X':
			l.refuse(errClientGone) // it left instead of answering
			return
		case typ != 'p':
			l.refuse(&authError{code: "08P01", msg: fmt.Sprintf("expected password response, got message type %q", typ)})
			return
		case size < 5 || size > 1+maxAuthMessage:
			l.refuse(&authError{code: "08P01", msg: "invalid authentication message: invalid message length"})
			return
		case size > len(l.buf):
			l.buf = append(make([]byte, 0, size), l.buf[:l.n]...)[:size]
			l.pc.Kick() // Ready reads the rest, which may wait on the socket already
			return
		case l.n < size:
			return
		}
		var msg interface {
			pgproto3.FrontendMessage
			Decode([]byte) error
		}
		switch l.ex.authType() {
		case pgproto3.AuthTypeMD5Password:
			msg = &pgproto3.PasswordMessage{}
		case pgproto3.AuthTypeSASL:
			msg = &pgproto3.SASLInitialResponse{}
		default:
			msg = &pgproto3.SASLResponse{}
		}
		if err := msg.Decode(l.buf[5:size]); err != nil {
			l.refuse(&authError{code: "08P01", msg: "invalid authentication message: " + err.Error()})
			return
		}
		l.consume(size)
		reply, done, err := l.ex.step(msg)
		switch {
		case err != nil:
			l.refuse(err)
			return
		case done:
			if reply != nil {
				l.c.send(reply) // SASLFinal, written with AuthenticationOk
			}
			l.finish()
			return
		}
		if !l.reply(reply) {
			return
		}
	}
}

// reply writes msg, a challenge; false when the client was refused (its
// socket did not take the few bytes a challenge has: it is gone).
func (l *loginOnLoop) reply(msg pgproto3.BackendMessage) bool {
	c := l.c
	c.send(msg)
	n, err := l.pc.TryWrite(c.wbuf)
	ok := err == nil && n == len(c.wbuf)
	c.wbuf = c.wbuf[:0]
	if !ok {
		l.refuse(errClientGone)
	}
	return ok
}

// finish greets the authenticated client and gives its session to the
// fast path, with whatever the client sent behind its last login message.
func (l *loginOnLoop) finish() {
	c := l.c
	c.greet(l.params)
	l.stop()
	c.mr = newClientReader(c.conn)
	c.mr.preload(l.buf[:l.n])
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
	c.enterFastOnLoop(!l.drained)
}

// refuse ends the login with err, on a goroutine (refuse writes the
// client its FATAL and logs).
func (l *loginOnLoop) refuse(err error) {
	l.stop()
	l.c.wbuf = l.c.wbuf[:0]
	go l.c.endRefused(err)
}

// plainLogin: the StartupMessage names a user and asks for nothing beyond
// a plain login (no replication, no protocol options), and its password,
// if the client's HBA rule asks for one, is in Users and cheap to check:
// md5, or SCRAM with the stored verifier. It sets c.user and c.db
// (beginLogin sets the same).
func (c *client) plainLogin(sm *pgproto3.StartupMessage) bool {
	user, db := loginIdentity(sm)
	if user == "" {
		return false
	}
	for k := range sm.Parameters {
		if k == "replication" || strings.HasPrefix(k, "_pq_.") {
			return false
		}
	}
	if rule := c.hbaRule(db, user); rule != nil && (rule.Method == AuthMD5 || rule.Method == AuthSCRAM) {
		secret, listed := c.r.cfg.Users[user]
		switch {
		case !listed || secret == "":
			return false // auth_query, or a mock exchange (PBKDF2)
		case strings.HasPrefix(secret, "SCRAM-SHA-256$"):
			// Stored keys: a SCRAM proof is checked in microseconds.
		case rule.Method == AuthSCRAM:
			// A verifier made from a password (or none, for an md5
			// hash: the mock exchange) costs PBKDF2's 4096 rounds, a
			// millisecond or more: never on the loop, which every
			// session shares.
			return false
		}
	}
	c.user, c.db = user, db
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

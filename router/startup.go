package router

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgha/pgha/router/poller"
)

// The startup phase of a client connection, up to its first
// ReadyForQuery: encryption negotiation (TLS or 'N'), the startup packet,
// the client limit, authentication, and how a refused client is told and
// logged. All of it runs on the client goroutine under one deadline,
// Config.ClientLoginTimeout.

// Startup packet codes (PostgreSQL's pqcomm.h).
const (
	cancelRequestCode = 80877102
	sslRequestCode    = 80877103
	gssEncRequestCode = 80877104
	maxStartupPacket  = 10000 // MAX_STARTUP_PACKET_LENGTH
)

// errClientGone: the client closed the connection between packets of the
// startup phase (a TCP health check, or libpq giving up after 'N' with
// sslmode=require). Not a refusal.
var errClientGone = errors.New("client closed the connection before logging in")

// handshakeError is a failed TLS handshake: the client expects TLS
// records, so it is not told anything in clear text.
type handshakeError struct{ err error }

func (e *handshakeError) Error() string { return "TLS handshake: " + e.err.Error() }
func (e *handshakeError) Unwrap() error { return e.err }

// serveClient serves one client connection on this goroutine; Serve
// counted it in r.sessions and the session's end (client.end) uncounts it.
func (r *Router) serveClient(conn net.Conn, role Role) {
	// Go's TCP connections have TCP_NODELAY already, poller.Listener's
	// inherit it from the listening socket.
	if _, onPoller := conn.(*poller.Conn); r.poller != nil && !onPoller {
		if pc, err := r.poller.Wrap(conn); err == nil {
			conn = pc
		} else {
			r.log.Warn("router: client socket stays on the Go poller", "err", err)
		}
	}
	r.newClient(conn, role).serve()
}

// newClient is the session of a connection just accepted, under the
// login deadline.
func (r *Router) newClient(conn net.Conn, role Role) *client {
	c := &client{r: r, role: role, conn: conn, remote: conn.RemoteAddr().String(),
		txnMode: r.settings().PoolMode == PoolTransaction, stmts: map[string]*stmt{}, txStatus: 'I'}
	// Close ends every session, also one still logging in (Close closes
	// only the clients it has registered).
	c.stopOnClose = context.AfterFunc(r.ctx, func() { conn.Close() })
	c.loginDeadline = time.Now().Add(r.cfg.ClientLoginTimeout)
	conn.SetDeadline(c.loginDeadline)
	return c
}

// serve logs the client in and serves its session on this goroutine (up
// to the fast path: run).
func (c *client) serve() {
	ok, err := c.startup()
	if err != nil {
		c.endRefused(err)
		return
	}
	if !ok {
		c.end(nil)
		return
	}
	c.loggedIn()
	c.run(false)
}

// endRefused ends a session whose login failed with err: the client is
// told why (refuse) and the session ends.
func (c *client) endRefused(err error) {
	c.refuse(err)
	// The decoder may have stopped inside a message (a client gone in the
	// middle of its password): never for another session.
	c.dec = nil
	c.end(nil)
}

// loggedIn: the client has its ReadyForQuery; its session begins.
func (c *client) loggedIn() {
	c.conn.SetDeadline(time.Time{})
	if c.dec != nil {
		c.dec.be.SetMaxBodyLen(c.r.cfg.MaxMessageSize)
	}
	if pc, ok := c.conn.(*poller.Conn); ok && c.txnMode {
		c.fast = &fastPath{c: c, cc: pc}
		c.fastOK = true
	}
}

// run serves the session on the calling goroutine until it ends, or until
// the session goes to the fast path: then this goroutine ends too, and the
// fast path's hand-back starts another (resume). An idle client costs no
// goroutine and no read buffer, only its session's state.
func (c *client) run(handedBack bool) {
	if err := c.loop(handedBack); err != errOnFastPath {
		c.end(err)
	}
}

// end ends the session after the loop (or the login) is done with it.
func (c *client) end(err error) {
	c.cleanup()
	if c.dec != nil && err == nil {
		// The loop ended at a Terminate, a message boundary; after an
		// error the decoder may be inside a message: dropped.
		c.dec.put()
	}
	c.dec = nil
	if c.mr != nil {
		c.mr.release() // the loop and the fast path are done with it
	}
	c.unregister()
	c.conn.Close() // the TLS connection once negotiated
	c.stopOnClose()
	if err != nil && !clientIOError(err) {
		c.r.log.Debug("client session ended", "client", c.remote, "user", c.user, "db", c.db, "err", err)
	}
	c.r.sessions.Done()
}

// startup handles the startup phase and authenticates. ok is false (with a
// nil error) after a cancel request.
func (c *client) startup() (bool, error) {
	sm, err := c.readStartupMessage()
	if err != nil || sm == nil {
		return false, err
	}
	c.mr = newClientReader(c.conn)
	c.mr.preload(c.pre) // what the client sent behind its StartupMessage
	c.pre = nil
	c.dec = getDecoder(c.mr, 8192) // until authenticated
	if err := c.beginLogin(sm); err != nil {
		return false, err
	}
	if err := c.authenticate(); err != nil {
		c.unregister()
		return false, err
	}
	params, err := c.serverParams()
	if err != nil {
		c.unregister()
		return false, err
	}
	c.greet(params)
	return true, c.flushClient()
}

// beginLogin checks what the StartupMessage asks for and admits the
// client (admit); what to tell the client is buffered (send).
func (c *client) beginLogin(sm *pgproto3.StartupMessage) error {
	c.user, c.db = loginIdentity(sm)
	if c.user == "" {
		return &authError{code: "28000", msg: "no PostgreSQL user name specified in startup packet"}
	}
	var err error
	if c.params, err = clientParams(sm.Parameters); err != nil {
		return &authError{code: "0A000", msg: err.Error()}
	}
	if _, ok := sm.Parameters["replication"]; ok && sm.Parameters["replication"] != "false" && sm.Parameters["replication"] != "0" {
		return &authError{code: "08P01", msg: "replication connections are not supported through the router"}
	}
	var unknown []string
	for k := range sm.Parameters {
		if strings.HasPrefix(k, "_pq_.") {
			unknown = append(unknown, k)
		}
	}
	if sm.ProtocolVersion != pgproto3.ProtocolVersion30 || len(unknown) > 0 {
		c.send(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: unknown})
	}
	return c.admit()
}

// loginIdentity is the user and database a StartupMessage names; the
// database defaults to the user's name, as in PostgreSQL.
func loginIdentity(sm *pgproto3.StartupMessage) (user, db string) {
	user, db = sm.Parameters["user"], sm.Parameters["database"]
	if db == "" {
		db = user
	}
	return user, db
}

// greet buffers what an authenticated client is told (AuthenticationOk,
// the server's parameters with the client's own values, its
// BackendKeyData and ReadyForQuery) and counts it as accepted.
func (c *client) greet(params map[string]string) {
	c.send(&pgproto3.AuthenticationOk{})
	names := make([]string, 0, len(params))
	for k := range params {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		v := params[k]
		if own, ok := c.params.reported(k); ok {
			v = own // applied with the first statement (applyParams)
		}
		c.send(&pgproto3.ParameterStatus{Name: k, Value: v})
	}
	c.send(&pgproto3.BackendKeyData{ProcessID: c.pid, SecretKey: c.secret})
	c.send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	// Counted before the client can see that it is in: whoever saw the
	// ReadyForQuery also sees the count.
	c.r.stats.ClientsAccepted.Add(1)
}

// admit counts the client against MaxClientConn and gives it the
// BackendKeyData its cancel requests must quote. As in PostgreSQL, the
// limit is checked before authentication, so a full router answers at
// once instead of after a password exchange.
func (c *client) admit() error {
	r := c.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return &authError{code: "57P01", msg: "the router is shutting down"}
	}
	if r.nClient >= r.settings().MaxClientConn {
		return &authError{code: "53300", msg: "sorry, too many clients already",
			detail: fmt.Sprintf("The router has MaxClientConn (%d) clients.", r.settings().MaxClientConn)}
	}
	r.nClient++
	for {
		r.nextPID++
		if r.nextPID != 0 && r.clients[r.nextPID] == nil {
			break
		}
	}
	c.pid = r.nextPID
	c.secret = make([]byte, 4)
	rand.Read(c.secret)
	r.clients[c.pid] = c
	return nil
}

// readStartupMessage reads startup packets up to the StartupMessage. It
// answers SSLRequest ('S' and the TLS handshake, or 'N') and GSSENCRequest
// (always 'N'), each at most once and nothing after TLS, as PostgreSQL
// does; it forwards a CancelRequest and then returns nil.
func (c *client) readStartupMessage() (*pgproto3.StartupMessage, error) {
	sslDone, gssDone := c.sslAnswered, c.gssAnswered // by loginOnLoop
	for {
		pkt, err := c.readStartupPacket()
		if err != nil {
			return nil, err
		}
		code := binary.BigEndian.Uint32(pkt)
		switch {
		case code == sslRequestCode && !sslDone:
			sslDone = true
			if err := c.answerSSL(); err != nil {
				return nil, err
			}
			gssDone = gssDone || c.encrypted
		case code == gssEncRequestCode && !gssDone:
			gssDone = true
			if _, err := c.conn.Write([]byte{'N'}); err != nil {
				return nil, err
			}
		case code == cancelRequestCode:
			var m pgproto3.CancelRequest
			if err := m.Decode(pkt); err != nil {
				return nil, &authError{code: "08P01", msg: "invalid cancel request: " + err.Error()}
			}
			c.r.cancelRequest(m.ProcessID, m.SecretKey)
			return nil, nil
		case code>>16 == 3:
			return decodeStartupMessage(pkt)
		default:
			// A repeated SSLRequest lands here too, with PostgreSQL's words.
			return nil, &authError{code: "0A000", msg: fmt.Sprintf("unsupported frontend protocol %d.%d: server supports 3.0 to 3.0", code>>16, code&0xffff)}
		}
	}
}

// readStartupPacket reads one length-prefixed startup packet straight from
// conn, with no read-ahead: after an SSLRequest the next bytes on the
// socket must be the client's TLS handshake, and clear text sent behind an
// SSLRequest can never be taken as if it came over TLS (the bug class of
// CVE-2021-23214). The length is checked before anything is allocated.
func (c *client) readStartupPacket() ([]byte, error) {
	if len(c.pre) > 0 {
		return c.readStartupPre()
	}
	var hdr [4]byte
	if n, err := io.ReadFull(c.conn, hdr[:]); err != nil {
		if n == 0 && errors.Is(err, io.EOF) {
			return nil, errClientGone
		}
		return nil, incompletePacket(err)
	}
	n := int64(int32(binary.BigEndian.Uint32(hdr[:]))) - 4
	if n < 4 || n > maxStartupPacket {
		return nil, &authError{code: "08P01", msg: "invalid length of startup packet"}
	}
	pkt := make([]byte, n)
	if _, err := io.ReadFull(c.conn, pkt); err != nil {
		return nil, incompletePacket(err)
	}
	return pkt, nil
}

// readStartupPre reads a startup packet that begins in c.pre, the bytes
// loginOnLoop read before it handed the login to a goroutine.
func (c *client) readStartupPre() ([]byte, error) {
	rd := io.MultiReader(bytes.NewReader(c.pre), c.conn)
	var hdr [4]byte
	if _, err := io.ReadFull(rd, hdr[:]); err != nil {
		return nil, incompletePacket(err)
	}
	n := int64(int32(binary.BigEndian.Uint32(hdr[:]))) - 4
	if n < 4 || n > maxStartupPacket {
		return nil, &authError{code: "08P01", msg: "invalid length of startup packet"}
	}
	pkt := make([]byte, n)
	taken := min(len(c.pre), 4+int(n))
	_, err := io.ReadFull(rd, pkt)
	c.pre = c.pre[taken:]
	if err != nil {
		return nil, incompletePacket(err)
	}
	return pkt, nil
}

func incompletePacket(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return &authError{code: "08P01", msg: "incomplete startup packet"}
	}
	return err
}

// decodeStartupMessage decodes a v3 StartupMessage. pgproto3 decodes
// only 3.0 and 3.2; a client asking for another 3.x minor is decoded as
// 3.0 and keeps its version, so that startup answers it with
// NegotiateProtocolVersion as PostgreSQL does.
func decodeStartupMessage(pkt []byte) (*pgproto3.StartupMessage, error) {
	version := binary.BigEndian.Uint32(pkt)
	buf := pkt
	if version != pgproto3.ProtocolVersion30 && version != pgproto3.ProtocolVersion32 {
		buf = append([]byte(nil), pkt...)
		binary.BigEndian.PutUint32(buf, pgproto3.ProtocolVersion30)
	}
	var sm pgproto3.StartupMessage
	if err := sm.Decode(buf); err != nil {
		return nil, &authError{code: "08P01", msg: "invalid startup packet layout: " + err.Error()}
	}
	sm.ProtocolVersion = version
	return &sm, nil
}

// answerSSL answers an SSLRequest: 'N' without Config.TLS; else 'S' and
// the server side of the TLS handshake, after which c.conn is the TLS
// connection. The handshake runs under the login deadline already set on
// the socket.
func (c *client) answerSSL() error {
	cfg := c.r.cfg.TLS
	if cfg == nil {
		_, err := c.conn.Write([]byte{'N'})
		return err
	}
	if _, err := c.conn.Write([]byte{'S'}); err != nil {
		return err
	}
	var raw net.Conn = c.conn
	if len(c.pre) > 0 {
		// Bytes the client sent behind its SSLRequest, read on the event
		// loop (login.go): they can only be taken as the start of the
		// handshake, as if still on the socket, never as clear text.
		raw = &preConn{Conn: c.conn, pre: c.pre}
		c.pre = nil
	}
	tc := tls.Server(raw, cfg)
	if err := tc.HandshakeContext(c.r.ctx); err != nil {
		return &handshakeError{err}
	}
	c.conn = tc
	c.encrypted = true
	return nil
}

// loginTimeout is what a client that has not logged in within
// ClientLoginTimeout is told (PostgreSQL's authentication_timeout).
func (c *client) loginTimeout() error {
	return &authError{code: "57014", msg: "canceling authentication due to timeout",
		detail: fmt.Sprintf("The router's ClientLoginTimeout (%v) passed before the client logged in.", c.r.cfg.ClientLoginTimeout)}
}

// preConn is a connection whose first bytes were read already: pre.
type preConn struct {
	net.Conn
	pre []byte
}

func (p *preConn) Read(b []byte) (int, error) {
	if len(p.pre) > 0 {
		n := copy(b, p.pre)
		p.pre = p.pre[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

// refuse ends a client that did not log in: it tells the client why when
// the connection can still carry a message, and logs one line per
// connection, whatever and however much the client sent.
func (c *client) refuse(err error) {
	r := c.r
	if errors.Is(err, errClientGone) {
		r.log.Debug("client left before logging in", "client", c.remote)
		return
	}
	r.stats.ClientsRejected.Add(1)
	tell := true
	var ae *authError
	var se *serverError
	var he *handshakeError
	var ne net.Error
	switch {
	case errors.As(err, &ae):
		if ae.code == "08P01" {
			r.stats.ProtocolErrors.Add(1)
		}
	case errors.As(err, &se):
	case errors.As(err, &he):
		tell = false
	case errors.As(err, &ne) && ne.Timeout() && !time.Now().Before(c.loginDeadline):
		// The client's own I/O hit the login deadline (a server dial
		// timing out is reported as itself, earlier).
		err = c.loginTimeout()
	case clientIOError(err):
		tell = false
	}
	if tell {
		c.fatal(err)
	}
	attrs := []any{"client", c.remote, "user", c.user, "db", c.db, "reason", err.Error()}
	if errors.As(err, &ae) {
		attrs = append(attrs, "code", ae.code)
		if ae.cause != nil {
			attrs = append(attrs, "err", ae.cause)
		}
	} else if errors.As(err, &se) {
		attrs = append(attrs, "code", se.resp.Code)
	}
	r.log.Info("client refused", attrs...)
}

// clientIOError: err says the client connection is closed or broken, not
// that the client sent something wrong.
func clientIOError(err error) bool {
	var opErr *net.OpError
	// A bare io.EOF is not here: pgproto3 reports a closed socket as
	// io.ErrUnexpectedEOF and a body that does not decode as io.EOF.
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.As(err, &opErr)
}

package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgha/pgha/router/poller"
)

// poolKey names a pool: one per backend address, database and user.
type poolKey struct{ addr, db, user string }

// pool holds the server connections of one poolKey.
//
// Concurrency: every field below mu is guarded by mu; acquire and release
// are called from any client goroutine. A serverConn is owned by exactly one
// party at a time: the pool (idle list), or the client that acquired it,
// until it calls release.
type pool struct {
	r   *Router
	key poolKey

	mu      sync.Mutex
	idle    []*serverConn // LIFO
	all     map[*serverConn]bool
	opening int      // dials in progress (count towards the size)
	waiters []waiter // FIFO; woken means "try again"
	params  map[string]string
	retired bool // backend gone or changed role: no new connections

	// draining: its backend is Draining (a standby about to restart);
	// get and tryGet hand out nothing, so a read routed there just before
	// goes to the primary (client.connect) instead of the restart.
	draining atomic.Bool

	// ctx ends when the pool retires: a dial still in progress gives up
	// then, not at its timeout (a primary whose host is lost answers no
	// SYN; the clients waiting on it belong on the new one).
	ctx    context.Context
	cancel context.CancelFunc

	// Counters (atomic): SHOW POOLS / SHOW STATS.
	active     atomic.Int64 // connections handed to clients now
	waiting    atomic.Int64 // clients waiting for a connection now
	xacts      atomic.Int64 // attachments released (transactions in transaction mode)
	queries    atomic.Int64 // Query and Sync messages forwarded
	waitsTotal atomic.Int64 // acquisitions that had to wait
	waitNanos  atomic.Int64
	maxWait    atomic.Int64 // longest single wait, ns
	connects   atomic.Int64
}

// serverConn is one connection from the router to PostgreSQL. Its owner
// (see pool) is the only goroutine that writes to it; while a client is
// attached, that client's pump goroutine is the only one that reads.
type serverConn struct {
	pool     *pool
	conn     net.Conn // a *poller.Conn unless Config.DisableFastPath
	mr       *msgReader
	fe       *pgproto3.Frontend
	wbuf     []byte
	pid      uint32
	secret   []byte
	created  time.Time
	lastUsed time.Time
	idleMark uint32          // its poller.Conn's ReadEvents when released (quiet)
	prepared map[string]bool // server-side statement names (transaction mode)
	// shapes: the result shape (shapeOf) a prepared statement was last
	// described with here, by server name; nil until one was. Stale
	// entries only cost a check (shape.go).
	shapes map[string]string
	// paramsKey is the sessionParams.key of the client startup parameters
	// applied to this connection (params.go): "" the login's own, or
	// paramsUnknown. Changed only by the session it is attached to.
	paramsKey string
	// leftovers: a client left session state on it (transaction mode,
	// effects.go); DISCARD ALL before another client gets it.
	leftovers bool
	broken    atomic.Bool   // closed or in an unknown state
	closed    chan struct{} // closed by close
	closeMu   sync.Once
}

// serverError is an ErrorResponse PostgreSQL sent while the router logged in.
type serverError struct{ resp pgproto3.ErrorResponse }

func (e *serverError) Error() string {
	return fmt.Sprintf("server: %s %s (SQLSTATE %s)", e.resp.Severity, e.resp.Message, e.resp.Code)
}

var (
	errPoolTimeout = errors.New("query_wait_timeout: no server connection became free in time")
	errRetired     = errors.New("the backend left the topology or changed role")
)

// serverDownError is a server that cannot be reached or is not accepting
// connections (starting up, shutting down, crashed): the router may try
// another one, unlike an authentication failure.
type serverDownError struct{ err error }

func (e *serverDownError) Error() string { return e.err.Error() }
func (e *serverDownError) Unwrap() error { return e.err }

// serverUnavailable reports whether a login failed because the server went
// away or refuses connections for now (SQLSTATE 57P01-57P03).
func serverUnavailable(err error) bool {
	var se *serverError
	if errors.As(err, &se) {
		switch se.resp.Code {
		case "57P01", "57P02", "57P03":
			return true
		}
		return false
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}

// acquire returns a server connection, opening one when the pool is below
// its size, else waiting (FIFO) until one is released or ctx ends.
func (p *pool) acquire(ctx context.Context) (_ *serverConn, err error) {
	waited := false
	start := time.Now()
	defer func() {
		if err == nil || errors.Is(err, errPoolTimeout) {
			p.r.poolWait.observe(time.Since(start))
		}
		if waited {
			p.countWait(time.Since(start))
		}
	}()
	for {
		p.mu.Lock()
		if p.retired {
			p.mu.Unlock()
			return nil, errRetired
		}
		if sc := p.popIdle(); sc != nil {
			p.mu.Unlock()
			p.active.Add(1)
			return sc, nil
		}
		if len(p.all)+p.opening < p.r.settings().PoolSize {
			p.opening++
			p.mu.Unlock()
			sc, err := p.dial(ctx)
			p.mu.Lock()
			p.opening--
			if err != nil {
				p.wakeOne()
				p.mu.Unlock()
				return nil, err
			}
			if p.retired {
				p.mu.Unlock()
				sc.close()
				return nil, errRetired
			}
			p.all[sc] = true
			p.mu.Unlock()
			p.active.Add(1)
			return sc, nil
		}
		ch := make(chan struct{}, 1)
		p.waiters = append(p.waiters, waiter{ch: ch})
		p.mu.Unlock()
		waited = true
		p.waiting.Add(1)
		select {
		case <-ch:
			p.waiting.Add(-1)
		case <-ctx.Done():
			p.waiting.Add(-1)
			p.mu.Lock()
			for i, w := range p.waiters {
				if w.ch == ch {
					p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
					break
				}
			}
			select {
			case <-ch: // woken meanwhile: pass the turn on
				p.wakeOne()
			default:
			}
			p.mu.Unlock()
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil, errPoolTimeout
			}
			return nil, ctx.Err()
		}
	}
}

// get returns a server connection: an idle one at once, else one from
// acquire, waiting at most timeout. The context for the wait is made only
// when the pool has no idle connection: it costs allocations and a timer,
// per transaction on the hot path.
func (p *pool) get(parent context.Context, timeout time.Duration) (*serverConn, error) {
	if p.draining.Load() {
		return nil, errDraining
	}
	p.mu.Lock()
	var sc *serverConn
	if !p.retired {
		sc = p.popIdle()
	}
	p.mu.Unlock()
	if sc != nil {
		p.active.Add(1)
		p.r.poolWait.observe(0)
		return sc, nil
	}
	ctx, cancel := context.WithTimeout(parent, timeout)
	defer cancel()
	return p.acquire(ctx)
}

// popIdle takes the most recently used idle connection that has not
// expired and is still quiet, closing the others it meets; nil when there
// is none.
// Called with mu held; it releases mu while it closes a connection.
func (p *pool) popIdle() *serverConn {
	for len(p.idle) > 0 {
		sc := p.idle[len(p.idle)-1]
		p.idle[len(p.idle)-1] = nil
		p.idle = p.idle[:len(p.idle)-1]
		if p.expired(sc, time.Now()) || !sc.quiet() {
			delete(p.all, sc)
			p.mu.Unlock()
			sc.close()
			p.mu.Lock()
			continue
		}
		return sc
	}
	return nil
}

// waiter is a client queued for a connection: a goroutine blocked on ch,
// or a fast-path session (fast.go), which is kicked on the poller.
type waiter struct {
	ch   chan struct{}
	fast *fastPath
}

func (w waiter) wake() {
	if w.fast != nil {
		w.fast.granted = true
		w.fast.cc.Kick()
		return
	}
	w.ch <- struct{}{}
}

// wakeOne lets the first waiter retry. Called with mu held.
func (p *pool) wakeOne() {
	if len(p.waiters) > 0 {
		w := p.waiters[0]
		p.waiters[0] = waiter{}
		p.waiters = p.waiters[1:]
		w.wake()
	}
}

// dropWaiter takes f out of the queue. Called with mu held.
func (p *pool) dropWaiter(f *fastPath) {
	for i, w := range p.waiters {
		if w.fast == f {
			p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
			return
		}
	}
}

// countWait records an acquisition that waited d.
func (p *pool) countWait(d time.Duration) {
	ns := d.Nanoseconds()
	p.r.stats.PoolWaits.Add(1)
	p.waitsTotal.Add(1)
	p.waitNanos.Add(ns)
	for {
		m := p.maxWait.Load()
		if ns <= m || p.maxWait.CompareAndSwap(m, ns) {
			break
		}
	}
}

// tryGet is get for the fast path, which never blocks: an idle connection,
// or (when the pool is full, or others wait and f's turn has not come:
// first) f joins the queue and wait is true; wakeOne kicks f's client
// later. nil and false: the general path must dial, or the pool retired.
func (p *pool) tryGet(f *fastPath, first bool) (sc *serverConn, wait bool) {
	if p.draining.Load() {
		return nil, false // the general path: get refuses it, the read goes to the primary
	}
	p.mu.Lock()
	if p.retired {
		p.mu.Unlock()
		return nil, false
	}
	if first || len(p.waiters) == 0 {
		if sc := p.popIdle(); sc != nil {
			p.mu.Unlock()
			p.active.Add(1)
			p.r.poolWait.observe(0)
			return sc, false
		}
		if len(p.all)+p.opening < p.r.settings().PoolSize {
			p.mu.Unlock()
			return nil, false
		}
	}
	f.granted, f.timedOut = false, false
	p.waiters = append(p.waiters, waiter{fast: f})
	p.waiting.Add(1)
	p.mu.Unlock()
	return nil, true
}

func (p *pool) expired(sc *serverConn, now time.Time) bool {
	cfg := p.r.settings()
	return sc.broken.Load() ||
		(cfg.ServerLifetime > 0 && now.Sub(sc.created) > cfg.ServerLifetime) ||
		(cfg.ServerIdleTimeout > 0 && now.Sub(sc.lastUsed) > cfg.ServerIdleTimeout)
}

// release gives sc back. reusable says sc is at ReadyForQuery 'I' with
// nothing in flight; otherwise it is closed, never pooled.
func (p *pool) release(sc *serverConn, reusable bool) {
	p.active.Add(-1)
	p.xacts.Add(1)
	now := time.Now()
	sc.lastUsed = now
	if len(sc.prepared) > 1000 {
		reusable = false // bound the server-side statement cache
	}
	p.mu.Lock()
	if lifetime := p.r.settings().ServerLifetime; !reusable || p.retired || sc.broken.Load() ||
		(lifetime > 0 && now.Sub(sc.created) > lifetime) {
		delete(p.all, sc)
		p.wakeOne()
		p.mu.Unlock()
		sc.close()
		return
	}
	if pc, ok := sc.conn.(*poller.Conn); ok {
		sc.idleMark = pc.ReadEvents() // see quiet
	}
	p.idle = append(p.idle, sc)
	p.wakeOne()
	p.mu.Unlock()
}

// retire closes every connection of the pool, idle and in use, and refuses
// new ones. Clients attached to one see their server connection fail.
func (p *pool) retire() {
	p.cancel()
	p.mu.Lock()
	p.retired = true
	conns := make([]*serverConn, 0, len(p.all))
	for sc := range p.all {
		conns = append(conns, sc)
	}
	p.idle = nil
	for _, w := range p.waiters {
		w.wake()
	}
	p.waiters = nil
	p.mu.Unlock()
	for _, sc := range conns {
		sc.close()
	}
}

// reap closes idle connections past their idle timeout or lifetime.
func (p *pool) reap(now time.Time) {
	p.mu.Lock()
	var dead []*serverConn
	keep := p.idle[:0]
	for _, sc := range p.idle {
		if p.expired(sc, now) {
			dead = append(dead, sc)
			delete(p.all, sc)
		} else {
			keep = append(keep, sc)
		}
	}
	for i := len(keep); i < len(p.idle); i++ {
		p.idle[i] = nil
	}
	p.idle = keep
	p.mu.Unlock()
	for _, sc := range dead {
		sc.close()
	}
}

// errDraining: the pool's backend is draining; the view that says so is
// in place already (applyTopology stores it first), so routing again
// picks another server.
var errDraining = errors.New("the server is draining for a restart")

// closeIdle closes the pool's idle connections (Router.Drain).
func (p *pool) closeIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	for _, sc := range idle {
		delete(p.all, sc)
	}
	p.wakeOne() // room to dial for a waiter
	p.mu.Unlock()
	for _, sc := range idle {
		sc.close()
	}
}

func (p *pool) counts() (idle, total int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle), len(p.all)
}

// quiet: nothing arrived on the idle connection. PostgreSQL sends an idle
// session nothing it keeps: what arrives is its goodbye (the FATAL of a
// shutdown, a restart, pg_terminate_backend, idle_session_timeout) or the
// close, and handing such a connection out failed the next client's query
// (a standby's restart under pgbench, CI). One non-blocking read.
func (sc *serverConn) quiet() bool {
	var b [1]byte
	switch c := sc.conn.(type) {
	case *poller.Conn:
		// On the poller, nothing arrived if no read event came since the
		// release: no system call (about 10 µs a transaction here). What
		// arrives between the release's last read and its mark, or after
		// this check, is missed either way. An event may be spurious:
		// then one read decides.
		if c.ReadEvents() == sc.idleMark {
			return true
		}
		_, err := c.TryRead(b[:])
		return errors.Is(err, poller.ErrWouldBlock)
	case syscall.Conn: // Config.DisableFastPath: a *net.TCPConn
		raw, err := c.SyscallConn()
		if err != nil {
			return false
		}
		var rerr error
		if err := raw.Read(func(fd uintptr) bool {
			_, _, rerr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			return true
		}); err != nil {
			return false
		}
		return errors.Is(rerr, syscall.EAGAIN)
	}
	return true
}

// close closes the connection; any goroutine may call it, any number of
// times. sc.closed is closed then.
func (sc *serverConn) close() {
	sc.broken.Store(true)
	sc.closeMu.Do(func() {
		sc.conn.Close()
		close(sc.closed)
	})
}

// dial opens and logs in a new server connection.
func (p *pool) dial(ctx context.Context) (*serverConn, error) {
	cfg := &p.r.cfg
	ctx, cancel := context.WithTimeout(ctx, cfg.ServerConnectTimeout)
	defer cancel()
	// Retiring the pool ends the connect, and the login after it (the
	// connection is closed), whatever the timeouts.
	stopDial := context.AfterFunc(p.ctx, cancel)
	defer stopDial()
	d := net.Dialer{KeepAlive: 15 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", p.key.addr)
	if err != nil {
		if p.ctx.Err() != nil {
			return nil, errRetired
		}
		p.r.stats.ConnectErrors.Add(1)
		return nil, &serverDownError{fmt.Errorf("connect to %s: %w", p.key.addr, err)}
	}
	if p.r.poller != nil {
		pc, err := p.r.poller.Wrap(conn)
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("connect to %s: %w", p.key.addr, err)
		}
		conn = pc
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	now := time.Now()
	mr := newMsgReader(conn)
	sc := &serverConn{pool: p, conn: conn, mr: mr, fe: pgproto3.NewFrontend(mr, conn), created: now, lastUsed: now,
		prepared: map[string]bool{}, closed: make(chan struct{})}
	sc.fe.SetMaxBodyLen(cfg.MaxMessageSize)
	stopLogin := context.AfterFunc(p.ctx, func() { conn.Close() })
	params, err := sc.login(p.r, p.key.db, p.key.user)
	if !stopLogin() {
		conn.Close()
		return nil, errRetired
	}
	if err != nil {
		conn.Close()
		p.r.stats.ConnectErrors.Add(1)
		err = fmt.Errorf("log into %s as %s: %w", p.key.addr, p.key.user, err)
		if serverUnavailable(err) || errors.Is(err, os.ErrDeadlineExceeded) {
			// No answer within ServerConnectTimeout is a server that
			// cannot serve now, like one that refuses connections: a
			// read goes elsewhere, a write waits for a primary.
			err = &serverDownError{err}
		}
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	p.r.stats.ServerConnects.Add(1)
	p.connects.Add(1)
	p.mu.Lock()
	if p.params == nil {
		p.params = params
	}
	p.mu.Unlock()
	return sc, nil
}

// login runs the startup exchange; it returns the server's parameters.
func (sc *serverConn) login(r *Router, db, user string) (map[string]string, error) {
	sc.wbuf, _ = (&pgproto3.StartupMessage{
		ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters:      map[string]string{"user": user, "database": db, "application_name": r.cfg.ApplicationName},
	}).Encode(sc.wbuf[:0])
	if err := sc.flush(); err != nil {
		return nil, err
	}
	var scram *scramClient
	params := map[string]string{}
	for {
		msg, err := sc.fe.Receive()
		if err != nil {
			return nil, err
		}
		switch m := msg.(type) {
		case *pgproto3.AuthenticationOk:
		case *pgproto3.AuthenticationCleartextPassword:
			cred := r.serverCredential(user)
			if cred.password == "" || isMD5Hash(cred.password) {
				return nil, fmt.Errorf("the server asks for a clear-text password and the router has none for user %q (set ServerPasswords)", user)
			}
			sc.send(&pgproto3.PasswordMessage{Password: cred.password})
		case *pgproto3.AuthenticationMD5Password:
			cred := r.serverCredential(user)
			if cred.password == "" {
				return nil, fmt.Errorf("the server asks for md5 and the router has no password or md5 hash for user %q (set ServerPasswords)", user)
			}
			sc.send(&pgproto3.PasswordMessage{Password: md5Response(cred.password, user, m.Salt)})
		case *pgproto3.AuthenticationSASL:
			if !slices.Contains(m.AuthMechanisms, "SCRAM-SHA-256") {
				return nil, fmt.Errorf("the server offers SASL mechanisms %v, the router speaks only SCRAM-SHA-256", m.AuthMechanisms)
			}
			cred := r.serverCredential(user)
			switch {
			case cred.password != "" && !isMD5Hash(cred.password):
				scram = &scramClient{password: cred.password}
			case cred.scram != nil:
				scram = &scramClient{keys: cred.scram}
			default:
				return nil, fmt.Errorf("the server asks for SCRAM and the router has no password for user %q: set ServerPasswords, or give the router the server's own verifier (Users or AuthUser) so a client's SCRAM login can pass through", user)
			}
			sc.send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte(scram.first())})
		case *pgproto3.AuthenticationSASLContinue:
			if scram == nil {
				return nil, errors.New("unexpected SASL continue")
			}
			final, err := scram.final(m.Data)
			if err != nil {
				return nil, err
			}
			sc.send(&pgproto3.SASLResponse{Data: []byte(final)})
		case *pgproto3.AuthenticationSASLFinal:
			if scram == nil {
				return nil, errors.New("unexpected SASL final")
			}
			if err := scram.verify(m.Data); err != nil {
				return nil, err
			}
			continue
		case *pgproto3.ParameterStatus:
			params[m.Name] = m.Value
			continue
		case *pgproto3.BackendKeyData:
			sc.pid = m.ProcessID
			sc.secret = append([]byte(nil), m.SecretKey...)
			continue
		case *pgproto3.ErrorResponse:
			return nil, &serverError{resp: copyError(m)}
		case *pgproto3.NoticeResponse:
			continue
		case *pgproto3.ReadyForQuery:
			return params, nil
		default:
			return nil, fmt.Errorf("unexpected %T during login", msg)
		}
		if len(sc.wbuf) > 0 {
			if err := sc.flush(); err != nil {
				return nil, err
			}
		}
	}
}

// receive reads the server's next message; a failed read leaves sc in an
// unknown state (broken).
func (sc *serverConn) receive() (pgproto3.BackendMessage, error) {
	msg, err := sc.fe.Receive()
	if err != nil {
		sc.broken.Store(true)
	}
	return msg, err
}

// send appends msg to the server write buffer.
func (sc *serverConn) send(msg pgproto3.FrontendMessage) {
	sc.wbuf, _ = msg.Encode(sc.wbuf)
}

// flush writes the buffered messages.
func (sc *serverConn) flush() error {
	if len(sc.wbuf) == 0 {
		return nil
	}
	_, err := sc.conn.Write(sc.wbuf)
	if cap(sc.wbuf) > 64<<10 {
		sc.wbuf = nil
	} else {
		sc.wbuf = sc.wbuf[:0]
	}
	if err != nil {
		sc.broken.Store(true)
	}
	return err
}

// simpleQuery runs sql on an idle connection and returns the first column
// of the first row. The connection must be at ReadyForQuery 'I'.
func (sc *serverConn) simpleQuery(sql string) (string, error) {
	sc.send(&pgproto3.Query{String: sql})
	if err := sc.flush(); err != nil {
		return "", err
	}
	var val string
	var qerr error
	for {
		msg, err := sc.receive()
		if err != nil {
			return "", err
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			if len(m.Values) > 0 && val == "" {
				val = string(m.Values[0])
			}
		case *pgproto3.ErrorResponse:
			qerr = &serverError{resp: copyError(m)}
		case *pgproto3.ReadyForQuery:
			if m.TxStatus != 'I' {
				sc.broken.Store(true)
			}
			return val, qerr
		}
	}
}

// discardAll runs DISCARD ALL on the idle sc and forgets what it knew of
// the session: no prepared statements, the login's settings (RESET ALL),
// no leftovers.
func (sc *serverConn) discardAll() error {
	_, err := sc.simpleQuery("DISCARD ALL")
	clear(sc.prepared)
	sc.paramsKey = ""
	sc.leftovers = false
	return err
}

// cancel sends a CancelRequest for whatever sc runs now.
func (sc *serverConn) cancel() error {
	conn, err := net.DialTimeout("tcp", sc.pool.key.addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	buf, err := (&pgproto3.CancelRequest{ProcessID: sc.pid, SecretKey: sc.secret}).Encode(nil)
	if err != nil {
		return err
	}
	_, err = conn.Write(buf)
	return err
}

func copyError(m *pgproto3.ErrorResponse) pgproto3.ErrorResponse {
	e := *m
	e.UnknownFields = nil
	return e
}

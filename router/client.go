package router

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// client is one client session.
//
// Goroutines: the client goroutine (serveClient) reads the client and is
// the only writer to the attached server connection. While messages are in
// flight exactly one reader relays the server's answers to the client
// (pumping is true): usually the client goroutine itself, inline, until
// ReadyForQuery (relay); a pump goroutine when the exchange needs the
// client goroutine back at the client socket (COPY FROM STDIN, a batch
// ending in Flush or without Sync, a statement running longer than
// inlineWait). Fields under mu are shared by both; wbuf (to the client) is
// guarded by wmu; lock order is mu before wmu. Everything else belongs to
// the client goroutine.
type client struct {
	r             *Router
	role          Role
	conn          net.Conn    // the TLS connection once negotiated; set before the client is registered
	remote        string      // the client's address, for logs
	stopOnClose   func() bool // stops the Router.Close hook that closes conn
	encrypted     bool        // TLS negotiated
	loginDeadline time.Time
	// The login's start on the event loop (login.go), when it hands the
	// login to a goroutine: the bytes it read and did not use, and the
	// encryption requests it answered 'N'.
	pre                      []byte
	sslAnswered, gssAnswered bool
	dec                      *decoder   // decodes the client's messages; nil while the fast path holds the session
	mr                       *msgReader // dec's reader
	txnMode                  bool

	// fast is the session's fast path (fast.go): nil in session mode, with
	// TLS or with Config.DisableFastPath. fastOK: the last batch the
	// general path served was one a fast path serves (fastShaped), so
	// entering it is likely worth the hand-over.
	fast   *fastPath
	fastOK bool

	user, db string
	params   sessionParams // the client's startup parameters (params.go)
	pid      uint32
	secret   []byte

	stmts map[string]*stmt // the client's named prepared statements (transaction mode)
	// dupNames: server statement names the router asked the server to
	// prepare again, so that it refuses as it would the client's name
	// (42P05), by server name: the client's name. Under mu.
	dupNames map[string]string
	unnamed  Class // class of the last unnamed Parse
	// lastUnnamed is the client's last unnamed Parse (transaction mode): a
	// Bind of the unnamed statement in a later transaction, on another
	// server connection, gets it re-parsed there. pgproto3's Parse.Decode
	// allocates a fresh Query string and OID slice, so keeping the struct
	// beyond the next Receive is safe.
	lastUnnamed *pgproto3.Parse
	pools       []cachedPool // see poolFor
	lastRead    string       // the standby of the session's last read (pickRead)
	pending     []pgproto3.FrontendMessage
	pendLen     int
	out         []byte // bytes for the server, written by the client goroutine

	// writeLSN is the primary's WAL insert position after this session's
	// last write transaction (read-your-writes); math.MaxUint64 while it is
	// being fetched or unknown, which sends reads to the primary. Written
	// under mu, read by route without it.
	writeLSN atomic.Uint64

	wmu  sync.Mutex
	wbuf []byte

	mu          sync.Mutex
	sc          *serverConn // attached server connection
	target      Backend
	outstanding int  // Sync, Query and FunctionCall sent minus ReadyForQuery received
	unsynced    bool // extended-protocol messages sent since the last Sync
	pumping     bool
	// watching: in session mode one pump goroutine reads the attached
	// server connection for as long as it is attached, relaying what the
	// server sends between statements too (NotificationResponse for a
	// LISTEN, a FATAL when the backend is terminated, which ends the
	// client's session as it would end a direct one). watchDone is closed
	// when it has stopped.
	watching    bool
	watchDone   chan struct{}
	txStatus    byte
	wrote       bool // this attachment ran a write on the primary
	unnamedHere bool // the unnamed statement was parsed on this attachment
	drops       []dropEntry
	closing     bool
	lsnGen      uint64 // counts write releases: only the latest one's LSN is stored

	// abandoned: the client left with work in flight; the pump drains the
	// server's answers without relaying them and then closes the server
	// connection (see abandon).
	abandoned atomic.Bool
}

// stmt is a client's named prepared statement; serverName is the name
// under which the router prepares it on server connections (shared by all
// clients with the same text and parameter types).
type stmt struct {
	serverName string
	parse      pgproto3.Parse
	class      Class
	// shape: the result shape (shapeOf) the client was first given for
	// it; changed: a server connection it was prepared on since has
	// another, so its Binds fail as PostgreSQL's would (shape.go). Under
	// mu.
	shape   string
	changed bool
}

// dropEntry is an expected response: '1' ParseComplete, '3' CloseComplete,
// 'Z' ReadyForQuery; drop means the router injected the request and the
// client must not see the response.
type dropEntry struct {
	typ  byte
	drop bool
	name string
	// A Describe: 't' ParameterDescription (of a statement), then 'T'
	// RowDescription or NoData, with the statement whose shape it gives
	// (nil for a portal or the unnamed statement).
	st *stmt
}

func (c *client) unregister() {
	r := c.r
	r.mu.Lock()
	if r.clients[c.pid] == c {
		delete(r.clients, c.pid)
		r.nClient--
	}
	r.mu.Unlock()
}

// serverParams returns the ParameterStatus set of the server the session
// starts on, logging in once if the pool has none yet (which also reports
// a missing database or role as PostgreSQL words it).
func (c *client) serverParams() (map[string]string, error) {
	// As connect: a backend that went away (a failover under way, or its
	// pool retired by one) is not the client's problem while the topology
	// may still name another within PrimaryWait and the login timeout.
	deadline := time.Now().Add(c.r.settings().PrimaryWait)
	if !c.loginDeadline.IsZero() && c.loginDeadline.Before(deadline) {
		deadline = c.loginDeadline
	}
	for {
		params, err := c.serverParamsOnce()
		var down *serverDownError
		switch {
		case err == nil || !time.Now().Before(deadline):
			return params, err
		case errors.Is(err, errRetired):
		case errors.As(err, &down):
			c.r.waitViewChange(deadline)
		default:
			return nil, err
		}
	}
}

// paramsPool is the pool whose server's parameters a login reports: the
// primary's (a standby's on the read-only port, or without a primary).
func (c *client) paramsPool() (*pool, bool) {
	v := c.r.view.Load()
	b, ok := v.primaryBackend()
	if c.role == ReadOnly || !ok {
		if s, sok := v.pickStandby(0, 0); sok {
			b, ok = s, true
		}
	}
	if !ok {
		return nil, false
	}
	return c.r.pool(b.Addr(), c.db, c.user), true
}

// cachedServerParams is what serverParams would answer, when the pool
// already knows it; else nil.
func (c *client) cachedServerParams() map[string]string {
	p, ok := c.paramsPool()
	if !ok {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.params
}

func (c *client) serverParamsOnce() (map[string]string, error) {
	p, ok := c.paramsPool()
	if !ok {
		return nil, &authError{code: "57P03", msg: "no backend available: the cluster has no healthy primary or standby"}
	}
	p.mu.Lock()
	params := p.params
	p.mu.Unlock()
	if params != nil {
		return params, nil
	}
	ctx, cancel := context.WithTimeout(c.r.ctx, c.r.settings().QueryWaitTimeout)
	defer cancel()
	sc, err := p.acquire(ctx)
	if err != nil {
		return nil, err
	}
	p.release(sc, true)
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.params, nil
}

// cancelRequest forwards a client's cancel to the server connection running
// its query.
func (r *Router) cancelRequest(pid uint32, secret []byte) {
	r.mu.Lock()
	c := r.clients[pid]
	r.mu.Unlock()
	if c == nil || subtle.ConstantTimeCompare(c.secret, secret) != 1 {
		return
	}
	c.mu.Lock()
	sc := c.sc
	c.mu.Unlock()
	if sc != nil {
		if err := sc.cancel(); err != nil {
			r.log.Warn("forward cancel request", "backend", sc.pool.key.addr, "err", err)
		}
	}
}

// loop relays the session until the client leaves or fails.
// loop serves the session on the client goroutine. handedBack: the fast
// path just gave it back, so the next message is read here whatever
// fastEligible says (the fast path did not serve it).
func (c *client) loop(handedBack bool) error {
	for {
		if !handedBack && c.fastEligible() {
			c.enterFast()
			return errOnFastPath
		}
		handedBack = false
		if c.dec == nil {
			c.dec = getDecoder(c.mr, c.r.cfg.MaxMessageSize)
		}
		msg, err := c.dec.be.Receive()
		if err != nil {
			if clientIOError(err) {
				return err
			}
			// Also a length prefix over MaxMessageSize: refused before
			// anything that size is allocated.
			return c.protocolViolation("invalid frontend message: " + err.Error())
		}
		if _, ok := msg.(*pgproto3.Terminate); ok {
			return nil
		}
		if q, ok := msg.(*pgproto3.Query); ok && len(c.pending) == 0 && c.idleAttached() {
			if handled, err := c.admin(q.String); handled || err != nil {
				if err != nil {
					return err
				}
				continue
			}
		}
		fwd, err := c.forwardAttached(msg)
		if err != nil {
			return err
		}
		if fwd {
			continue
		}
		switch msg.(type) {
		case *pgproto3.CopyData, *pgproto3.CopyDone, *pgproto3.CopyFail:
			// Outside a COPY, as PostgreSQL does: ignored. A COPY FROM
			// STDIN that failed ended the transaction and released the
			// server connection while the client was still sending.
			continue
		}
		if flushPoint(msg) {
			c.pending = append(c.pending, msg) // used before the next Receive: no copy
			err := c.dispatch()
			c.pending = c.pending[:0]
			c.pendLen = 0
			if err != nil {
				return err
			}
			continue
		}
		cp, n := copyMsg(msg)
		if cp == nil {
			return c.protocolViolation(fmt.Sprintf("unexpected message %T outside a COPY or query", msg))
		}
		c.pending = append(c.pending, cp)
		c.pendLen += n
		if c.pendLen > 1<<20 {
			// A huge unsynced batch: route it now (to where a write goes).
			if err := c.dispatch(); err != nil {
				return err
			}
			c.pending = c.pending[:0]
			c.pendLen = 0
		}
	}
}

// protocolViolation ends a session whose client broke the protocol: one
// ErrorResponse, one log line, however much more the client sends.
func (c *client) protocolViolation(reason string) error {
	c.r.stats.ProtocolErrors.Add(1)
	c.fatal(&authError{code: "08P01", msg: reason})
	c.r.log.Info("client protocol violation", "client", c.remote, "user", c.user, "db", c.db, "reason", reason)
	return errors.New(reason)
}

// idleAttached: no server attached, or one attached with nothing in flight
// outside a transaction (session mode between statements).
func (c *client) idleAttached() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sc == nil || (!c.pumping && c.outstanding <= 0 && !c.unsynced && c.txStatus == 'I')
}

func flushPoint(msg pgproto3.FrontendMessage) bool {
	switch msg.(type) {
	case *pgproto3.Query, *pgproto3.Sync, *pgproto3.Flush, *pgproto3.FunctionCall:
		return true
	}
	return false
}

// copyMsg returns an owned copy of a flyweight message and its size on
// the wire (near enough: it only bounds a batch). pgproto3's Decode gives
// every message fresh strings and format-code slices; only Bind's
// parameter values point into the read buffer, so they are copied, into
// one allocation.
func copyMsg(m pgproto3.FrontendMessage) (pgproto3.FrontendMessage, int) {
	switch m := m.(type) {
	case *pgproto3.Parse:
		n := *m
		return &n, 5 + len(m.Name) + len(m.Query) + 4 + 4*len(m.ParameterOIDs)
	case *pgproto3.Bind:
		n := *m
		size := 0
		for _, v := range m.Parameters {
			size += len(v)
		}
		if len(m.Parameters) > 0 {
			buf := make([]byte, 0, size)
			n.Parameters = make([][]byte, len(m.Parameters))
			for i, v := range m.Parameters {
				if v != nil { // NULL stays nil
					buf = append(buf, v...)
					n.Parameters[i] = buf[len(buf)-len(v) : len(buf) : len(buf)]
				}
			}
		}
		return &n, 5 + len(m.DestinationPortal) + len(m.PreparedStatement) + 8 + 2*len(m.ParameterFormatCodes) + 4*len(m.Parameters) + size + 2*len(m.ResultFormatCodes)
	case *pgproto3.Describe:
		n := *m
		return &n, 6 + len(m.Name) + 1
	case *pgproto3.Execute:
		n := *m
		return &n, 5 + len(m.Portal) + 5
	case *pgproto3.Close:
		n := *m
		return &n, 6 + len(m.Name) + 1
	}
	return nil, 0
}

// batchClass is ClassRead when every statement of the pending batch is a
// read.
func (c *client) batchClass() Class {
	class := ClassRead
	seen := false
	var parsed map[string]Class // named statements parsed in this batch
	for _, m := range c.pending {
		switch m := m.(type) {
		case *pgproto3.Query:
			seen = true
			if Classify(m.String, c.r.settings().writeFuncs) != ClassRead {
				return ClassWrite
			}
		case *pgproto3.Parse:
			seen = true
			k := Classify(m.Query, c.r.settings().writeFuncs)
			if m.Name == "" {
				c.unnamed = k
			} else {
				if parsed == nil {
					parsed = map[string]Class{}
				}
				parsed[m.Name] = k
			}
			if k != ClassRead {
				class = ClassWrite
			}
		case *pgproto3.Bind:
			seen = true
			if m.PreparedStatement == "" {
				if c.unnamed != ClassRead {
					class = ClassWrite
				}
			} else if k, ok := parsed[m.PreparedStatement]; ok {
				if k != ClassRead {
					class = ClassWrite
				}
			} else if st := c.stmts[m.PreparedStatement]; st == nil || st.class != ClassRead {
				class = ClassWrite
			}
		case *pgproto3.FunctionCall:
			return ClassWrite
		}
	}
	if !seen {
		return ClassWrite
	}
	return class
}

// dispatch routes the pending batch, attaches a server connection and
// sends the batch.
func (c *client) dispatch() error {
	// A batch of only Sync and Flush needs no server.
	trivial := true
	for _, m := range c.pending {
		switch m.(type) {
		case *pgproto3.Sync, *pgproto3.Flush:
		default:
			trivial = false
		}
	}
	if trivial {
		for _, m := range c.pending {
			if _, ok := m.(*pgproto3.Sync); ok {
				c.send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
			}
		}
		return c.flushClient()
	}
	if c.txnMode && c.listens() {
		return c.refuseListen()
	}
	if c.prepareOnly() {
		return c.answerPrepare()
	}
	class := c.batchClass()
	c.fastOK = fastShaped(c.pending)
	if !c.txnMode && c.role == ReadWrite {
		class = ClassWrite // a session stays on the primary
	}
	target, primary, sc, err := c.connect(class)
	if err != nil {
		c.fatal(err)
		return err
	}
	if err := c.applyParams(sc); err != nil {
		c.fatal(err)
		return err
	}
	if err := c.checkShapes(sc); err != nil {
		sc.pool.release(sc, false)
		err = fmt.Errorf("describe prepared statements on %s: %w", sc.pool.key.addr, err)
		c.fatal(err)
		return err
	}
	c.mu.Lock()
	c.sc = sc
	c.target = target
	c.outstanding = 0
	c.unsynced = false
	c.pumping = false
	c.wrote = primary && class == ClassWrite
	c.drops = c.drops[:0]
	c.unnamedHere = false
	for _, m := range c.pending {
		c.enqueue(sc, m)
	}
	c.mu.Unlock()
	return c.flushAndRelay(sc)
}

// listens: the pending batch has a LISTEN.
func (c *client) listens() bool {
	for _, m := range c.pending {
		switch m := m.(type) {
		case *pgproto3.Query:
			if isListen(m.String) {
				return true
			}
		case *pgproto3.Parse:
			if isListen(m.Query) {
				return true
			}
		}
	}
	return false
}

// refuseListen answers a batch with a LISTEN in transaction mode with an
// error, as PgBouncer does: notifications arrive on the server connection
// that ran the LISTEN, which other clients get between this one's
// transactions, so this client would wait for them forever. The session
// goes on: one ErrorResponse, and ReadyForQuery for each Query or Sync.
func (c *client) refuseListen() error {
	c.send(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "0A000",
		Message: "LISTEN is not supported in transaction pool mode",
		Detail:  "Notifications arrive on a server connection that other clients use between this session's transactions.",
		Hint:    "Connect through a router in session pool mode (pool_mode: session) to LISTEN."})
	for _, m := range c.pending {
		switch m.(type) {
		case *pgproto3.Query, *pgproto3.Sync:
			c.send(&pgproto3.ReadyForQuery{TxStatus: 'I'}) // no server attached: idle
		}
	}
	return c.flushClient()
}

// listenRefusal replaces a LISTEN inside a transaction (transaction mode,
// a server attached): the server raises the error itself, so that its
// transaction is aborted as the client is told.
const listenRefusal = `DO $pgha$BEGIN RAISE EXCEPTION 'LISTEN is not supported in transaction pool mode' USING ERRCODE = 'feature_not_supported', HINT = 'Connect through a router in session pool mode (pool_mode: session) to LISTEN.'; END$pgha$`

// refuseListenAttached rewrites msg when it is a LISTEN the attached
// server must not run (transaction mode).
func (c *client) refuseListenAttached(msg pgproto3.FrontendMessage) pgproto3.FrontendMessage {
	if !c.txnMode {
		return msg
	}
	switch m := msg.(type) {
	case *pgproto3.Query:
		if isListen(m.String) {
			return &pgproto3.Query{String: listenRefusal}
		}
	case *pgproto3.Parse:
		if isListen(m.Query) {
			return &pgproto3.Parse{Name: m.Name, Query: listenRefusal}
		}
	}
	return msg
}

// prepareOnly: the pending batch only prepares named statements (Parse
// ... Sync, as libpq's PQprepare sends) and the client, in transaction
// mode, holds no server connection. The router answers such a batch
// itself (answerPrepare).
func (c *client) prepareOnly() bool {
	if !c.txnMode || len(c.pending) < 2 {
		return false
	}
	if _, ok := c.pending[len(c.pending)-1].(*pgproto3.Sync); !ok {
		return false
	}
	for _, m := range c.pending[:len(c.pending)-1] {
		if p, ok := m.(*pgproto3.Parse); !ok || p.Name == "" {
			return false
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sc == nil && !c.pumping && c.txStatus == 'I'
}

// answerPrepare records the pending Parses and answers ParseComplete for
// each and ReadyForQuery, without a server connection: the router prepares
// a statement on whichever server connection first runs it (enqueue,
// ensurePrepared). Waiting for a connection here could deadlock: pgbench
// -M prepared prepares with a synchronous PQprepare that blocks its whole
// thread, while other clients of that thread hold every connection of the
// pool idle in a transaction, waiting for that thread to go on.
//
// The price: a statement PostgreSQL refuses (a syntax error, an unknown
// table) is reported at its first Bind or Describe, not here. That
// ErrorResponse reaches the client in its place in the batch, and popSync
// forgets the failed Parse on that server connection, so every later use
// tries again and reports the error again.
func (c *client) answerPrepare() error {
	for _, m := range c.pending[:len(c.pending)-1] {
		p := m.(*pgproto3.Parse)
		if c.stmts[p.Name] != nil {
			// As PostgreSQL: an error, and the rest up to Sync skipped.
			c.send(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "42P05",
				Message: `prepared statement "` + p.Name + `" already exists`})
			break
		}
		c.register(p)
		c.send(&pgproto3.ParseComplete{})
	}
	c.send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	return c.flushClient()
}

// connect routes a batch and gets a server connection for it. A server
// that cannot be reached is not the client's problem while another can
// serve: a read falls back to the primary, and a write waits up to
// PrimaryWait for the topology to replace a primary that went away (the
// agent notices within a health interval and the leader fails over), so a
// new transaction during a failover waits instead of failing.
func (c *client) connect(class Class) (Backend, bool, *serverConn, error) {
	r := c.r
	deadline := time.Now().Add(r.settings().PrimaryWait)
	for {
		if r.ctx.Err() != nil {
			// Closed: every pool is retired and stays so. Retrying would
			// spin, and Close waits for this session (the chaos campaign:
			// an agent that lost and regained Raft leadership waited
			// minutes for its old router and never took the VIP back).
			return Backend{}, false, nil, errShuttingDown
		}
		target, primary, err := c.route(class)
		if err != nil {
			return Backend{}, false, nil, err
		}
		p, cached := c.poolFor(target)
		sc, err := p.get(r.ctx, r.settings().QueryWaitTimeout)
		if primary {
			r.toPrimary.Add(-1)
		}
		if err == nil {
			return target, primary, sc, nil
		}
		var down *serverDownError
		switch {
		case errors.Is(err, errDraining) && (cached || time.Now().Before(deadline)):
			// The view excludes a draining standby, so route again. A pool
			// from the session's cache may be an old one, retired while
			// its standby drained (the restart took it down), whose flag
			// nothing lifts: look it up again. One just looked up that
			// still drains: wait for the topology that says so rather
			// than spin (the rolling-restart test hung in a busy loop).
			c.pools = nil
			if !cached {
				r.waitViewChange(deadline)
			}
		case errors.Is(err, errRetired) && (cached || time.Now().Before(deadline)):
			// A topology change replaced it: look it up again. Not only a
			// pool from the session's cache: one just looked up can be
			// retired before it serves (a switchover's topology update
			// between route and get ended a pgbench client in CI).
			c.pools = nil
			if !cached {
				// Looked up just now and retired already: wait for the
				// topology that replaces it rather than spin.
				r.waitViewChange(deadline)
			}
		case errors.Is(err, errPoolTimeout):
			r.stats.PoolWaitTimeouts.Add(1)
			return Backend{}, false, nil, &authError{code: "08P01", msg: fmt.Sprintf("query_wait_timeout: no server connection to %s free within %v (pool_size %d)", target.Name, r.settings().QueryWaitTimeout, r.settings().PoolSize)}
		case !errors.As(err, &down):
			return Backend{}, false, nil, err
		case !primary && class == ClassRead && c.role == ReadWrite:
			class = ClassWrite // this standby is down: read from the primary
		case !time.Now().Before(deadline):
			return Backend{}, false, nil, err
		default:
			r.waitViewChange(deadline)
		}
	}
}

// cachedPool is a pool the session used, by backend host and port.
type cachedPool struct {
	host string
	port int
	p    *pool
}

// poolFor returns the pool of target for the session's database and user,
// and whether it came from the session's cache of the pools it used (a
// cached pool may have been retired since). The cache saves a transaction
// the router-wide lock of Router.pool and the allocation of Addr.
func (c *client) poolFor(target Backend) (*pool, bool) {
	for _, e := range c.pools {
		if e.host == target.Host && e.port == target.Port {
			return e.p, true
		}
	}
	p := c.r.pool(target.Addr(), c.db, c.user)
	if len(c.pools) >= 4 { // a primary and a few standbys
		c.pools = c.pools[1:]
	}
	c.pools = append(c.pools, cachedPool{target.Host, target.Port, p})
	return p, false
}

// pickRead picks the standby for a read by load (view.pickRead); ok is
// false when the read goes to the primary: no standby qualifies, or (on
// the read/write port) the primary has spare capacity the standbys lack.
// The primary is offered only while its pool has a free connection and
// nobody waits for one: a read never queues ahead of a write.
func (c *client) pickRead(v *view, class Class, minLSN uint64) (Backend, bool) {
	r := c.r
	primaryLoad := int64(-1)
	if c.role == ReadWrite && class == ClassRead && r.holdChan() == nil {
		if pb, ok := v.primaryBackend(); ok {
			p, _ := c.poolFor(pb)
			if active := p.active.Load(); p.waiting.Load() == 0 && active < int64(r.settings().PoolSize) {
				primaryLoad = active
			}
		}
	}
	b, toPrimary, ok := v.pickRead(r.settings().MaxLag, minLSN, c, primaryLoad, c.lastRead)
	if ok && !toPrimary {
		c.lastRead = b.Name
	}
	return b, ok && !toPrimary
}

// inFlight is the load of backend b as the session's pool for it counts
// it: transactions running on it plus clients waiting for a connection.
func (c *client) inFlight(b Backend) int64 {
	p, _ := c.poolFor(b)
	return p.active.Load() + p.waiting.Load()
}

// route picks the backend for a batch of the given class. For the
// primary it returns counted in r.toPrimary: the caller subtracts once it
// holds a server connection or gives up.
func (c *client) route(class Class) (Backend, bool, error) {
	r := c.r
	v := r.view.Load()
	if c.role == ReadOnly || (class == ClassRead && !r.settings().DisableLoadBalance) {
		var minLSN uint64
		if c.role == ReadWrite && !r.settings().DisableReadYourWrites {
			minLSN = c.writeLSN.Load()
		}
		if b, ok := c.pickRead(v, class, minLSN); ok {
			if class == ClassRead {
				r.countSelect(b.Name)
			}
			r.stats.ReadsToStandby.Add(1)
			return b, false, nil
		}
	}
	// Counted in toPrimary before the hold check, so that Hold either
	// sees this transaction or this check sees the hold.
	var b Backend
	deadline := time.Now().Add(r.settings().QueryWaitTimeout)
	waitedPrimary := false
	for {
		r.toPrimary.Add(1)
		if ch := r.holdChan(); ch != nil {
			r.toPrimary.Add(-1)
			if err := r.waitResume(ch, deadline); err != nil {
				return Backend{}, false, err
			}
			continue
		}
		var ok bool
		if b, ok = r.view.Load().primaryBackend(); ok {
			break
		}
		r.toPrimary.Add(-1)
		if waitedPrimary || r.settings().PrimaryWait <= 0 {
			return Backend{}, false, &authError{code: "57P03", msg: "no primary available: the cluster has no healthy primary right now"}
		}
		r.waitPrimary()
		waitedPrimary = true
	}
	if class == ClassRead {
		r.countSelect(b.Name)
		r.stats.ReadsToPrimary.Add(1)
	} else {
		r.stats.WritesToPrimary.Add(1)
	}
	return b, true, nil
}

// forwardAttached sends msg to the attached server connection; it reports
// false when none is attached.
func (c *client) forwardAttached(msg pgproto3.FrontendMessage) (bool, error) {
	c.mu.Lock()
	sc := c.sc
	if sc == nil {
		c.mu.Unlock()
		return false, nil
	}
	msg = c.refuseListenAttached(msg)
	c.enqueue(sc, msg)
	c.mu.Unlock()
	if flushPoint(msg) || len(c.out) > 32<<10 {
		return true, c.flushAndRelay(sc)
	}
	switch msg.(type) {
	case *pgproto3.CopyDone, *pgproto3.CopyFail:
		return true, c.flushAndRelay(sc)
	}
	return true, nil
}

// inlineWait bounds how long the client goroutine relays a response
// itself. A statement that runs longer is handed to a pump goroutine, so
// that the client goroutine reads the client again and notices a client
// that vanished (cleanup, abandon) while the statement still runs.
const inlineWait = 20 * time.Millisecond

// flushAndRelay writes c.out to sc and makes sure someone relays the
// answers: nothing to do while a reader runs; else the client goroutine
// relays inline when the server will answer everything sent without more
// input from the client (outstanding Sync/Query/FunctionCall, no unsynced
// extended-protocol messages), and a pump goroutine does otherwise or
// when relay hands over. Relaying inline saves a goroutine start and two
// thread wake-ups per transaction, the router's main cost.
func (c *client) flushAndRelay(sc *serverConn) error {
	if err := c.flushServer(sc); err != nil {
		c.mu.Lock()
		pumping := c.pumping
		c.mu.Unlock()
		if !pumping {
			c.serverLost(sc, err) // else the reader sees the failure and reports it
		}
		return err
	}
	c.mu.Lock()
	if c.pumping || c.sc != sc {
		c.mu.Unlock()
		return nil
	}
	c.pumping = true
	if c.watching {
		c.mu.Unlock() // the session's pump relays the answers
		return nil
	}
	inline := c.outstanding > 0 && !c.unsynced && c.txnMode
	var watchDone chan struct{}
	if !c.txnMode {
		c.watching = true
		watchDone = make(chan struct{})
		c.watchDone = watchDone
	}
	c.mu.Unlock()
	if inline && !c.relay(sc, true) {
		return nil
	}
	c.r.wg.Add(1)
	go func() {
		defer c.r.wg.Done()
		c.relay(sc, false)
		if watchDone != nil {
			c.mu.Lock()
			c.watching = false
			c.mu.Unlock()
			close(watchDone)
		}
	}()
	return nil
}

// stopWatching stops the session-mode pump of an idle session (cleanup
// detached sc first, so the pump leaves without reporting anything) and
// waits for it, so that sc has no reader left.
func (c *client) stopWatching(sc *serverConn) {
	c.mu.Lock()
	done := c.watchDone
	c.mu.Unlock()
	if done == nil {
		return
	}
	sc.conn.SetReadDeadline(time.Unix(1, 0))
	<-done
	sc.conn.SetReadDeadline(time.Time{})
}

func (c *client) flushServer(sc *serverConn) error {
	if len(c.out) == 0 {
		return nil
	}
	_, err := sc.conn.Write(c.out)
	if cap(c.out) > 256<<10 {
		c.out = nil
	} else {
		c.out = c.out[:0]
	}
	if err != nil {
		// The pump sees the failure too and reports it to the client.
		sc.close()
		c.mu.Lock()
		mine := c.sc == sc
		c.mu.Unlock()
		if !mine {
			return nil
		}
		return fmt.Errorf("write to server %s: %w", sc.pool.key.addr, err)
	}
	return nil
}

// enqueue appends msg (rewritten for server-side prepared statements in
// transaction mode) to c.out; flushAndRelay sends it. Called with mu held.
func (c *client) enqueue(sc *serverConn, msg pgproto3.FrontendMessage) {
	emit := func(m pgproto3.FrontendMessage) { c.out, _ = m.Encode(c.out) }
	switch m := msg.(type) {
	case *pgproto3.Query:
		c.outstanding++
		c.unsynced = false
		sc.pool.queries.Add(1)
		c.drops = append(c.drops, dropEntry{typ: 'Z'})
		c.noteEffects(sc, m.String)
		emit(m)
	case *pgproto3.Sync:
		c.outstanding++
		c.unsynced = false
		sc.pool.queries.Add(1)
		c.drops = append(c.drops, dropEntry{typ: 'Z'})
		emit(m)
	case *pgproto3.FunctionCall:
		c.outstanding++
		c.drops = append(c.drops, dropEntry{typ: 'Z'})
		emit(m)
	case *pgproto3.Parse:
		c.unsynced = true
		c.noteEffects(sc, m.Query)
		if c.txnMode && m.Name != "" {
			if old := c.stmts[m.Name]; old != nil {
				// PostgreSQL refuses to prepare a name twice (42P05) and
				// skips the rest of the batch. The server says so itself
				// when asked to prepare the existing statement's server
				// name again; relay puts the client's name in its message.
				c.ensurePrepared(sc, old)
				emit(&pgproto3.Parse{Name: old.serverName, Query: m.Query, ParameterOIDs: m.ParameterOIDs})
				c.drops = append(c.drops, dropEntry{typ: '1'})
				if c.dupNames == nil {
					c.dupNames = map[string]string{}
				}
				c.dupNames[old.serverName] = m.Name
				return
			}
			st := c.register(m)
			if sc.prepared[st.serverName] {
				emit(&pgproto3.Close{ObjectType: 'S', Name: st.serverName})
				c.drops = append(c.drops, dropEntry{typ: '3', drop: true})
			}
			p := st.parse
			emit(&p)
			c.drops = append(c.drops, dropEntry{typ: '1', name: st.serverName})
			sc.prepared[st.serverName] = true
			return
		}
		if c.txnMode && m.Name == "" {
			p := *m
			c.lastUnnamed = &p
			c.unnamedHere = true
		}
		c.drops = append(c.drops, dropEntry{typ: '1'})
		emit(m)
	case *pgproto3.Bind:
		c.unsynced = true
		if m.PreparedStatement == "" {
			c.ensureUnnamed()
		}
		if st := c.stmtFor(m.PreparedStatement); st != nil {
			b := *m
			b.PreparedStatement = st.serverName
			if st.changed {
				b.PreparedStatement = changedPlanStmt // fails in its place (shape.go)
			} else {
				c.ensurePrepared(sc, st)
			}
			emit(&b)
			return
		}
		emit(m)
	case *pgproto3.Describe:
		c.unsynced = true
		if m.ObjectType == 'S' {
			if m.Name == "" {
				c.ensureUnnamed()
			}
			st := c.stmtFor(m.Name)
			c.drops = append(c.drops, dropEntry{typ: 't'}, dropEntry{typ: 'T', st: st})
			if st != nil {
				c.ensurePrepared(sc, st)
				emit(&pgproto3.Describe{ObjectType: 'S', Name: st.serverName})
				return
			}
		} else {
			c.drops = append(c.drops, dropEntry{typ: 'T'})
		}
		emit(m)
	case *pgproto3.Close:
		c.unsynced = true
		if c.txnMode && m.ObjectType == 'S' && m.Name != "" {
			// The server-side statement stays cached for other clients;
			// the client's own name does not exist on the server, so the
			// forwarded Close answers CloseComplete in order.
			delete(c.stmts, m.Name)
		}
		c.drops = append(c.drops, dropEntry{typ: '3'})
		emit(m)
	case *pgproto3.CopyData, *pgproto3.CopyDone, *pgproto3.CopyFail:
		emit(m)
	case *pgproto3.Flush:
		emit(m)
	default:
		c.unsynced = true
		emit(m)
	}
}

// noteEffects records on sc (transaction mode) what sql does to the
// server session beyond its transaction (effects.go). Session mode needs
// none of it: the connection is the client's until DISCARD ALL. mu held.
func (c *client) noteEffects(sc *serverConn, sql string) {
	if !c.txnMode {
		return
	}
	e := sessionEffects(sql)
	if e&effDiscard != 0 {
		clear(sc.prepared)
	}
	if e&effSettings != 0 {
		sc.paramsKey = paramsUnknown
	}
	if e&effLeftovers != 0 {
		sc.leftovers = true
	}
}

// discardLeftovers runs DISCARD ALL on sc, idle and detached, when a
// client left session state on it (effLeftovers): the next client must
// not find its temporary tables, prepared statements, held cursors or
// advisory locks. false: sc is not reusable.
func discardLeftovers(sc *serverConn) bool {
	return !sc.leftovers || sc.discardAll() == nil
}

func (c *client) stmtFor(name string) *stmt {
	if !c.txnMode || name == "" {
		return nil
	}
	return c.stmts[name]
}

// register records a client's named Parse and returns it with the server
// name: a hash of the text and parameter types, so clients preparing the
// same statement share it on a server connection.
func (c *client) register(m *pgproto3.Parse) *stmt {
	h := sha256.New()
	h.Write([]byte(m.Query))
	for _, oid := range m.ParameterOIDs {
		fmt.Fprintf(h, ",%d", oid)
	}
	name := "pgha_" + hex.EncodeToString(h.Sum(nil)[:12])
	st := &stmt{serverName: name, class: Classify(m.Query, c.r.settings().writeFuncs)}
	st.parse = pgproto3.Parse{Name: name, Query: m.Query, ParameterOIDs: append([]uint32(nil), m.ParameterOIDs...)}
	c.stmts[m.Name] = st
	return st
}

// ensurePrepared injects a Parse when sc lacks the statement. mu held.
func (c *client) ensurePrepared(sc *serverConn, st *stmt) {
	var injected bool
	if c.out, injected = sc.injectParse(c.out, st); injected {
		c.drops = append(c.drops, dropEntry{typ: '1', drop: true, name: st.serverName})
	}
}

// ensureUnnamed re-parses the client's unnamed statement when this
// attachment has not parsed it (transaction mode). mu held.
func (c *client) ensureUnnamed() {
	if !c.txnMode || c.unnamedHere || c.lastUnnamed == nil {
		return
	}
	c.out, _ = c.lastUnnamed.Encode(c.out)
	c.drops = append(c.drops, dropEntry{typ: '1', drop: true})
	c.unnamedHere = true
}

// popDrop consumes the expected response typ; it reports whether the
// router injected its request. mu held.
func (c *client) popDrop(typ byte) bool {
	if len(c.drops) == 0 || c.drops[0].typ != typ {
		return false
	}
	d := c.drops[0]
	c.drops = c.drops[1:]
	return d.drop
}

// noteShape: msg (RowDescription or NoData) from sc may answer a Describe
// of a statement: sc's plan has that shape, and the first such answer is
// the shape the client was given.
func (c *client) noteShape(sc *serverConn, msg pgproto3.BackendMessage) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.drops) == 0 || c.drops[0].typ != 'T' {
		return // a query's rows
	}
	st := c.drops[0].st
	c.drops = c.drops[1:]
	if st == nil {
		return
	}
	shape := shapeOf(msg)
	noteServerShape(sc, st, shape)
	if st.shape == "" {
		st.shape = shape
	}
}

// popSync consumes the expected responses up to the next ReadyForQuery:
// Parses that never completed (an earlier error skipped them) did not
// prepare anything. mu held.
func (c *client) popSync(sc *serverConn) {
	for len(c.drops) > 0 {
		d := c.drops[0]
		c.drops = c.drops[1:]
		if d.typ == 'Z' {
			return
		}
		if d.typ == '1' && d.name != "" {
			delete(sc.prepared, d.name)
		}
	}
}

// relay relays the server's responses to the client until everything sent
// has been answered; in transaction mode it then returns the connection to
// the pool when the server is outside a transaction. It runs as the pump
// goroutine (inline false) or on the client goroutine (inline true); then
// it reads the server for at most inlineWait and returns true, without
// having released anything, when the rest must be relayed by a pump
// goroutine: the deadline passed, or the server asks for COPY data, which
// only the client goroutine can forward.
func (c *client) relay(sc *serverConn, inline bool) (handoff bool) {
	if inline {
		sc.conn.SetReadDeadline(time.Now().Add(inlineWait))
	}
	// endInline clears the deadline; it must happen before sc can reach
	// another owner (release) or another reader (handoff).
	endInline := func() {
		if inline {
			sc.conn.SetReadDeadline(time.Time{})
			inline = false
		}
	}
	serverFatal := false // the server said why it ends the connection
	for {
		msg, err := sc.fe.Receive()
		if err != nil {
			if inline && errors.Is(err, os.ErrDeadlineExceeded) {
				// Nothing lost: pgproto3 resumes a partly read message.
				endInline()
				return true
			}
			endInline()
			if serverFatal {
				err = nil // the client has the server's own FATAL
			}
			c.serverLost(sc, err)
			return false
		}
		switch m := msg.(type) {
		case *pgproto3.ParseComplete:
			if c.txnMode {
				c.mu.Lock()
				drop := c.popDrop('1')
				c.mu.Unlock()
				if drop {
					continue
				}
			}
		case *pgproto3.CloseComplete:
			if c.txnMode {
				c.mu.Lock()
				drop := c.popDrop('3')
				c.mu.Unlock()
				if drop {
					continue
				}
			}
		case *pgproto3.CopyInResponse, *pgproto3.CopyBothResponse:
			if inline {
				// The client now sends COPY data: the client goroutine
				// must go back to reading it.
				endInline()
				c.send(msg)
				if err := c.flushClient(); err != nil {
					c.clientLost(sc)
					return false
				}
				return true
			}
		case *pgproto3.ParameterDescription:
			if c.txnMode {
				c.mu.Lock()
				c.popDrop('t')
				c.mu.Unlock()
			}
		case *pgproto3.RowDescription, *pgproto3.NoData:
			if c.txnMode {
				c.noteShape(sc, msg)
			}
		case *pgproto3.ErrorResponse:
			serverFatal = endsConnection(m.SeverityUnlocalized) || endsConnection(m.Severity)
			if c.txnMode && isChangedPlanError(m) {
				asChangedPlan(m)
			}
			if m.Code == "42P05" {
				c.mu.Lock()
				for server, name := range c.dupNames {
					if strings.Contains(m.Message, `"`+server+`"`) {
						m.Message = strings.Replace(m.Message, `"`+server+`"`, `"`+name+`"`, 1)
						delete(c.dupNames, server)
					}
				}
				c.mu.Unlock()
			}
		case *pgproto3.ParameterStatus:
			c.mu.Lock()
			sc.settingChanged()
			c.mu.Unlock()
		case *pgproto3.ReadyForQuery:
			c.mu.Lock()
			c.outstanding--
			c.txStatus = m.TxStatus
			if c.txnMode {
				c.popSync(sc)
			}
			done := c.outstanding <= 0 && !c.unsynced
			if done {
				endInline()
			}
			if c.abandoned.Load() {
				if done {
					c.sc = nil
					c.pumping = false
				}
				c.mu.Unlock()
				if done {
					sc.pool.release(sc, false) // also ends abandon's cancel loop
					return false
				}
				continue
			}
			var release bool
			var lsnGen uint64 // read-your-writes: fetch the LSN for this write release
			if done {
				c.pumping = false
				if c.txnMode {
					release, lsnGen = c.releaseIfIdle(sc, m.TxStatus)
				}
			}
			c.send(m) // before unlocking: the client's next batch must not overtake it
			c.mu.Unlock()
			werr := c.flushClient()
			reusable := true
			if lsnGen != 0 {
				// After ReadyForQuery, off the client's latency path: every
				// standby that replayed past the primary's insert position
				// now has this session's writes.
				reusable = c.fetchWriteLSN(sc, lsnGen)
			}
			if release {
				reusable = reusable && discardLeftovers(sc)
				sc.pool.release(sc, reusable)
			}
			if werr != nil && !release && !c.abandoned.Load() {
				c.clientLost(sc)
				return false
			}
			if done && c.txnMode {
				return false
			}
			continue // session mode: watch the idle session
		}
		if c.abandoned.Load() {
			continue // draining for abandon
		}
		c.send(msg)
		if sc.mr.buffered() == 0 || c.bufLen() > 32<<10 {
			if err := c.flushClient(); err != nil && !c.abandoned.Load() {
				endInline()
				c.clientLost(sc)
				return false
			}
		}
	}
}

// applyParams gives sc the session's startup parameters unless it has
// them already (params.go). A value the server refuses (a misspelt
// TimeZone) ends the session, as PostgreSQL refuses such a login; sc goes
// back to the pool if it is still sound.
func (c *client) applyParams(sc *serverConn) error {
	if sc.paramsKey == c.params.key {
		return nil
	}
	sc.conn.SetDeadline(time.Now().Add(c.r.settings().QueryWaitTimeout))
	_, err := sc.simpleQuery(c.params.applySQL())
	sc.conn.SetDeadline(time.Time{})
	if err != nil {
		sc.paramsKey = paramsUnknown
		sc.pool.release(sc, !sc.broken.Load())
		var se *serverError
		if errors.As(err, &se) {
			se.resp.Severity, se.resp.SeverityUnlocalized = "FATAL", "FATAL"
			return fmt.Errorf("startup parameters: %w", err)
		}
		return fmt.Errorf("apply startup parameters on %s: %w", sc.pool.key.addr, err)
	}
	sc.paramsKey = c.params.key
	return nil
}

// fetchWriteLSN asks the primary sc (idle, just released by the session)
// for its WAL insert position and stores it as writeLSN unless a later
// write release of the session superseded gen; on failure writeLSN stays
// MaxUint64 (reads from the primary until the next write) and sc is not
// reusable.
func (c *client) fetchWriteLSN(sc *serverConn, gen uint64) bool {
	s, err := sc.simpleQuery(writeLSNQuery)
	lsn, perr := parseLSN(s)
	ok := err == nil && perr == nil
	if ok {
		c.storeWriteLSN(gen, lsn)
	}
	return ok
}

// serverLost handles a failed server connection: if it is still attached
// the client gets an ErrorResponse (none for a nil err: the client has
// the server's FATAL) and is disconnected; the connection is never pooled
// again.
func (c *client) serverLost(sc *serverConn, err error) {
	c.mu.Lock()
	mine := c.sc == sc
	if mine {
		c.sc = nil
		c.pumping = false
	}
	closing := c.closing
	c.mu.Unlock()
	if !mine {
		return
	}
	sc.pool.release(sc, false)
	if closing {
		return
	}
	c.r.stats.ServerErrors.Add(1)
	if err != nil {
		c.fatal(&authError{code: "08006", msg: fmt.Sprintf("server connection to %s lost (%v); the transaction's outcome is unknown", c.target.Name, err)})
	} else {
		c.flushClient()
	}
	c.conn.Close()
}

// clientLost: the client cannot be written to; drop the attachment.
func (c *client) clientLost(sc *serverConn) {
	c.mu.Lock()
	mine := c.sc == sc
	if mine {
		c.sc = nil
		c.pumping = false
	}
	c.mu.Unlock()
	if mine {
		sc.pool.release(sc, false)
	}
	c.conn.Close()
}

// cleanup runs when the client goroutine ends: an attached server
// connection goes back to the pool only if it is idle and, in session mode,
// DISCARD ALL succeeded; one with work in flight is abandoned; any other
// is closed.
func (c *client) cleanup() {
	c.mu.Lock()
	sc := c.sc
	c.closing = true
	idle := !c.pumping && c.outstanding <= 0 && !c.unsynced && c.txStatus == 'I'
	inFlight := c.pumping
	if inFlight {
		c.abandoned.Store(true) // under mu: the pump decides on it under mu
	} else {
		c.sc = nil
	}
	c.mu.Unlock()
	if sc == nil {
		return
	}
	if inFlight {
		c.abandon(sc)
		return
	}
	if !idle {
		sc.pool.release(sc, false)
		return
	}
	if !c.txnMode {
		c.stopWatching(sc)
		sc.conn.SetDeadline(time.Now().Add(c.r.cfg.ServerConnectTimeout))
		err := sc.discardAll()
		sc.conn.SetDeadline(time.Time{})
		sc.pool.release(sc, err == nil)
		return
	}
	sc.pool.release(sc, discardLeftovers(sc))
}

// Abandoning a server connection: how long the router keeps cancelling
// what a vanished client left running, and how often it re-sends the
// cancel request.
const (
	abandonTimeout = 10 * time.Second
	cancelRetry    = 500 * time.Millisecond
)

// abandon stops the work a vanished client left running on sc. Closing
// the socket is not enough: PostgreSQL notices a closed client only when
// it next reads or writes it, so a long statement would run on, holding
// its locks. And one cancel request is not enough either: if it lands
// before the server has started the statement, it is lost. So the router
// ends a COPY FROM STDIN with CopyFail, closes an unfinished extended
// query with Sync, and sends cancel requests until the pump has seen
// the last ReadyForQuery (and closed sc), or abandonTimeout passes.
func (c *client) abandon(sc *serverConn) {
	c.unregister() // the client is gone: free its MaxClientConn slot now
	c.conn.Close()
	c.mu.Lock()
	if c.sc != sc {
		c.mu.Unlock() // the pump finished meanwhile
		return
	}
	// Outside COPY PostgreSQL ignores a CopyFail.
	c.out, _ = (&pgproto3.CopyFail{Message: "client disconnected"}).Encode(c.out)
	if c.unsynced {
		c.out, _ = (&pgproto3.Sync{}).Encode(c.out)
		c.outstanding++
		c.unsynced = false
		c.drops = append(c.drops, dropEntry{typ: 'Z'})
	}
	c.mu.Unlock()
	c.flushServer(sc)

	deadline := time.NewTimer(abandonTimeout)
	defer deadline.Stop()
	retry := time.NewTicker(cancelRetry)
	defer retry.Stop()
	for {
		if err := sc.cancel(); err != nil {
			c.r.log.Debug("cancel for a vanished client", "backend", sc.pool.key.addr, "err", err)
		}
		select {
		case <-sc.closed:
			return
		case <-c.r.ctx.Done():
			sc.close()
			return
		case <-deadline.C:
			c.r.log.Warn("closing a server connection a vanished client left busy: cancel did not end it", "backend", sc.pool.key.addr, "after", abandonTimeout)
			sc.close() // the pump fails and releases it
			return
		case <-retry.C:
		}
	}
}

func (c *client) send(msg pgproto3.BackendMessage) error {
	c.wmu.Lock()
	c.wbuf, _ = msg.Encode(c.wbuf)
	c.wmu.Unlock()
	return nil
}

func (c *client) bufLen() int {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return len(c.wbuf)
}

func (c *client) flushClient() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if len(c.wbuf) == 0 {
		return nil
	}
	_, err := c.conn.Write(c.wbuf)
	if cap(c.wbuf) > 256<<10 {
		c.wbuf = nil
	} else {
		c.wbuf = c.wbuf[:0]
	}
	return err
}

func (c *client) sendFlush(msg pgproto3.BackendMessage) error {
	c.send(msg)
	return c.flushClient()
}

// fatal sends err to the client as a FATAL ErrorResponse (a server's
// ErrorResponse as it came).
func (c *client) fatal(err error) {
	var resp pgproto3.ErrorResponse
	var ae *authError
	var se *serverError
	switch {
	case errors.As(err, &se):
		resp = se.resp
	case errors.As(err, &ae):
		resp = pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: ae.code, Message: ae.msg, Detail: ae.detail}
	default:
		resp = pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "08006", Message: err.Error()}
	}
	c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	c.sendFlush(&resp)
}

func parseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("parse LSN %q", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("parse LSN %q: %w", s, err)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("parse LSN %q: %w", s, err)
	}
	return h<<32 | l, nil
}

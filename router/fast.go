package router

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgha/pgha/router/poller"
	"golang.org/x/sys/unix"
)

// The fast path serves the commonest traffic of a pooled session, simple
// Queries and runs of prepared statements (Bind, Describe, Execute, Sync:
// libpq's PQsendQueryPrepared, pgx's statement cache), one batch at a
// time, inside transactions too, on the poller goroutine, as PgBouncer's
// event loop does: per batch one epoll wake-up, a read and a write on each
// side, no goroutine switch (see package poller for why that matters).
// Everything else stays on the general path, the client goroutine
// (client.loop), which the fast path hands the session back to whenever
// it meets something it does not serve: another message type (Parse,
// Close, COPY data), a pipelined batch, an admin command, DISCARD, a
// switchover hold, no primary, a pool with no idle connection that would
// need a dial, COPY, a message too large for its buffer. Handing back
// loses nothing: unserved client bytes stay in the client's msgReader,
// unserved server bytes in the server connection's, unsent client bytes
// move to the client's write buffer, and a query in flight goes on under a
// pump goroutine (relay).
//
// State: the client goroutine gives the session to the fast path
// (enterFast) only with the session idle, and ends; from then until the
// hand-back, which starts a new client goroutine (resume), every field of
// the session is used by the poller goroutine alone.
type fastPath struct {
	c  *client
	cc *poller.Conn // the client's socket

	// The attached server connection: a batch in flight (inFlight), or
	// a transaction open between batches.
	sc       *serverConn
	scc      *poller.Conn
	inFlight bool
	status   byte // ReadyForQuery's status once seen, else 0

	// Waiting in a pool's queue for a connection (the query stays unread
	// in the client's msgReader meanwhile).
	waitPool      *pool
	waitTarget    Backend
	waitToStandby bool
	waitClass     Class
	waitStart     time.Time
	waitTimer     *time.Timer
	granted       bool // the pool's turn came (set under the pool's mu)
	timedOut      bool // waited fastPoolWait: the general path waits the rest

	// injected: the Parses the fast path put before the client's batch
	// (the server connection lacked the statement), in order; their
	// ParseCompletes are not the client's.
	injected []string
	wbuf     []byte // the batch as rewritten for the server

	out           []byte // bytes for the client its socket did not take yet
	clientSent    bool   // the client's socket turned readable while a query ran
	serverHup     bool   // the attached server's socket reported its end: read up to it
	serverFatal   bool   // the last ErrorResponse relayed was the server's FATAL
	handedBack    bool   // since the last enterFast
	serverPending bool   // the server may have more while out is full
}

// fastResult is a hand-back: lostSC is a server connection that failed
// under the fast path, with why (lost; nil after the server's FATAL), for
// the resumed goroutine to report (serverLost).
type fastResult struct {
	lost   error
	lostSC *serverConn
}

// fastPoolWait: a fast-path session waits this long in a pool's queue, then
// goes to the general path, which waits up to QueryWaitTimeout and reports
// query_wait_timeout.
const fastPoolWait = 250 * time.Millisecond

// fastEligible: the session can enter the fast path now.
func (c *client) fastEligible() bool {
	if c.fast == nil || !c.fastOK || len(c.pending) > 0 || c.mr.buffered() > 0 || !c.mr.atBoundary() {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sc == nil && !c.pumping
}

// errOnFastPath: the loop gave the session to the fast path (see run).
var errOnFastPath = errors.New("the session went to the fast path")

// enterFast gives the idle session to the fast path; the caller's
// goroutine must then leave it alone (return from run).
func (c *client) enterFast() {
	c.fast.handedBack = false
	if c.dec != nil { // none after a login on the event loop
		c.dec.put()
		c.dec = nil
	}
	c.mr.releaseIfEmpty()
	c.fast.cc.SetHandler(c.fast)
	c.fast.cc.Kick() // what the client sent before SetHandler
}

// enterFastOnLoop is enterFast for a login finished on the event loop.
// When its last read emptied the socket, what the client sends next
// comes with an event of its own, so only bytes already buffered (a
// query sent behind the login) need a Kick, the loop's extra turn; when
// unread is set the socket may hold more, and it is read at once too.
func (c *client) enterFastOnLoop(unread bool) {
	c.fast.handedBack = false
	pending := unread || c.mr.buffered() > 0
	c.mr.releaseIfEmpty()
	c.fast.cc.SetHandler(c.fast)
	if pending {
		c.fast.cc.Kick()
	}
}

// resume carries the session on after a hand-back, on a goroutine of its
// own (handBack starts it).
func (c *client) resume(res fastResult) {
	if res.lostSC != nil {
		c.serverLost(res.lostSC, res.lost)
		c.end(res.lost)
		return
	}
	if err := c.flushClient(); err != nil { // what the fast path could not send
		c.end(err)
		return
	}
	c.run(true)
}

// Ready implements poller.Handler.
func (f *fastPath) Ready(conn *poller.Conn, ev uint32) {
	switch {
	case conn == f.cc && f.waitPool != nil:
		f.poolTurn(ev)
	case conn == f.cc && !f.inFlight:
		// Idle, or idle in a transaction.
		if ev&hangup != 0 {
			// The client hung up, maybe right behind a last query: no
			// later event would tell once that query runs. The general
			// path serves what it sent, meets the end and cleans up;
			// a Terminate alone ends the session here.
			if !f.terminated() {
				f.handBack(fastResult{})
			}
			return
		}
		if ev&unix.EPOLLOUT != 0 && len(f.out) > 0 {
			f.flushOut() // notices the server sent meanwhile
			if f.handedBack {
				return // the client went away
			}
		}
		// A kick (enterFast) reads to the end: what the socket reported
		// before the handler was set, a hang-up too, is no event here.
		f.readClient(ev&poller.EvKick != 0)
	case conn == f.cc:
		// A query runs. The client hung up or was closed: the general
		// path finds out and abandons the query. The client sent more:
		// that waits in the socket until the query is answered. A kick
		// now is a stale one (a pool's turn or timer).
		if ev&hangup != 0 || isClosed(f.cc) {
			f.handBackInFlight(nil)
			return
		}
		if ev&unix.EPOLLIN != 0 {
			// Edge-triggered: no second event for these bytes.
			f.clientSent = true
		}
		if ev&unix.EPOLLOUT != 0 && len(f.out) > 0 {
			f.flushOut()
		}
	case conn == f.scc:
		if ev&hangup != 0 {
			f.serverHup = true
		}
		f.readServer()
	}
}

// readClient reads the idle client (drain: up to EAGAIN or the end) and
// serves what it sent.
func (f *fastPath) readClient(drain bool) {
	c := f.c
	mr := c.mr
	f.clientSent = false
	if !mr.atBoundary() {
		f.handBack(fastResult{})
		return
	}
	for {
		sp := mr.spare()
		if len(sp) == 0 {
			break
		}
		n, err := f.cc.TryRead(sp)
		if errors.Is(err, poller.ErrWouldBlock) {
			break
		}
		if err != nil {
			f.handBack(fastResult{}) // Receive meets the EOF or error again
			return
		}
		mr.fill(n)
		if n < len(sp) && !drain {
			break
		}
	}
	if mr.buffered() > 0 {
		f.startQuery()
		return
	}
	mr.releaseIfEmpty() // idle: no buffer held meanwhile
}

// startQuery serves the buffered client bytes if they are one whole
// Query or one extended-protocol batch of prepared statements, else hands
// the session back. Inside a transaction the batch goes to the attached
// server connection; else it is routed as client.route does, but without
// ever waiting: a switchover hold or a missing primary hand back.
func (f *fastPath) startQuery() {
	c := f.c
	r := c.r
	buf := c.mr.peek()
	var class Class
	switch {
	case f.sc == nil && isTerminate(buf):
		f.terminate()
		return
	case len(buf) >= 6 && buf[0] == 'Q' && int(binary.BigEndian.Uint32(buf[1:5]))+1 == len(buf) && buf[len(buf)-1] == 0:
		sql := string(buf[5 : len(buf)-1])
		class = Classify(sql, r.settings().writeFuncs)
		if (f.sc == nil && isShow(sql)) || (class != ClassRead && sessionEffects(sql) != 0) {
			// Admin commands, and statements with effects on the
			// session the general path keeps track of (effects.go):
			// DISCARD, SET, LISTEN, CREATE TEMP, ...
			f.handBack(fastResult{})
			return
		}
	default:
		var ok bool
		if class, ok = c.extendedBatch(buf); !ok {
			f.handBack(fastResult{})
			return
		}
	}
	if f.sc != nil {
		if c.shapesToCheck(f.sc, buf, false) {
			f.handBack(fastResult{}) // a changed statement's Bind must fail: the general path's enqueue
			return
		}
		f.send(buf)
		return
	}
	v := r.view.Load()
	var target Backend
	ok := false
	if c.role == ReadOnly || (class == ClassRead && !r.settings().DisableLoadBalance) {
		var minLSN uint64
		if c.role == ReadWrite && !r.settings().DisableReadYourWrites {
			minLSN = c.writeLSN.Load()
		}
		target, ok = c.pickRead(v, class, minLSN)
	}
	toStandby := ok
	if !ok {
		// Counted before the hold check (see Router.toPrimary); acquire
		// and poolTurn subtract.
		r.toPrimary.Add(1)
		if r.holdChan() != nil {
			r.toPrimary.Add(-1)
			f.handBack(fastResult{})
			return
		}
		if target, ok = v.primaryBackend(); !ok {
			r.toPrimary.Add(-1)
			f.handBack(fastResult{})
			return
		}
	}
	p, _ := c.poolFor(target)
	f.acquire(p, target, toStandby, class, false)
}

// isTerminate: buf is one Terminate message and nothing else.
func isTerminate(buf []byte) bool {
	return len(buf) == 5 && buf[0] == 'X' && binary.BigEndian.Uint32(buf[1:5]) == 4
}

// terminated reads what a client that hung up sent last and ends the
// session (terminate) if that was a Terminate alone, outside a
// transaction; else what it read stays buffered for the general path.
func (f *fastPath) terminated() bool {
	mr := f.c.mr
	if f.sc != nil || !mr.atBoundary() {
		return false
	}
	// To the end the client reported (its EOF is the error ignored here).
	readAvailable(f.cc, mr, true, func() bool { return true })
	if !isTerminate(mr.peek()) {
		return false
	}
	f.terminate()
	return true
}

// terminate ends a session whose client said goodbye (Terminate) outside
// a transaction, here on the event loop: a client that connects for each
// transaction costs no goroutine for its last message.
func (f *fastPath) terminate() {
	c := f.c
	c.mr.consume(5)
	f.cc.SetHandler(nil)
	f.out = f.out[:0]
	c.end(nil)
}

// acquire gets a connection of p for the buffered Query and sends it, or
// queues the session (first: its turn came), or hands the session back.
func (f *fastPath) acquire(p *pool, target Backend, toStandby bool, class Class, first bool) {
	sc, wait := p.tryGet(f, first)
	if !toStandby && !wait {
		f.c.r.toPrimary.Add(-1) // a connection counted in active, or none
	}
	if wait {
		f.waitPool = p
		f.waitTarget, f.waitToStandby, f.waitClass = target, toStandby, class
		f.waitStart = time.Now()
		f.waitTimer = time.AfterFunc(fastPoolWait, func() {
			p.mu.Lock()
			f.timedOut = true
			p.mu.Unlock()
			f.cc.Kick()
		})
		return
	}
	if sc == nil {
		f.handBack(fastResult{}) // the pool must dial, or was retired
		return
	}
	f.attach(sc, target, toStandby, class)
}

// attach attaches sc to the session, counted as client.route counts a
// transaction, and sends it the client's batch.
func (f *fastPath) attach(sc *serverConn, target Backend, toStandby bool, class Class) {
	c := f.c
	r := c.r
	scc, ok := sc.conn.(*poller.Conn)
	if !ok || sc.mr.buffered() > 0 || !sc.mr.atBoundary() || sc.paramsKey != c.params.key || c.shapesToCheck(sc, c.mr.peek(), true) {
		// Not one of ours, or the server said something while idle, or
		// it needs the session's startup parameters (applyParams, on the
		// general path: a round trip), or a statement's shape must be
		// checked there first (checkShapes, a round trip).
		sc.pool.release(sc, ok && sc.mr.buffered() == 0)
		f.handBack(fastResult{})
		return
	}
	switch {
	case class == ClassRead:
		r.countSelect(target.Name)
		if toStandby {
			r.stats.ReadsToStandby.Add(1)
		} else {
			r.stats.ReadsToPrimary.Add(1)
		}
	case toStandby:
		r.stats.ReadsToStandby.Add(1) // the read-only port: PostgreSQL refuses the write
	default:
		r.stats.WritesToPrimary.Add(1)
	}
	c.mu.Lock()
	c.sc = sc // for cancel requests
	c.target = target
	c.wrote = !toStandby && class != ClassRead
	c.txStatus = 'I'
	c.mu.Unlock()
	f.sc, f.scc, f.serverHup, f.serverFatal = sc, scc, false, false
	scc.SetHandler(f)
	f.send(c.mr.peek())
}

// send sends the client's batch (buf, still in the client's msgReader) on
// the attached server connection.
func (f *fastPath) send(buf []byte) {
	c := f.c
	sc := f.sc
	f.inFlight, f.status = true, 0
	f.injected = f.injected[:0]
	sc.pool.queries.Add(1)
	send := buf
	if buf[0] != 'Q' {
		send = f.rewriteExtended(sc, buf)
	}
	c.mr.consume(len(buf)) // buf stays intact until the next read into it
	n, err := f.scc.TryWrite(send)
	if errors.Is(err, poller.ErrWouldBlock) {
		n, err = 0, nil
	}
	if err != nil {
		f.lost(fmt.Errorf("write to server %s: %w", sc.pool.key.addr, err))
		return
	}
	if n < len(send) {
		f.handBackInFlight(append([]byte(nil), send[n:]...))
	}
}

// extendedBatch: buf is exactly one extended-protocol batch that only
// runs named statements the session prepared: Bind, Describe and Execute,
// then Sync; class is ClassWrite unless every statement is a read. A
// Parse, Close, Flush or unnamed statement is for the general path, which
// keeps the bookkeeping of those (enqueue).
func (c *client) extendedBatch(buf []byte) (class Class, ok bool) {
	class = ClassRead
	binds := 0
	known := func(name []byte) bool {
		if len(name) == 0 {
			return false
		}
		st := c.stmts[string(name)]
		if st != nil && st.class != ClassRead {
			class = ClassWrite
		}
		return st != nil
	}
	for i := 0; len(buf)-i >= 5; {
		l := int(binary.BigEndian.Uint32(buf[i+1 : i+5]))
		if l < 4 || len(buf)-i < 1+l {
			return 0, false
		}
		body := buf[i+5 : i+1+l]
		switch buf[i] {
		case 'B':
			_, name, _, ok := splitBind(body)
			if !ok || !known(name) {
				return 0, false
			}
			binds++
		case 'D':
			if len(body) < 2 || (body[0] != 'P' && body[0] != 'S') || body[len(body)-1] != 0 {
				return 0, false
			}
			if body[0] == 'S' && !known(body[1:len(body)-1]) {
				return 0, false
			}
		case 'E':
			if bytes.IndexByte(body, 0) != len(body)-5 {
				return 0, false // let pgproto3 refuse it
			}
		case 'S':
			return class, l == 4 && i+1+l == len(buf) && binds > 0
		default:
			return 0, false
		}
		i += 1 + l
	}
	return 0, false
}

// shapesToCheck: the batch (one extendedBatch accepted) binds a statement
// whose shape changed, or (outsideTx: checkShapes runs only there) one
// whose shape sc must be asked for (needsShapeCheck); the general path
// serves it.
func (c *client) shapesToCheck(sc *serverConn, buf []byte, outsideTx bool) bool {
	if buf[0] == 'Q' {
		return false
	}
	for i := 0; len(buf)-i >= 5; {
		l := int(binary.BigEndian.Uint32(buf[i+1 : i+5]))
		msg := buf[i : i+1+l]
		i += 1 + l
		var st *stmt
		switch {
		case msg[0] == 'B':
			_, name, _, _ := splitBind(msg[5:])
			st = c.stmts[string(name)]
		case msg[0] == 'D' && msg[5] == 'S':
			st = c.stmts[string(msg[6:len(msg)-1])]
		}
		if st != nil && (st.changed || (outsideTx && needsShapeCheck(sc, st))) {
			return true
		}
	}
	return false
}

// fastShaped: a batch the general path served is one the fast path would
// serve next time: a lone Query, or named statements only (the Parses are
// then cached, and the next runs are Bind, Describe, Execute, Sync).
// Entering the fast path for a session that keeps handing back would cost
// a hand-over per transaction.
func fastShaped(batch []pgproto3.FrontendMessage) bool {
	if len(batch) == 1 {
		if _, ok := batch[0].(*pgproto3.Query); ok {
			return true
		}
	}
	for _, m := range batch {
		switch m := m.(type) {
		case *pgproto3.Parse:
			if m.Name == "" {
				return false
			}
		case *pgproto3.Bind:
			if m.PreparedStatement == "" {
				return false
			}
		case *pgproto3.Describe, *pgproto3.Execute, *pgproto3.Sync:
		default:
			return false
		}
	}
	return true
}

// splitBind splits a Bind body at its statement name: the portal name
// with its NUL, the statement name, and what follows the name's NUL.
func splitBind(body []byte) (portal, name, rest []byte, ok bool) {
	p := bytes.IndexByte(body, 0)
	if p < 0 {
		return nil, nil, nil, false
	}
	n := bytes.IndexByte(body[p+1:], 0)
	if n < 0 {
		return nil, nil, nil, false
	}
	return body[:p+1], body[p+1 : p+1+n], body[p+1+n+1:], true
}

// rewriteExtended returns the batch extendedBatch accepted as sc must get
// it: each statement under its server name (register), and a Parse first
// where sc has not prepared it yet, as client.enqueue does.
func (f *fastPath) rewriteExtended(sc *serverConn, buf []byte) []byte {
	c := f.c
	out := f.wbuf[:0]
	prepare := func(st *stmt) {
		var injected bool
		if out, injected = sc.injectParse(out, st); injected {
			f.injected = append(f.injected, st.serverName)
		}
	}
	for i := 0; i < len(buf); {
		l := int(binary.BigEndian.Uint32(buf[i+1 : i+5]))
		msg := buf[i : i+1+l]
		i += 1 + l
		var st *stmt
		var head, rest []byte // around the statement name
		switch {
		case msg[0] == 'B':
			portal, name, after, _ := splitBind(msg[5:])
			st, head, rest = c.stmts[string(name)], portal, after
		case msg[0] == 'D' && msg[5] == 'S':
			st, head, rest = c.stmts[string(msg[6:len(msg)-1])], msg[5:6], nil
		default:
			out = append(out, msg...)
			continue
		}
		prepare(st)
		start := len(out)
		out = append(out, msg[0], 0, 0, 0, 0)
		out = append(out, head...)
		out = append(out, st.serverName...)
		out = append(out, 0)
		out = append(out, rest...)
		binary.BigEndian.PutUint32(out[start+1:], uint32(len(out)-start-1))
	}
	f.wbuf = out
	return out
}

// poolTurn: the session waits in a pool's queue, and its client socket
// had an event: its turn came (wakeOne), the wait ran out, the client hung
// up or was closed; anything else (the client sent more) changes nothing.
func (f *fastPath) poolTurn(ev uint32) {
	p := f.waitPool
	gone := isClosed(f.cc) || ev&hangup != 0
	if ev&unix.EPOLLIN != 0 {
		f.clientSent = true // read once the query is answered
	}
	p.mu.Lock()
	granted, timedOut := f.granted, f.timedOut
	if !granted && !timedOut && !gone {
		p.mu.Unlock()
		return
	}
	if !granted {
		p.dropWaiter(f)
	}
	p.mu.Unlock()
	f.waitTimer.Stop()
	f.waitPool = nil
	p.waiting.Add(-1)
	if granted {
		p.countWait(time.Since(f.waitStart))
	}
	if granted && !gone {
		// The same pool: the turn is for it (routing again could pick
		// another standby and leave this pool's queue stuck).
		f.acquire(p, f.waitTarget, f.waitToStandby, f.waitClass, true) // attaches, queues again, or hands back
		if f.sc == nil && f.waitPool == nil {
			p.mu.Lock()
			p.wakeOne() // the turn may be unused: pass it on
			p.mu.Unlock()
		}
		return
	}
	if granted {
		p.mu.Lock()
		p.wakeOne()
		p.mu.Unlock()
	}
	if !f.waitToStandby {
		f.c.r.toPrimary.Add(-1) // the general path routes it again
	}
	f.handBack(fastResult{})
}

// readServer relays the server's answer; ReadyForQuery ends it.
func (f *fastPath) readServer() {
	if f.sc == nil {
		return // an event from before the release
	}
	if len(f.out) > 0 {
		f.serverPending = true // the client must take what it has first
		return
	}
	switch err := readAvailable(f.scc, f.sc.mr, f.serverHup, f.relayBuffered); {
	case errors.Is(err, errBufferFull):
		f.handBackInFlight(nil) // one message larger than the buffer: the general path streams it
	case err != nil:
		f.lost(err)
	}
}

// errBufferFull: readAvailable found no room left in the msgReader.
var errBufferFull = errors.New("message larger than the read buffer")

// readAvailable reads what conn's socket holds into mr, calling parse
// after each read, until the socket is empty (EAGAIN, or a short read when
// no end was reported: hup) or parse returns false (it finished, or gave
// the connection away). The serving event loop's one read loop, for the
// fast path and lsnFetch.
func readAvailable(conn *poller.Conn, mr *msgReader, hup bool, parse func() bool) error {
	for {
		sp := mr.spare()
		if len(sp) == 0 {
			return errBufferFull
		}
		n, err := conn.TryRead(sp)
		if errors.Is(err, poller.ErrWouldBlock) {
			return nil
		}
		if err != nil {
			return err
		}
		mr.fill(n)
		if !parse() {
			return nil
		}
		if n < len(sp) && !hup {
			return nil // a short read emptied the socket (when no end follows)
		}
	}
}

// relayBuffered passes the whole messages in the server connection's
// buffer on to the client; false when the exchange ended or was handed
// back.
func (f *fastPath) relayBuffered() bool {
	mr := f.sc.mr
	buf := mr.peek()
	i, from := 0, 0 // buf[from:i] is still to send
	done := false
	for len(buf)-i >= 5 {
		l := int(binary.BigEndian.Uint32(buf[i+1 : i+5]))
		if l < 4 || l > f.c.r.cfg.MaxMessageSize+4 {
			// Let pgproto3 refuse it and the general path end the session.
			f.sendOut(buf[from:i])
			mr.consume(i)
			f.handBackInFlight(nil)
			return false
		}
		if len(buf)-i < 1+l {
			break
		}
		switch buf[i] {
		case 'G', 'W':
			// The server wants COPY data: only the general path reads the
			// client during a query.
			f.sendOut(buf[from:i])
			mr.consume(i)
			f.handBackInFlight(nil)
			return false
		case '1':
			if len(f.injected) > 0 {
				// An injected Parse completed: not the client's answer.
				f.injected = f.injected[1:]
				if !f.sendOut(buf[from:i]) {
					mr.consume(i)
					return false
				}
				from = i + 1 + l
			}
		case 'S':
			f.sc.settingChanged()
		case 'E':
			f.serverFatal = endsConnection(errorSeverity(buf[i+5 : i+1+l]))
		case 'Z':
			if l == 5 {
				f.status = buf[i+5]
			}
			if f.status == 'I' {
				// Counted before the client can see the end of it.
				f.c.r.stats.FastPath.Add(1)
			}
			// Injected Parses an error skipped prepared nothing.
			for _, name := range f.injected {
				delete(f.sc.prepared, name)
			}
			f.injected = f.injected[:0]
			done = true
		}
		i += 1 + l
		if done {
			break
		}
	}
	if i == 0 {
		return true
	}
	ok := f.sendOut(buf[from:i])
	mr.consume(i)
	if !ok {
		return false
	}
	if done && len(f.out) == 0 {
		f.finish()
		return false
	}
	return !done
}

// sendOut writes b to the client, keeping what its socket does not take.
// false: the client is gone (the session was handed back).
func (f *fastPath) sendOut(b []byte) bool {
	if len(b) == 0 {
		return true
	}
	if len(f.out) > 0 {
		f.out = append(f.out, b...)
		return true
	}
	n, err := f.cc.TryWrite(b)
	if errors.Is(err, poller.ErrWouldBlock) {
		n, err = 0, nil
	}
	if err != nil {
		f.clientGone()
		return false
	}
	if n < len(b) {
		f.out = append(f.out, b[n:]...)
	}
	return true
}

// flushOut: the client's socket has room again.
func (f *fastPath) flushOut() {
	n, err := f.cc.TryWrite(f.out)
	if errors.Is(err, poller.ErrWouldBlock) {
		return
	}
	if err != nil {
		f.clientGone()
		return
	}
	f.out = f.out[:copy(f.out, f.out[n:])]
	if len(f.out) > 0 {
		return
	}
	if f.inFlight && f.status != 0 {
		f.finish()
		return
	}
	if f.serverPending {
		f.serverPending = false
		f.readServer()
	}
}

// finish: ReadyForQuery reached the client. Inside a transaction sc
// stays attached for the next batch; else it goes back to its pool, after
// the read-your-writes position is fetched for a write (fetchLSN).
func (f *fastPath) finish() {
	c := f.c
	sc := f.sc
	f.inFlight = false
	c.mu.Lock()
	c.txStatus = f.status
	release, lsnGen := c.releaseIfIdle(sc, f.status)
	c.mu.Unlock()
	if !release {
		f.next()
		return
	}
	scc := f.scc
	scc.SetHandler(nil)
	f.sc, f.scc = nil, nil
	if lsnGen != 0 {
		fetchLSN(c, sc, scc, lsnGen) // releases sc
	} else {
		sc.pool.release(sc, sc.mr.buffered() == 0)
	}
	f.next()
}

// next serves what the client sent while its last batch ran.
func (f *fastPath) next() {
	if f.c.mr.buffered() > 0 {
		f.startQuery()
		return
	}
	if f.clientSent {
		f.clientSent = false
		f.readClient(false)
		return
	}
	f.c.mr.releaseIfEmpty() // idle: no buffer held meanwhile
}

// lost: the server connection failed; the goroutine reports it to the
// client (serverLost; nothing more after the server's own FATAL) and ends
// the session.
func (f *fastPath) lost(err error) {
	sc := f.sc
	if f.serverFatal {
		err = nil
	}
	f.scc.SetHandler(nil)
	f.sc, f.scc, f.inFlight = nil, nil, false
	f.handBack(fastResult{lost: err, lostSC: sc})
}

// clientGone: the client's socket failed while a query ran; as
// client.clientLost.
func (f *fastPath) clientGone() {
	c := f.c
	sc := f.sc
	f.scc.SetHandler(nil)
	f.sc, f.scc, f.inFlight = nil, nil, false
	f.out = f.out[:0]
	c.mu.Lock()
	c.sc = nil
	c.mu.Unlock()
	sc.pool.release(sc, false)
	f.cc.SetHandler(nil)
	f.cc.Close()
	f.handBack(fastResult{})
}

// handBackInFlight hands back a session whose query is still running:
// a pump goroutine relays the rest (after writing rest, the part of the
// query the server's socket did not take), as if the general path had
// sent it.
func (f *fastPath) handBackInFlight(rest []byte) {
	c := f.c
	sc := f.sc
	f.scc.SetHandler(nil)
	f.sc, f.scc, f.inFlight = nil, nil, false
	f.moveOut()
	c.mu.Lock()
	c.outstanding, c.unsynced, c.pumping = 1, false, true
	c.drops = c.drops[:0]
	for _, name := range f.injected {
		c.drops = append(c.drops, dropEntry{typ: '1', drop: true, name: name})
	}
	c.drops = append(c.drops, dropEntry{typ: 'Z'})
	c.mu.Unlock()
	f.injected = f.injected[:0]
	c.r.wg.Add(1)
	go func() {
		defer c.r.wg.Done()
		if len(rest) > 0 {
			if _, err := sc.conn.Write(rest); err != nil {
				sc.close() // the relay fails and reports it
			}
		}
		c.relay(sc, false)
	}()
	f.handBack(fastResult{})
}

// moveOut gives the bytes the client's socket did not take to the general
// path's write buffer, ahead of anything it sends.
func (f *fastPath) moveOut() {
	if len(f.out) == 0 {
		return
	}
	c := f.c
	c.wmu.Lock()
	c.wbuf = append(append([]byte(nil), f.out...), c.wbuf...)
	c.wmu.Unlock()
	f.out = f.out[:0]
}

// handBack returns the session to a new client goroutine.
func (f *fastPath) handBack(res fastResult) {
	if f.sc != nil {
		// Idle in a transaction: the general path carries on with the
		// server connection attached (c.sc), nothing in flight.
		f.scc.SetHandler(nil)
		f.sc, f.scc = nil, nil
		c := f.c
		c.mu.Lock()
		c.outstanding, c.pumping, c.unsynced = 0, false, false
		c.drops = c.drops[:0]
		c.mu.Unlock()
	}
	f.handedBack = true
	f.c.r.stats.FastHandBacks.Add(1)
	f.cc.SetHandler(nil)
	f.moveOut()
	f.serverPending = false
	go f.c.resume(res)
}

// hangup: the events that report a socket's end. Edge-triggered, they
// come once, often with the last data: a reader that stops at a short
// read must remember them.
const hangup = unix.EPOLLRDHUP | unix.EPOLLHUP | unix.EPOLLERR

func isClosed(c *poller.Conn) bool {
	select {
	case <-c.Closed():
		return true
	default:
		return false
	}
}

// isShow: sql starts with SHOW, which may be an admin command (admin.go).
func isShow(sql string) bool {
	for i := 0; i < len(sql); i++ {
		switch sql[i] {
		case ' ', '\t', '\n', '\r', '\f', '\v':
			continue
		}
		return len(sql)-i >= 4 && eqFold(sql[i:i+4], "show")
	}
	return false
}

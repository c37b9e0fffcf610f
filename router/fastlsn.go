package router

import (
	"encoding/binary"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgha/pgha/router/poller"
)

// lsnFetch is read-your-writes' question after a write transaction the fast
// path served: the primary connection that ran it is asked for its WAL
// insert position, on the poller goroutine, and goes back to its pool with
// the answer. client.fetchWriteLSN asks the same from a goroutine; here it
// costs one write and one read instead of a goroutine start and two
// wake-ups, a third of the router's CPU in a pgbench write transaction.
// The session goes on meanwhile: its writeLSN is MaxUint64 until the
// answer, so its reads go to the primary.
type lsnFetch struct {
	c      *client
	sc     *serverConn
	scc    *poller.Conn
	gen    uint64 // the session's lsnGen this answer is for
	lsn    uint64
	gotLSN bool
	failed bool // an ErrorResponse: the answer is not to be trusted
	hup    bool // the socket reported its end: read up to it
}

var lsnQuery, _ = (&pgproto3.Query{String: writeLSNQuery}).Encode(nil)

// fetchLSN starts the question on sc, which the session has just left.
func fetchLSN(c *client, sc *serverConn, scc *poller.Conn, gen uint64) {
	l := &lsnFetch{c: c, sc: sc, scc: scc, gen: gen}
	scc.SetHandler(l)
	n, err := scc.TryWrite(lsnQuery)
	if err != nil || n < len(lsnQuery) {
		// Gone, or a socket with no room for 40 bytes: not worth waiting
		// for; the connection, in an unknown state, is closed.
		l.done(false)
	}
}

// Ready implements poller.Handler: read the answer up to ReadyForQuery.
func (l *lsnFetch) Ready(_ *poller.Conn, ev uint32) {
	if ev&hangup != 0 {
		l.hup = true
	}
	// A read error, or an answer larger than the buffer, is no LSN.
	if err := readAvailable(l.scc, l.sc.mr, l.hup, l.parse); err != nil {
		l.done(false)
	}
}

// parse consumes the whole messages buffered; false once it has finished
// (done was called).
func (l *lsnFetch) parse() bool {
	mr := l.sc.mr
	buf := mr.peek()
	i := 0
	for len(buf)-i >= 5 {
		size := int(binary.BigEndian.Uint32(buf[i+1 : i+5]))
		if size < 4 {
			l.done(false)
			return false
		}
		if len(buf)-i < 1+size {
			break
		}
		body := buf[i+5 : i+1+size]
		switch buf[i] {
		case 'D': // int16 columns, then int32 length and the text
			if !l.gotLSN && len(body) >= 6 {
				vlen := int(int32(binary.BigEndian.Uint32(body[2:6])))
				if vlen >= 0 && 6+vlen <= len(body) {
					lsn, err := parseLSN(string(body[6 : 6+vlen]))
					l.lsn, l.gotLSN = lsn, err == nil
				}
			}
		case 'E':
			l.failed = true
		case 'Z':
			idle := size == 5 && body[0] == 'I'
			mr.consume(i + 1 + size)
			l.done(idle && l.gotLSN && !l.failed && mr.buffered() == 0)
			return false
		}
		i += 1 + size
	}
	mr.consume(i)
	return true
}

// done stores the position (unless a later write of the session asked
// again) and releases the connection: for reuse only after a clean answer.
// On failure writeLSN stays MaxUint64: the session reads from the primary
// until its next write.
func (l *lsnFetch) done(ok bool) {
	l.scc.SetHandler(nil)
	if ok {
		l.c.storeWriteLSN(l.gen, l.lsn)
	}
	l.sc.pool.release(l.sc, ok)
}

package router

// What a server's message means for the session and for the server
// connection, decided once for both relays: relay (client.go) decodes
// messages with pgproto3 on a goroutine, relayBuffered (fast.go) scans
// the raw bytes on the event loop, and both call these for the decisions.
// TestOneStateMachine feeds the same server streams through both and
// compares what the client gets and what the server connection goes
// through.

import "math"

// endsConnection: an ErrorResponse of this severity is the server's last
// word before it closes; the client has the reason, and the router adds
// no FATAL of its own when the connection then ends.
func endsConnection(severity string) bool { return severity == "FATAL" || severity == "PANIC" }

// errorSeverity reads an ErrorResponse body's severity: the unlocalized
// field (V, since 9.6) if present, else the localized one (S).
func errorSeverity(body []byte) string {
	var sev string
	for len(body) > 1 && body[0] != 0 {
		typ := body[0]
		end := 1
		for end < len(body) && body[end] != 0 {
			end++
		}
		switch typ {
		case 'V':
			return string(body[1:end])
		case 'S':
			sev = string(body[1:end])
		}
		if end == len(body) {
			break
		}
		body = body[end+1:]
	}
	return sev
}

// settingChanged: the server reported a setting (ParameterStatus) while
// the client ran on sc: the client changed it (SET application_name), so
// sc no longer has its login's set, and the next hand-over applies its
// owner's set again (applyParams). The general path calls it under c.mu
// (enqueue may mark sc at the same time).
func (sc *serverConn) settingChanged() { sc.paramsKey = paramsUnknown }

// releaseIfIdle: ReadyForQuery with status ended everything the client
// sent on sc, in transaction mode. Outside a transaction sc leaves the
// session (release: the caller gives it back to its pool). After a
// write, read-your-writes starts: until the caller has asked sc for the
// primary's WAL position (lsnGen != 0; storeWriteLSN) the session's reads
// go to the primary. The caller holds c.mu.
func (c *client) releaseIfIdle(sc *serverConn, status byte) (release bool, lsnGen uint64) {
	if status != 'I' || c.sc != sc {
		return false, 0
	}
	c.sc = nil
	s := c.r.settings()
	if c.wrote && !s.DisableReadYourWrites && !s.DisableLoadBalance && c.role == ReadWrite {
		c.lsnGen++
		c.writeLSN.Store(math.MaxUint64)
		return true, c.lsnGen
	}
	return true, 0
}

// writeLSNQuery asks a primary for the position read-your-writes waits
// for: its WAL insert position, past every commit it acknowledged.
const writeLSNQuery = "SELECT pg_current_wal_insert_lsn()"

// storeWriteLSN records the primary's WAL position after the session's
// write release gen, unless a later write release superseded it.
func (c *client) storeWriteLSN(gen, lsn uint64) {
	c.mu.Lock()
	if c.lsnGen == gen {
		c.writeLSN.Store(lsn)
	}
	c.mu.Unlock()
}

// injectParse appends st's Parse (under its server name) to out when sc
// has not prepared the statement, and counts it prepared from then on;
// injected: the caller must keep its ParseComplete from the client, and
// forget the statement on sc if an error skips the Parse.
func (sc *serverConn) injectParse(out []byte, st *stmt) (_ []byte, injected bool) {
	if sc.prepared[st.serverName] {
		return out, false
	}
	out, _ = st.parse.Encode(out)
	sc.prepared[st.serverName] = true
	return out, true
}

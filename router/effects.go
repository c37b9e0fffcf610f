package router

// effects are what a statement does to the server session beyond its
// result, as far as a pooled server connection is concerned. One scan of
// the statement's tokens finds them all (the fast path asks for every
// write it serves). Only the statement's keywords count, never a word in
// a name or literal (a table called discarded_items).
type effects uint8

const (
	// effDiscard: DISCARD ALL, DEALLOCATE [PREPARE] ALL drop every
	// server-side prepared statement; forgetting statements that still
	// exist would make the router prepare them again under the same
	// name, which the server refuses.
	effDiscard effects = 1 << iota
	// effSettings: SET, RESET, DISCARD or set_config(...) may change
	// run-time settings, so the client startup parameters applied to the
	// connection (params.go) are no longer known. SET LOCAL counts too.
	effSettings
	// effListen: LISTEN, whose notifications arrive on this connection.
	effListen
	// effLeftovers: state that outlives the transaction and another
	// client of the connection must not find: a temporary table (CREATE
	// TEMP ...), an SQL prepared statement (PREPARE), a cursor declared
	// WITH HOLD, a loaded library (LOAD), a session-level advisory lock.
	// Conservative: DECLARE ... WITHOUT HOLD counts too.
	effLeftovers
)

// sessionEffects scans sql (one or several statements).
func sessionEffects(sql string) effects {
	var buf [64]string
	toks := tokenize(sql, buf[:0])
	var e effects
	start := true
	for i, t := range toks {
		if t == ";" {
			start = true
			continue
		}
		next := func(k int) string {
			if i+k < len(toks) {
				return toks[i+k]
			}
			return ""
		}
		if start {
			start = false
			switch {
			case eqFold(t, "set") || eqFold(t, "reset"):
				e |= effSettings
			case eqFold(t, "discard"):
				e |= effSettings
				if eqFold(next(1), "all") {
					e |= effDiscard
				}
			case eqFold(t, "deallocate"):
				if eqFold(next(1), "all") || eqFold(next(1), "prepare") && eqFold(next(2), "all") {
					e |= effDiscard
				}
			case eqFold(t, "listen"):
				e |= effListen
			case eqFold(t, "prepare") || eqFold(t, "load"):
				e |= effLeftovers
			case eqFold(t, "create"):
				k := 1
				if eqFold(next(k), "global") || eqFold(next(k), "local") {
					k++
				}
				if eqFold(next(k), "temp") || eqFold(next(k), "temporary") {
					e |= effLeftovers
				}
			case eqFold(t, "declare"):
				for _, u := range toks[i+1:] {
					if u == ";" {
						break
					}
					if eqFold(u, "hold") {
						e |= effLeftovers
						break
					}
				}
			}
			continue
		}
		if next(1) != "(" {
			continue
		}
		switch {
		case eqFold(t, "set_config"):
			e |= effSettings
		case eqFold(t, "pg_advisory_lock"), eqFold(t, "pg_advisory_lock_shared"),
			eqFold(t, "pg_try_advisory_lock"), eqFold(t, "pg_try_advisory_lock_shared"):
			e |= effLeftovers
		}
	}
	return e
}

func isListen(sql string) bool { return sessionEffects(sql)&effListen != 0 }

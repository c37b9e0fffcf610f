package router

import "strings"

// DefaultWriteFunctions are functions that write, take locks or fail on a
// standby; a statement calling one is sent to the primary. Config.WriteFunctions
// replaces the list.
var DefaultWriteFunctions = []string{
	"nextval", "setval", "currval", "lastval",
	"pg_advisory_lock", "pg_advisory_lock_shared", "pg_advisory_unlock", "pg_advisory_unlock_shared",
	"pg_advisory_unlock_all", "pg_advisory_xact_lock", "pg_advisory_xact_lock_shared",
	"pg_try_advisory_lock", "pg_try_advisory_lock_shared", "pg_try_advisory_xact_lock",
	"pg_try_advisory_xact_lock_shared",
	"pg_notify", "txid_current", "pg_current_xact_id", "set_config",
	"pg_current_wal_lsn", "pg_current_wal_insert_lsn", "pg_current_wal_flush_lsn",
	"pg_switch_wal", "pg_create_restore_point", "pg_backup_start", "pg_backup_stop",
	"lo_create", "lo_creat", "lo_import", "lo_unlink", "lo_open", "lo_put", "lo_from_bytea",
	"pg_create_physical_replication_slot", "pg_create_logical_replication_slot", "pg_drop_replication_slot",
}

// Class is where a statement may run.
type Class uint8

const (
	// ClassWrite must run on the primary: it writes, locks, changes session
	// state, controls a transaction, or is not recognised as a read.
	ClassWrite Class = iota
	// ClassRead is a read-only statement a standby can answer.
	ClassRead
)

func (c Class) String() string {
	if c == ClassRead {
		return "read"
	}
	return "write"
}

// writeKeywords make any statement a write wherever they appear outside
// literals and quoted identifiers (a data-modifying CTE, SELECT INTO).
var writeKeywords = map[string]bool{
	"insert": true, "update": true, "delete": true, "merge": true, "into": true,
	"truncate": true, "copy": true, "lock": true, "call": true, "do": true,
}

// readStarts are the first keywords of statements a standby can run.
var readStarts = map[string]bool{
	"select": true, "with": true, "values": true, "table": true, "show": true, "explain": true,
}

// Classify says whether sql (one or several statements) can run on a
// standby outside a transaction. It is pure and conservative: anything it
// does not recognise as a read is ClassWrite. writeFuncs lists function
// names (lower case) that make a statement a write; nil means
// DefaultWriteFunctions.
//
// A statement is a read when it starts with SELECT, WITH, VALUES, TABLE,
// SHOW or EXPLAIN (EXPLAIN ANALYZE of a write is a write, as it runs it)
// and contains none of: a locking clause (FOR UPDATE / NO KEY UPDATE /
// SHARE / KEY SHARE), INTO, a data-modifying keyword, or a call of a write
// function.
func Classify(sql string, writeFuncs map[string]bool) Class {
	if writeFuncs == nil {
		writeFuncs = defaultWriteFuncs
	}
	var buf [64]string // most statements: no allocation for the tokens
	toks := tokenize(sql, buf[:0])
	start := true
	sawStatement := false
	for i, t := range toks {
		if t == ";" {
			start = true
			continue
		}
		if start {
			start = false
			sawStatement = true
			if !foldIn(readStarts, t) {
				return ClassWrite
			}
		}
		if foldIn(writeKeywords, t) {
			return ClassWrite
		}
		if i+1 < len(toks) && eqFold(t, "for") {
			switch next := toks[i+1]; {
			case eqFold(next, "update"), eqFold(next, "share"), eqFold(next, "no"), eqFold(next, "key"):
				return ClassWrite
			}
		}
		if i+1 < len(toks) && toks[i+1] == "(" && foldIn(writeFuncs, t) {
			return ClassWrite
		}
	}
	if !sawStatement {
		return ClassWrite // empty query: harmless anywhere, keep it simple
	}
	return ClassRead
}

var defaultWriteFuncs = funcSet(DefaultWriteFunctions)

func funcSet(names []string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[strings.ToLower(n)] = true
	}
	return m
}

// eqFold reports whether the word tok is the keyword kw (lower case
// ASCII) in any case. ASCII words, all keywords are, compare in place;
// others as strings.ToLower would have it.
func eqFold(tok, kw string) bool {
	if !isASCII(tok) {
		return strings.ToLower(tok) == kw
	}
	if len(tok) != len(kw) {
		return false
	}
	for i := 0; i < len(tok); i++ {
		if lowerASCII(tok[i]) != kw[i] {
			return false
		}
	}
	return true
}

// foldIn reports whether m (lower-case keys) holds the word tok in any
// case, without allocating for ASCII words up to 64 bytes: Classify runs
// on every query and strings.ToLower copies each upper-case word.
func foldIn(m map[string]bool, tok string) bool {
	var buf [64]byte
	if len(tok) > len(buf) || !isASCII(tok) {
		return m[strings.ToLower(tok)]
	}
	for i := 0; i < len(tok); i++ {
		buf[i] = lowerASCII(tok[i])
	}
	return m[string(buf[:len(tok)])] // no allocation for a map index
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// tokenize returns the words (as written, compare them with eqFold or
// foldIn) and the punctuation ";" and "(" of sql, skipping whitespace, comments, string literals (standard, E”,
// dollar-quoted) and the contents of quoted identifiers (a quoted
// identifier yields the token "\"", so it never matches a keyword). A
// schema-qualified name yields its last part before "(", e.g.
// pg_catalog.nextval( gives "nextval", "(".
func tokenize(sql string, toks []string) []string {
	s := sql
	i := 0
	for i < len(s) {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
		case c == '-' && i+1 < len(s) && s[i+1] == '-':
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < len(s) && s[i+1] == '*':
			depth := 0
			for i < len(s) {
				if s[i] == '/' && i+1 < len(s) && s[i+1] == '*' {
					depth++
					i += 2
				} else if s[i] == '*' && i+1 < len(s) && s[i+1] == '/' {
					depth--
					i += 2
					if depth == 0 {
						break
					}
				} else {
					i++
				}
			}
		case c == '\'':
			i = skipQuoted(s, i, '\'', false)
			toks = append(toks, "'")
		case (c == 'e' || c == 'E') && i+1 < len(s) && s[i+1] == '\'':
			i = skipQuoted(s, i+1, '\'', true)
			toks = append(toks, "'")
		case c == '"':
			i = skipQuoted(s, i, '"', false)
			toks = append(toks, `"`)
		case c == '$' && i+1 < len(s) && (s[i+1] == '$' || isIdentStart(s[i+1])):
			j := i + 1
			for j < len(s) && (isIdentChar(s[j])) && s[j] != '$' {
				j++
			}
			if j < len(s) && s[j] == '$' {
				tag := s[i : j+1]
				end := strings.Index(s[j+1:], tag)
				if end < 0 {
					i = len(s)
				} else {
					i = j + 1 + end + len(tag)
				}
				toks = append(toks, "'")
			} else {
				i = j // not a dollar quote; e.g. a positional $1 handled below
			}
		case c == ';' || c == '(':
			toks = append(toks, s[i:i+1])
			i++
		case isIdentStart(c):
			j := i
			for j < len(s) && isIdentChar(s[j]) {
				j++
			}
			toks = append(toks, s[i:j])
			i = j
		default:
			i++
		}
	}
	return toks
}

// skipQuoted returns the index after the literal starting at s[i] (the
// quote), where a doubled quote is an escaped quote and, if backslash, a
// backslash escapes the next byte.
func skipQuoted(s string, i int, q byte, backslash bool) int {
	i++
	for i < len(s) {
		switch {
		case backslash && s[i] == '\\':
			i += 2
		case s[i] == q:
			if i+1 < len(s) && s[i+1] == q {
				i += 2
				continue
			}
			return i + 1
		default:
			i++
		}
	}
	return len(s)
}

func isIdentStart(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80
}

func isIdentChar(c byte) bool {
	return isIdentStart(c) || (c >= '0' && c <= '9') || c == '$'
}

package router

import (
	"fmt"
	"sort"
	"strings"
)

// A client's startup parameters (application_name, search_path, TimeZone,
// DateStyle, client_encoding, statement_timeout, the -c settings in
// options, ...) belong on whichever server connection serves it: PostgreSQL
// shows them in pg_stat_activity and current_setting, and a client relies on
// its TimeZone and DateStyle to read what it gets back. Server connections
// are pooled and logged in once as the router, so the router applies a
// client's set when it hands a connection over whose applied set differs
// (as PgBouncer does for the parameters it tracks): one round trip, RESET
// ALL (back to the login's values, and rid of any SET the previous client
// left) and set_config for each of the client's. Clients of one application
// send the same set, so after the first transaction on each server
// connection there is nothing to do.

// sessionParams is a client's startup parameters, names lower-cased
// (PostgreSQL's are case-insensitive), sorted, and key, their canonical
// encoding: "" for none.
type sessionParams struct {
	names, values []string
	key           string
}

// paramsUnknown is a server connection's applied key when what it has set is
// not known (a client ran SET, RESET or DISCARD on it): the next hand-over
// applies the client's set, whatever it is.
const paramsUnknown = "\x00unknown"

// clientParams extracts the parameters to apply from a StartupMessage:
// everything but the connection's identity (user, database, replication),
// protocol options (_pq_.*), and with options' -c name=value settings
// expanded, as the server would.
func clientParams(p map[string]string) (sessionParams, error) {
	set := map[string]string{}
	for k, v := range p {
		switch lk := strings.ToLower(k); {
		case lk == "user", lk == "database", lk == "replication", strings.HasPrefix(lk, "_pq_."):
		case lk == "options":
			opts, err := parseOptions(v)
			if err != nil {
				return sessionParams{}, err
			}
			for ok, ov := range opts {
				set[ok] = ov
			}
		default:
			set[lk] = v
		}
	}
	var sp sessionParams
	for k := range set {
		sp.names = append(sp.names, k)
	}
	sort.Strings(sp.names)
	var b strings.Builder
	for _, k := range sp.names {
		sp.values = append(sp.values, set[k])
		// NUL cannot occur in a startup packet's strings: an unambiguous
		// separator.
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(set[k])
		b.WriteByte(0)
	}
	sp.key = b.String()
	return sp, nil
}

// parseOptions reads the options startup parameter: settings as
// "-c name=value" or "--name=value", separated by spaces, a backslash
// escaping the next character (libpq's PGOPTIONS). Other command-line
// switches of the server (-d, -F, ...) are refused: the router cannot apply
// them to a pooled connection.
func parseOptions(s string) (map[string]string, error) {
	var words []string
	var w strings.Builder
	inWord, esc := false, false
	for _, r := range s {
		switch {
		case esc:
			w.WriteRune(r)
			esc, inWord = false, true
		case r == '\\':
			esc, inWord = true, true
		case r == ' ' || r == '\t' || r == '\n' || r == '\r':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		default:
			w.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	out := map[string]string{}
	for i := 0; i < len(words); i++ {
		var setting string
		switch word := words[i]; {
		case word == "-c" && i+1 < len(words):
			i++
			setting = words[i]
		case strings.HasPrefix(word, "-c") && len(word) > 2:
			setting = word[2:]
		case strings.HasPrefix(word, "--") && len(word) > 2:
			setting = word[2:]
		default:
			return nil, fmt.Errorf("options %q: the router applies only -c name=value settings, not %q", s, word)
		}
		name, value, ok := strings.Cut(setting, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("options %q: %q is not name=value", s, setting)
		}
		out[strings.ToLower(strings.ReplaceAll(name, "-", "_"))] = value
	}
	return out, nil
}

// applySQL is the statement that gives a server connection exactly the
// login's settings plus sp.
func (sp sessionParams) applySQL() string {
	var b strings.Builder
	b.WriteString("RESET ALL")
	if len(sp.names) > 0 {
		b.WriteString("; SELECT ")
		for i, k := range sp.names {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "pg_catalog.set_config(%s, %s, false)", quoteLiteral(k), quoteLiteral(sp.values[i]))
		}
	}
	return b.String()
}

// quoteLiteral quotes s as an escape string constant (E'...'), which reads
// the same whatever standard_conforming_strings says.
func quoteLiteral(s string) string {
	return "E'" + strings.NewReplacer(`\`, `\\`, `'`, `''`).Replace(s) + "'"
}

// reported returns the value the client asked for of a parameter the
// server reports (ParameterStatus), by its reported name.
func (sp sessionParams) reported(name string) (string, bool) {
	lk := strings.ToLower(name)
	i := sort.SearchStrings(sp.names, lk)
	if i < len(sp.names) && sp.names[i] == lk {
		return sp.values[i], true
	}
	return "", false
}

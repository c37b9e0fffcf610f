package router

import (
	"bufio"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// AuthMethod is how the router authenticates a client (pg_hba.conf's
// method column).
type AuthMethod string

// Client authentication methods.
const (
	AuthTrust  AuthMethod = "trust"
	AuthReject AuthMethod = "reject"
	AuthMD5    AuthMethod = "md5" // md5 challenge; SCRAM when only a SCRAM verifier is stored (as PostgreSQL)
	AuthSCRAM  AuthMethod = "scram-sha-256"
)

// HBAType is pg_hba.conf's connection type column: which connections a
// rule applies to.
type HBAType string

// Connection types.
const (
	HBAHost      HBAType = "host"      // any TCP connection, TLS or not ("" means the same)
	HBAHostSSL   HBAType = "hostssl"   // only connections that negotiated TLS
	HBAHostNoSSL HBAType = "hostnossl" // only clear-text connections
)

// HBARule is one line of the router's pg_hba: the first rule whose
// connection type, database, user and address match decides the method.
// "all" (or an empty list) matches everything. Address is a CIDR, a plain
// IP, "all" or "". A rule of Type HBAHostSSL followed by nothing for the
// same users is how an operator requires TLS: a clear-text client then
// matches no rule and is refused as PostgreSQL refuses it.
type HBARule struct {
	Type      HBAType
	Databases []string
	Users     []string
	Address   string
	Method    AuthMethod
}

func (r HBARule) matches(db, user string, addr netip.Addr, encrypted bool) bool {
	switch r.Type {
	case HBAHostSSL:
		if !encrypted {
			return false
		}
	case HBAHostNoSSL:
		if encrypted {
			return false
		}
	}
	in := func(list []string, v string) bool {
		return len(list) == 0 || slices.Contains(list, "all") || slices.Contains(list, v)
	}
	if !in(r.Databases, db) || !in(r.Users, user) {
		return false
	}
	switch r.Address {
	case "", "all":
		return true
	}
	if p, err := netip.ParsePrefix(r.Address); err == nil {
		return p.Contains(addr.Unmap())
	}
	if a, err := netip.ParseAddr(r.Address); err == nil {
		return a.Unmap() == addr.Unmap()
	}
	return false
}

// ParseHBA reads pg_hba-style lines "TYPE DATABASE USER ADDRESS METHOD",
// TYPE being host, hostssl or hostnossl (comma-separated lists; '#'
// comments).
func ParseHBA(text string) ([]HBARule, error) {
	var rules []HBARule
	for n, line := range strings.Split(text, "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		typ := HBAType(f[0])
		if len(f) != 5 || (typ != HBAHost && typ != HBAHostSSL && typ != HBAHostNoSSL) {
			return nil, fmt.Errorf("hba line %d: want \"host|hostssl|hostnossl DATABASE USER ADDRESS METHOD\", got %q", n+1, line)
		}
		m := AuthMethod(f[4])
		switch m {
		case AuthTrust, AuthReject, AuthMD5, AuthSCRAM:
		default:
			return nil, fmt.Errorf("hba line %d: method %q: want trust, reject, md5 or scram-sha-256", n+1, f[4])
		}
		if f[3] != "all" {
			if _, err := netip.ParsePrefix(f[3]); err != nil {
				if _, err := netip.ParseAddr(f[3]); err != nil {
					return nil, fmt.Errorf("hba line %d: address %q is not a CIDR", n+1, f[3])
				}
			}
		}
		rules = append(rules, HBARule{Type: typ, Databases: strings.Split(f[1], ","), Users: strings.Split(f[2], ","), Address: f[3], Method: m})
	}
	return rules, nil
}

// ParseUserList reads a pgbouncer userlist.txt / auth_file: lines of
// "user" "secret", where secret is a clear-text password, an md5 hash
// ("md5...") or a SCRAM verifier ("SCRAM-SHA-256$..."). A pgpool
// pool_passwd line (user:secret) is accepted too.
func ParseUserList(text string) (map[string]string, error) {
	users := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(text))
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == ';' || line[0] == '#' {
			continue
		}
		if line[0] != '"' {
			u, p, ok := strings.Cut(line, ":")
			if !ok {
				return nil, fmt.Errorf("auth file line %d: want \"user\" \"secret\" or user:secret", n)
			}
			users[u] = p
			continue
		}
		var fields []string
		rest := line
		for len(fields) < 2 {
			rest = strings.TrimLeft(rest, " \t")
			if !strings.HasPrefix(rest, `"`) {
				return nil, fmt.Errorf("auth file line %d: want two double-quoted fields", n)
			}
			var b strings.Builder
			i := 1
			closed := false
			for i < len(rest) {
				if rest[i] == '"' {
					if i+1 < len(rest) && rest[i+1] == '"' {
						b.WriteByte('"')
						i += 2
						continue
					}
					closed = true
					i++
					break
				}
				b.WriteByte(rest[i])
				i++
			}
			if !closed {
				return nil, fmt.Errorf("auth file line %d: unterminated quote", n)
			}
			fields = append(fields, b.String())
			rest = rest[i:]
		}
		users[fields[0]] = fields[1]
	}
	return users, sc.Err()
}

// LoadUserList reads ParseUserList's format from a file.
func LoadUserList(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read auth file: %w", err)
	}
	u, err := ParseUserList(string(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return u, nil
}

// authError is a FATAL ErrorResponse the client receives before it is
// closed.
type authError struct {
	code, msg, detail string
	cause             error // for the router's log only, never sent
}

func (e *authError) Error() string { return e.msg }

func passwordFailed(user string) error {
	return &authError{code: "28P01", msg: fmt.Sprintf("password authentication failed for user %q", user)}
}

// authenticate runs the client authentication exchange chosen by the hba
// rules. It returns nil when the client may proceed (AuthenticationOk not
// yet sent).
func (c *client) authenticate() error {
	ex, err := c.passwordExchange()
	if err != nil || ex == nil {
		return err
	}
	msg := ex.start()
	for {
		if err := c.sendFlush(msg); err != nil {
			return err
		}
		c.dec.be.SetAuthType(ex.authType())
		in, err := c.receiveAuth()
		if err != nil {
			return err
		}
		reply, done, err := ex.step(in)
		if err != nil {
			return err
		}
		if done {
			if reply != nil {
				c.send(reply) // SASLFinal, flushed with AuthenticationOk
			}
			return nil
		}
		msg = reply
	}
}

// passwordExchange is the exchange the client's hba rule asks for: nil for
// trust, an error for a refusal. A secret behind auth_query is a round
// trip to a server: the event loop's login never gets here with one
// (plainLogin).
func (c *client) passwordExchange() (authExchange, error) {
	r := c.r
	addr := c.remoteIP()
	rule := c.hbaRule(c.db, c.user)
	// PostgreSQL's words, which operators search for.
	host, enc := addr.Unmap().String(), "no encryption"
	if c.encrypted {
		enc = "SSL encryption"
	}
	if rule == nil {
		return nil, &authError{code: "28000", msg: fmt.Sprintf("no pg_hba.conf entry for host %q, user %q, database %q, %s", host, c.user, c.db, enc)}
	}
	switch rule.Method {
	case AuthTrust:
		return nil, nil
	case AuthReject:
		return nil, &authError{code: "28000", msg: fmt.Sprintf("pg_hba.conf rejects connection for host %q, user %q, database %q, %s", host, c.user, c.db, enc)}
	case AuthMD5, AuthSCRAM:
	default:
		return nil, &authError{code: "28000", msg: fmt.Sprintf("unsupported authentication method %q", rule.Method)}
	}
	secret, known, err := r.secretOf(c.db, c.user)
	if err != nil {
		var ae *authError
		if !errors.As(err, &ae) {
			err = &authError{code: "57P03", msg: fmt.Sprintf("the router cannot check the password of user %q now (auth_query failed)", c.user), cause: err}
		}
		return nil, err
	}
	if rule.Method == AuthMD5 && (!known || isMD5Hash(secret) || !strings.HasPrefix(secret, "SCRAM-SHA-256$")) {
		return c.newMD5Exchange(secret, known), nil
	}
	if isMD5Hash(secret) {
		// PostgreSQL cannot do SCRAM from an md5 hash either.
		known = false
	}
	return c.newSCRAMExchange(secret, known), nil
}

// authExchange is a password exchange as steps, for the client goroutine
// (authenticate) and the event loop (login.go) alike: start is the first
// challenge; step takes each client message and gives the next message
// to send, and done once the client is in (reply then is the last word
// before AuthenticationOk, or nil).
type authExchange interface {
	start() pgproto3.BackendMessage
	authType() uint32 // what the client's next 'p' message is (pgproto3's AuthType)
	step(msg pgproto3.FrontendMessage) (reply pgproto3.BackendMessage, done bool, err error)
}

type md5Exchange struct {
	c      *client
	secret string
	known  bool
	salt   [4]byte
}

func (c *client) newMD5Exchange(secret string, known bool) *md5Exchange {
	e := &md5Exchange{c: c, secret: secret, known: known}
	rand.Read(e.salt[:])
	return e
}

func (e *md5Exchange) start() pgproto3.BackendMessage {
	return &pgproto3.AuthenticationMD5Password{Salt: e.salt}
}

func (e *md5Exchange) authType() uint32 { return pgproto3.AuthTypeMD5Password }

func (e *md5Exchange) step(msg pgproto3.FrontendMessage) (pgproto3.BackendMessage, bool, error) {
	c := e.c
	pw, ok := msg.(*pgproto3.PasswordMessage)
	if !ok {
		return nil, false, &authError{code: "08P01", msg: fmt.Sprintf("expected password response, got message type %T", msg)}
	}
	if !e.known {
		return nil, false, passwordFailed(c.user)
	}
	want := md5Response(e.secret, c.user, e.salt)
	if subtle.ConstantTimeCompare([]byte(want), []byte(pw.Password)) != 1 {
		return nil, false, passwordFailed(c.user)
	}
	if isMD5Hash(e.secret) {
		// The hash answers the servers' md5 challenges too (pass-through).
		c.r.learned.setMD5(c.user, e.secret)
	}
	return nil, true, nil
}

type scramExchange struct {
	c      *client
	v      *scramVerifier
	known  bool
	stored bool // v is the stored verifier (not made here from a password)
	srv    *scramServer
}

func (c *client) newSCRAMExchange(secret string, known bool) *scramExchange {
	var v *scramVerifier
	stored := known && strings.HasPrefix(secret, "SCRAM-SHA-256$")
	if known {
		var err error
		if stored {
			v, err = parseSCRAMVerifier(secret)
		} else {
			salt := make([]byte, 16)
			rand.Read(salt)
			v = newSCRAMVerifier(secret, salt, scramIterations)
		}
		if err != nil {
			c.r.log.Warn("bad SCRAM verifier (Users or auth_query)", "user", c.user, "err", err)
			known = false
		}
	}
	if !known {
		// A mock exchange, as PostgreSQL does, so that unknown users are
		// indistinguishable from wrong passwords.
		salt := make([]byte, 16)
		rand.Read(salt)
		v = newSCRAMVerifier(nonce(), salt, scramIterations)
	}
	return &scramExchange{c: c, v: v, known: known, stored: stored}
}

func (e *scramExchange) start() pgproto3.BackendMessage {
	return &pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256"}}
}

func (e *scramExchange) authType() uint32 {
	if e.srv == nil {
		return pgproto3.AuthTypeSASL
	}
	return pgproto3.AuthTypeSASLContinue
}

func (e *scramExchange) step(msg pgproto3.FrontendMessage) (pgproto3.BackendMessage, bool, error) {
	if e.srv == nil {
		init, ok := msg.(*pgproto3.SASLInitialResponse)
		if !ok {
			return nil, false, &authError{code: "08P01", msg: fmt.Sprintf("expected SASL response, got message type %T", msg)}
		}
		if init.AuthMechanism != "SCRAM-SHA-256" {
			return nil, false, &authError{code: "08P01", msg: "client selected an invalid SASL authentication mechanism"}
		}
		e.srv = &scramServer{v: e.v}
		first, err := e.srv.first(init.Data)
		if err != nil {
			return nil, false, &authError{code: "08P01", msg: err.Error()}
		}
		return &pgproto3.AuthenticationSASLContinue{Data: []byte(first)}, false, nil
	}
	resp, ok := msg.(*pgproto3.SASLResponse)
	if !ok {
		return nil, false, &authError{code: "08P01", msg: fmt.Sprintf("expected SASL response, got message type %T", msg)}
	}
	final, ok, err := e.srv.final(resp.Data)
	if err != nil {
		return nil, false, &authError{code: "08P01", msg: err.Error()}
	}
	if !ok || !e.known {
		return nil, false, passwordFailed(e.c.user)
	}
	if e.stored {
		// Only a verifier that may also be the server's is worth keeping;
		// one made here from a clear-text password has a random salt.
		e.c.r.learned.setSCRAM(e.c.user, e.srv.keys())
	}
	return &pgproto3.AuthenticationSASLFinal{Data: []byte(final)}, true, nil
}

// receiveAuth reads the client's next authentication message; what does
// not decode (or exceeds the pre-login size limit) is a protocol error.
func (c *client) receiveAuth() (pgproto3.FrontendMessage, error) {
	msg, err := c.dec.be.Receive()
	if err != nil && !clientIOError(err) {
		return nil, &authError{code: "08P01", msg: "invalid authentication message: " + err.Error()}
	}
	return msg, err
}

package router

import (
	"bufio"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
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

// HBARule is one line of the router's pg_hba: the first rule whose
// database, user and address match decides the method. "all" (or an empty
// list) matches everything. Address is a CIDR, a plain IP, "all" or "".
type HBARule struct {
	Databases []string
	Users     []string
	Address   string
	Method    AuthMethod
}

func (r HBARule) matches(db, user string, addr netip.Addr) bool {
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

// ParseHBA reads pg_hba-style lines "host DATABASE USER ADDRESS METHOD"
// (also "hostnossl"; comma-separated lists; '#' comments).
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
		if len(f) != 5 || (f[0] != "host" && f[0] != "hostnossl") {
			return nil, fmt.Errorf("hba line %d: want \"host DATABASE USER ADDRESS METHOD\", got %q", n+1, line)
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
		rules = append(rules, HBARule{Databases: strings.Split(f[1], ","), Users: strings.Split(f[2], ","), Address: f[3], Method: m})
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
type authError struct{ code, msg string }

func (e *authError) Error() string { return e.msg }

func passwordFailed(user string) error {
	return &authError{"28P01", fmt.Sprintf("password authentication failed for user %q", user)}
}

// authenticate runs the client authentication exchange chosen by the hba
// rules. It returns nil when the client may proceed (AuthenticationOk not
// yet sent).
func (c *client) authenticate() error {
	r := c.r
	addr := netip.Addr{}
	if ta, ok := c.conn.RemoteAddr().(*net.TCPAddr); ok {
		addr, _ = netip.AddrFromSlice(ta.IP)
	}
	var rule *HBARule
	for i := range r.cfg.HBA {
		if r.cfg.HBA[i].matches(c.db, c.user, addr) {
			rule = &r.cfg.HBA[i]
			break
		}
	}
	host := addr.Unmap().String()
	if rule == nil {
		return &authError{"28000", fmt.Sprintf("no pg_hba.conf entry for host %q, user %q, database %q, no encryption", host, c.user, c.db)}
	}
	secret, known := r.userSecret(c.user)
	switch rule.Method {
	case AuthTrust:
		return nil
	case AuthReject:
		return &authError{"28000", fmt.Sprintf("pg_hba.conf rejects connection for host %q, user %q, database %q, no encryption", host, c.user, c.db)}
	case AuthMD5:
		if !known || isMD5Hash(secret) || !strings.HasPrefix(secret, "SCRAM-SHA-256$") {
			return c.authMD5(secret, known)
		}
		return c.authSCRAM(secret, known)
	case AuthSCRAM:
		if isMD5Hash(secret) {
			// PostgreSQL cannot do SCRAM from an md5 hash either.
			known = false
		}
		return c.authSCRAM(secret, known)
	}
	return &authError{"28000", fmt.Sprintf("unsupported authentication method %q", rule.Method)}
}

func (c *client) authMD5(secret string, known bool) error {
	var salt [4]byte
	rand.Read(salt[:])
	if err := c.sendFlush(&pgproto3.AuthenticationMD5Password{Salt: salt}); err != nil {
		return err
	}
	c.be.SetAuthType(pgproto3.AuthTypeMD5Password)
	msg, err := c.be.Receive()
	if err != nil {
		return err
	}
	pw, ok := msg.(*pgproto3.PasswordMessage)
	if !ok {
		return &authError{"08P01", fmt.Sprintf("expected password response, got message type %T", msg)}
	}
	if !known {
		return passwordFailed(c.user)
	}
	want := md5Response(secret, c.user, salt)
	if subtle.ConstantTimeCompare([]byte(want), []byte(pw.Password)) != 1 {
		return passwordFailed(c.user)
	}
	return nil
}

func (c *client) authSCRAM(secret string, known bool) error {
	var v *scramVerifier
	if known {
		var err error
		if strings.HasPrefix(secret, "SCRAM-SHA-256$") {
			v, err = parseSCRAMVerifier(secret)
		} else {
			salt := make([]byte, 16)
			rand.Read(salt)
			v = newSCRAMVerifier(secret, salt, scramIterations)
		}
		if err != nil {
			c.r.log.Warn("bad SCRAM verifier in the auth file", "user", c.user, "err", err)
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
	if err := c.sendFlush(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256"}}); err != nil {
		return err
	}
	c.be.SetAuthType(pgproto3.AuthTypeSASL)
	msg, err := c.be.Receive()
	if err != nil {
		return err
	}
	init, ok := msg.(*pgproto3.SASLInitialResponse)
	if !ok {
		return &authError{"08P01", fmt.Sprintf("expected SASL response, got message type %T", msg)}
	}
	if init.AuthMechanism != "SCRAM-SHA-256" {
		return &authError{"08P01", "client selected an invalid SASL authentication mechanism"}
	}
	srv := &scramServer{v: v}
	first, err := srv.first(init.Data)
	if err != nil {
		return &authError{"08P01", err.Error()}
	}
	if err := c.sendFlush(&pgproto3.AuthenticationSASLContinue{Data: []byte(first)}); err != nil {
		return err
	}
	c.be.SetAuthType(pgproto3.AuthTypeSASLContinue)
	msg, err = c.be.Receive()
	if err != nil {
		return err
	}
	resp, ok := msg.(*pgproto3.SASLResponse)
	if !ok {
		return &authError{"08P01", fmt.Sprintf("expected SASL response, got message type %T", msg)}
	}
	final, ok, err := srv.final(resp.Data)
	if err != nil {
		return &authError{"08P01", err.Error()}
	}
	if !ok || !known {
		return passwordFailed(c.user)
	}
	return c.send(&pgproto3.AuthenticationSASLFinal{Data: []byte(final)})
}

// serverPassword is the clear-text password the router logs into
// PostgreSQL with for user: Config.ServerPasswords, else a clear-text
// entry of the auth file.
func (r *Router) serverPassword(user string) (string, error) {
	if p, ok := r.cfg.ServerPasswords[user]; ok {
		return p, nil
	}
	if p, ok := r.userSecret(user); ok && !strings.HasPrefix(p, "SCRAM-SHA-256$") {
		return p, nil // clear text, or an md5 hash (usable for md5 server auth only)
	}
	return "", errors.New("no server password for user " + user + " (set ServerPasswords)")
}

// userSecret is the stored secret of user (Config.Users).
func (r *Router) userSecret(user string) (string, bool) {
	s, ok := r.cfg.Users[user]
	return s, ok
}

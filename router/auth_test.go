package router

import (
	"crypto/tls"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestSCRAMRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		stored, password string
		ok               bool
	}{
		{SCRAMVerifier("secret"), "secret", true},
		{SCRAMVerifier("secret"), "wrong", false},
	} {
		v, err := parseSCRAMVerifier(tc.stored)
		if err != nil {
			t.Fatal(err)
		}
		srv := &scramServer{v: v}
		cli := &scramClient{password: tc.password}
		sf, err := srv.first([]byte(cli.first()))
		if err != nil {
			t.Fatal(err)
		}
		cf, err := cli.final([]byte(sf))
		if err != nil {
			t.Fatal(err)
		}
		final, ok, err := srv.final([]byte(cf))
		if err != nil || ok != tc.ok {
			t.Fatalf("password %q: ok=%v err=%v", tc.password, ok, err)
		}
		if ok {
			if err := cli.verify([]byte(final)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestParseUserList(t *testing.T) {
	u, err := ParseUserList(`
; pgbouncer userlist
"alice" "SCRAM-SHA-256$4096:c2FsdA==$a2V5:a2V5"
"bob" "md5` + strings.Repeat("0", 32) + `"
"we""ird" "clear text"
carol:plain
`)
	if err != nil {
		t.Fatal(err)
	}
	if len(u) != 4 || u[`we"ird`] != "clear text" || u["carol"] != "plain" || !strings.HasPrefix(u["alice"], "SCRAM") {
		t.Errorf("parsed %v", u)
	}
	if _, err := ParseUserList(`"unterminated`); err == nil {
		t.Error("unterminated quote accepted")
	}
}

func TestParseHBA(t *testing.T) {
	rules, err := ParseHBA("host all all 127.0.0.1/32 trust # local\nhost db1,db2 bob 10.0.0.0/8 scram-sha-256\n")
	if err != nil || len(rules) != 2 || rules[1].Method != AuthSCRAM || len(rules[1].Databases) != 2 {
		t.Fatalf("%+v %v", rules, err)
	}
	if _, err := ParseHBA("host all all nowhere trust"); err == nil {
		t.Error("bad address accepted")
	}
	if _, err := ParseHBA("host all all all ident"); err == nil {
		t.Error("unsupported method accepted")
	}
}

// runSCRAM runs one SCRAM exchange between cli and a server holding
// v; it returns the server and whether the proof held.
func runSCRAM(t *testing.T, v *scramVerifier, cli *scramClient) (*scramServer, bool) {
	t.Helper()
	srv := &scramServer{v: v}
	sf, err := srv.first([]byte(cli.first()))
	if err != nil {
		t.Fatal(err)
	}
	cf, err := cli.final([]byte(sf))
	if err != nil {
		return srv, false
	}
	final, ok, err := srv.final([]byte(cf))
	if err != nil {
		t.Fatal(err)
	}
	if ok {
		if err := cli.verify([]byte(final)); err != nil {
			t.Fatalf("server signature: %v", err)
		}
	}
	return srv, ok
}

// TestSCRAMPassThrough: the ClientKey recovered from a client's proof
// logs into any server holding the same verifier, and into no other.
func TestSCRAMPassThrough(t *testing.T) {
	v, err := parseSCRAMVerifier(SCRAMVerifier("secret"))
	if err != nil {
		t.Fatal(err)
	}
	// The client's login to the router.
	srv, ok := runSCRAM(t, v, &scramClient{password: "secret"})
	keys := srv.keys()
	if !ok || keys == nil {
		t.Fatal("client login failed")
	}
	// The router's login to a server with the same verifier, twice
	// (fresh nonces each time).
	for range 2 {
		if _, ok := runSCRAM(t, v, &scramClient{keys: keys}); !ok {
			t.Fatal("pass-through login refused by a server with the same verifier")
		}
	}
	// A server with another verifier of the same password (another salt):
	// the keys do not fit, and the router says so before sending a proof.
	other, _ := parseSCRAMVerifier(SCRAMVerifier("secret"))
	if _, ok := runSCRAM(t, other, &scramClient{keys: keys}); ok {
		t.Fatal("pass-through keys accepted by a server with another salt")
	}
	// A wrong password yields no keys.
	if srv, ok := runSCRAM(t, v, &scramClient{password: "wrong"}); ok || srv.keys() != nil {
		t.Fatal("wrong password gave pass-through keys")
	}
}

func TestHBAConnectionType(t *testing.T) {
	rules, err := ParseHBA("hostssl all alice all scram-sha-256\nhostnossl all bob all trust\nhost all carol all md5\n")
	if err != nil || len(rules) != 3 || rules[0].Type != HBAHostSSL || rules[1].Type != HBAHostNoSSL || rules[2].Type != HBAHost {
		t.Fatalf("%+v %v", rules, err)
	}
	if _, err := ParseHBA("hostgssenc all all all trust"); err == nil {
		t.Error("hostgssenc accepted")
	}
	for _, tc := range []struct {
		rule      int
		user      string
		encrypted bool
		want      bool
	}{
		{0, "alice", true, true}, {0, "alice", false, false},
		{1, "bob", false, true}, {1, "bob", true, false},
		{2, "carol", true, true}, {2, "carol", false, true},
	} {
		if got := rules[tc.rule].matches("db", tc.user, netip.MustParseAddr("10.1.2.3"), tc.encrypted); got != tc.want {
			t.Errorf("rule %d user %s encrypted %v: match %v", tc.rule, tc.user, tc.encrypted, got)
		}
	}
}

func TestValidate(t *testing.T) {
	cert := tls.Certificate{Certificate: [][]byte{{1}}}
	for _, tc := range []struct {
		name string
		cfg  Config
		key  string // "" = valid
	}{
		{"hostssl without TLS", Config{HBA: []HBARule{{Type: HBAHostSSL, Method: AuthTrust}}}, "HBA[0].Type"},
		{"hostssl with TLS", Config{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}, HBA: []HBARule{{Type: HBAHostSSL, Method: AuthTrust}}}, ""},
		{"unknown type", Config{HBA: []HBARule{{Type: "local", Method: AuthTrust}}}, "HBA[0].Type"},
		{"TLS without certificate", Config{TLS: &tls.Config{}}, "TLS"},
		{"AuthQuery without AuthUser", Config{AuthQuery: "SELECT 1"}, "AuthUser"},
		{"negative login timeout", Config{ClientLoginTimeout: -time.Second}, "ClientLoginTimeout"},
		{"AuthUser alone", Config{AuthUser: "pgbouncer"}, ""},
	} {
		err := tc.cfg.Validate()
		if (err == nil) != (tc.key == "") || (err != nil && !strings.Contains(err.Error(), tc.key)) {
			t.Errorf("%s: %v, want an error naming %q", tc.name, err, tc.key)
		}
	}
	if c := (Config{AuthUser: "pgbouncer"}).withDefaults(); c.AuthQuery != DefaultAuthQuery || c.ClientLoginTimeout != time.Minute {
		t.Errorf("defaults: AuthQuery %q ClientLoginTimeout %v", c.AuthQuery, c.ClientLoginTimeout)
	}
}

package router

import (
	"strings"
	"testing"
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

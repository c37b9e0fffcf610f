package router_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgha/pgha/router"
)

// authQueryConfig: the router knows no password of aqUser or aqMD5User;
// the servers ask both for theirs (SCRAM and md5).
func authQueryConfig() router.Config {
	cfg := routerConfig(router.PoolTransaction)
	cfg.HBA = []router.HBARule{
		{Users: []string{aqMD5User}, Method: router.AuthMD5},
		{Users: []string{trustUser}, Method: router.AuthTrust},
		{Method: router.AuthSCRAM},
	}
	return cfg
}

func testAuthQuery(t *testing.T, cl *cluster) {
	for _, tc := range []struct {
		name string
		set  func(*router.Config)
	}{
		{"DefaultQuery", func(c *router.Config) { c.AuthUser = scramUser }}, // a superuser reads pg_shadow
		{"SecurityDefinerFunction", func(c *router.Config) {
			c.AuthUser = authUser
			c.AuthQuery = "SELECT usename, passwd FROM " + authFunc + "($1)"
			c.ServerPasswords[authUser] = authPass
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := authQueryConfig()
			tc.set(&cfg)
			tr := startRouter(t, cl, cfg)
			// Pass-through to the servers: SCRAM with the ClientKey the
			// client proved, md5 with the hash from auth_query.
			checkLoggedInEverywhere(t, tr, aqUser, aqPass)
			checkLoggedInEverywhere(t, tr, aqMD5User, aqMD5Pass)
			for _, bad := range []struct{ user, password string }{
				{aqUser, "wrong"}, {aqMD5User, "wrong"}, {"no_such_role", "x"},
			} {
				expectAuthError(t, tr.rw, bad.user, bad.password, "28P01", fmt.Sprintf("password authentication failed for user %q", bad.user))
			}
		})
	}
	t.Run("LookupFails", func(t *testing.T) {
		// The router cannot run the query (AuthUser's password is wrong):
		// the client is told to come back, not that its password is wrong.
		cfg := authQueryConfig()
		cfg.AuthUser = authUser
		cfg.ServerPasswords[authUser] = "not-" + authPass
		tr := startRouter(t, cl, cfg)
		expectAuthError(t, tr.rw, aqUser, aqPass, "57P03", fmt.Sprintf("the router cannot check the password of user %q now (auth_query failed)", aqUser))
	})
	t.Run("UsersVerifierWithoutServerPassword", func(t *testing.T) {
		// The server's own verifier in Users, no ServerPasswords entry:
		// the client's SCRAM login passes through to the servers.
		var verifier string
		ctx := testContext(t)
		if err := cl.primary.Query(ctx, func(c *pgx.Conn) error {
			return c.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", aqUser).Scan(&verifier)
		}); err != nil || !strings.HasPrefix(verifier, "SCRAM-SHA-256$") {
			t.Fatalf("server verifier of %s: %q %v", aqUser, verifier, err)
		}
		cfg := authQueryConfig()
		cfg.Users[aqUser] = verifier
		checkLoggedInEverywhere(t, startRouter(t, cl, cfg), aqUser, aqPass)
	})
	t.Run("UsersVerifierOfAnotherSalt", func(t *testing.T) {
		// A verifier the servers do not hold: the client logs into the
		// router, but the router cannot log into the servers, and says
		// what to configure.
		cfg := authQueryConfig()
		cfg.Users[aqUser] = router.SCRAMVerifier(aqPass)
		tr := startRouter(t, cl, cfg)
		_, err := pgx.Connect(testContext(t), connString(tr.rw, aqUser, aqPass))
		if err == nil || !strings.Contains(err.Error(), "ServerPasswords") {
			t.Fatalf("want an error naming ServerPasswords, got %v", err)
		}
	})
}

// checkLoggedInEverywhere logs in as user through the router, reads until
// both standbys answered and writes on the primary: each server login
// used what the client's own login gave the router.
func checkLoggedInEverywhere(t *testing.T, tr *testRouter, user, password string) {
	t.Helper()
	seen := map[string]bool{}
	for i := 0; i < 30 && !(seen["standby1"] && seen["standby2"]); i++ {
		// A session of its own each: one session's reads stay on one
		// standby while they are alone.
		s := connect(t, tr.rw, user, password)
		seen[tr.serverOf(t, s, "SELECT inet_server_port()")] = true
		s.Close(testContext(t))
	}
	c := connect(t, tr.rw, user, password)
	seen[tr.serverOf(t, c, "INSERT INTO kv VALUES ($1, 'aq') ON CONFLICT (k) DO UPDATE SET v = 'aq' RETURNING inet_server_port()", "aq-"+user)] = true
	if !seen["primary"] || !seen["standby1"] || !seen["standby2"] {
		t.Fatalf("%s ran on %v, want every server", user, seen)
	}
	var who string
	if err := c.QueryRow(testContext(t), "SELECT current_user").Scan(&who); err != nil || who != user {
		t.Fatalf("current_user %q %v, want %s", who, err, user)
	}
}

func expectAuthError(t *testing.T, addr, user, password, code, message string) {
	t.Helper()
	c, err := pgx.Connect(testContext(t), connString(addr, user, password))
	if err == nil {
		c.Close(testContext(t))
		t.Fatalf("%s with password %q logged in", user, password)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != code || pgErr.Message != message {
		t.Fatalf("%s: want %s %q, got %v", user, code, message, err)
	}
}

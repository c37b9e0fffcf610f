package router_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgha/pgha/internal/wait"
	"github.com/pgha/pgha/postgres"
	"github.com/pgha/pgha/postgres/pgtest"
	"github.com/pgha/pgha/recovery"
	"github.com/pgha/pgha/router"
)

// Roles the test cluster has. The servers trust 127.0.0.1 for every role
// but scramUser, aqUser and authUser, which log in with SCRAM, and
// aqMD5User, which logs in with md5; the router authenticates clients
// itself (see routerConfig).
const (
	trustUser   = "app"
	scramUser   = "app_scram"
	scramPass   = "scram-secret"
	md5User     = "app_md5"
	md5Pass     = "md5-secret"
	rejectUser  = "app_reject"
	clientPass  = "client-secret" // app's password when the router asks for it (only over scram rules)
	testTimeout = 90 * time.Second

	// Roles the router knows nothing about but through auth_query.
	aqUser    = "aq_scram" // SCRAM verifier on the servers
	aqPass    = "aq-secret"
	aqMD5User = "aq_md5" // md5 hash on the servers
	aqMD5Pass = "aq-md5-secret"
	authUser  = "pgha_auth" // runs the auth query through authFunc, not a superuser
	authPass  = "auth-secret"
	authFunc  = "public.pgha_user_secret"
)

// cluster is a primary and two streaming standbys.
type cluster struct {
	primary  *postgres.Instance
	standbys []*postgres.Instance
	names    []string // primary, standby1, standby2
}

func (cl *cluster) all() []*postgres.Instance {
	return append([]*postgres.Instance{cl.primary}, cl.standbys...)
}

func (cl *cluster) backends() []router.Backend {
	var bs []router.Backend
	for i, inst := range cl.all() {
		bs = append(bs, router.Backend{
			Name: cl.names[i], Host: "127.0.0.1", Port: inst.Config().Port,
			Primary: i == 0, Healthy: true, Weight: 1,
			ReplicationState: "streaming", ReplicationSyncState: "async",
		})
	}
	return bs
}

func (cl *cluster) portName(port int) string {
	for i, inst := range cl.all() {
		if inst.Config().Port == port {
			return cl.names[i]
		}
	}
	return "port " + strconv.Itoa(port)
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func instanceConfig(t *testing.T, name string) postgres.Config {
	cfg := pgtest.Config(t, name)
	cfg.Parameters["max_connections"] = "80"
	cfg.Parameters["password_encryption"] = "scram-sha-256"
	cfg.HBA = []string{
		"host all " + strings.Join([]string{scramUser, aqUser, authUser}, ",") + " 127.0.0.1/32 scram-sha-256",
		"host all " + aqMD5User + " 127.0.0.1/32 md5",
		"host all all 127.0.0.1/32 trust",
	}
	return cfg
}

// startCluster builds the primary with the test roles and clones two
// standbys from it.
func startCluster(t *testing.T) *cluster {
	t.Helper()
	ctx := testContext(t)
	primary := pgtest.StartPrimaryWith(t, instanceConfig(t, "primary"))
	slots := []string{"standby1", "standby2"}
	if err := primary.EnsureSlots(ctx, slots); err != nil {
		t.Fatal(err)
	}
	err := primary.Exec(ctx, fmt.Sprintf(`
		CREATE ROLE %s LOGIN SUPERUSER;
		CREATE ROLE %s LOGIN SUPERUSER PASSWORD '%s';
		CREATE ROLE %s LOGIN SUPERUSER;
		CREATE ROLE %s LOGIN;
		CREATE TABLE kv (k text PRIMARY KEY, v text);
		CREATE SEQUENCE seq;`, trustUser, scramUser, scramPass, md5User, rejectUser))
	if err != nil {
		t.Fatal(err)
	}
	// auth_query: a SECURITY DEFINER function lets authUser read
	// pg_shadow, pgbouncer's recommended setup.
	err = primary.Exec(ctx, fmt.Sprintf(`
		CREATE ROLE %[1]s LOGIN PASSWORD '%[2]s';
		SET password_encryption = 'md5';
		CREATE ROLE %[3]s LOGIN PASSWORD '%[4]s';
		RESET password_encryption;
		GRANT ALL ON kv TO %[1]s, %[3]s;
		CREATE ROLE %[5]s LOGIN PASSWORD '%[6]s';
		CREATE FUNCTION %[7]s(name) RETURNS TABLE (usename name, passwd text)
			LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog
			AS $$ SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1 $$;
		REVOKE ALL ON FUNCTION %[7]s(name) FROM PUBLIC;
		GRANT EXECUTE ON FUNCTION %[7]s(name) TO %[5]s;`,
		aqUser, aqPass, aqMD5User, aqMD5Pass, authUser, authPass, authFunc))
	if err != nil {
		t.Fatal(err)
	}
	passFile := pgtest.WritePassFile(t)
	cl := &cluster{primary: primary, names: []string{"primary", "standby1", "standby2"}}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	cl.standbys = make([]*postgres.Instance, 2)
	for i, slot := range slots {
		st := pgtest.NewInstanceWith(t, instanceConfig(t, slot))
		cl.standbys[i] = st
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := recovery.Clone(ctx, st.Config().BinDir, st.Config().DataDir, recovery.Source{
				Host: "127.0.0.1", Port: primary.Config().Port, User: pgtest.ReplicationUser,
				PassFile: passFile, SlotName: slot,
			}, pgtest.RunAs(), nil)
			if err == nil {
				_, err = st.Configure(&postgres.Standby{
					PrimaryHost: "127.0.0.1", PrimaryPort: primary.Config().Port,
					User: pgtest.ReplicationUser, PassFile: passFile, SlotName: slot, ApplicationName: slot,
				}, nil)
			}
			if err == nil {
				err = st.Start(ctx)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, st := range cl.standbys {
		wait.For(t, 30*time.Second, "a standby to stream", func() (bool, string) {
			s := st.Status(ctx)
			return s.Running && s.InRecovery && s.Streaming, "standby not streaming yet"
		})
	}
	return cl
}

// testRouter is a router on two loopback listeners.
type testRouter struct {
	*router.Router
	topo   *router.BackendSet
	rw, ro string // addresses
	cl     *cluster
}

func routerConfig(mode router.PoolMode) router.Config {
	return router.Config{
		PoolMode:         mode,
		PoolSize:         6,
		QueryWaitTimeout: 20 * time.Second,
		HBA: []router.HBARule{
			{Users: []string{md5User}, Method: router.AuthMD5},
			{Users: []string{rejectUser}, Method: router.AuthReject},
			{Users: []string{trustUser}, Address: "127.0.0.1/32", Method: router.AuthTrust},
			{Address: "127.0.0.0/8", Method: router.AuthSCRAM},
		},
		Users: map[string]string{
			scramUser: router.SCRAMVerifier(scramPass),
			md5User:   router.MD5Hash(md5User, md5Pass),
		},
		ServerPasswords: map[string]string{scramUser: scramPass},
	}
}

func startRouter(t *testing.T, cl *cluster, cfg router.Config) *testRouter {
	t.Helper()
	topo := router.NewBackendSet(cl.backends()...)
	r, err := router.New(cfg, topo)
	if err != nil {
		t.Fatal(err)
	}
	tr := &testRouter{Router: r, topo: topo, cl: cl}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, role := range []router.Role{router.ReadWrite, router.ReadOnly} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if role == router.ReadWrite {
			tr.rw = ln.Addr().String()
		} else {
			tr.ro = ln.Addr().String()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.Serve(ctx, ln, role); err != nil {
				t.Errorf("serve %v: %v", role, err)
			}
		}()
	}
	t.Cleanup(func() {
		cancel()
		r.Close()
		wg.Wait()
	})
	return tr
}

// refreshLSN copies each standby's replay position into the topology, as
// the agent's health loop would.
func (tr *testRouter) refreshLSN(t *testing.T) {
	t.Helper()
	ctx := testContext(t)
	for i, st := range tr.cl.standbys {
		s := st.Status(ctx)
		tr.topo.Update(tr.cl.names[i+1], func(b *router.Backend) { b.ReplayLSN = uint64(s.ReplayedLSN) })
	}
}

func connString(addr, user, password string) string {
	host, port, _ := net.SplitHostPort(addr)
	s := fmt.Sprintf("host=%s port=%s user=%s dbname=postgres sslmode=disable connect_timeout=10", host, port, user)
	if password != "" {
		s += " password=" + password
	}
	return s
}

func connect(t *testing.T, addr, user, password string) *pgx.Conn {
	t.Helper()
	ctx := testContext(t)
	c, err := pgx.Connect(ctx, connString(addr, user, password))
	if err != nil {
		t.Fatalf("connect to the router at %s as %s: %v", addr, user, err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// serverOf runs sql, which returns inet_server_port(), and names the
// server that answered.
func (tr *testRouter) serverOf(t *testing.T, c *pgx.Conn, sql string, args ...any) string {
	t.Helper()
	var port int
	if err := c.QueryRow(testContext(t), sql, args...).Scan(&port); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return tr.cl.portName(port)
}

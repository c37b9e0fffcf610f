// Package routing tests the router as the agents run it: the Raft leader
// serves 127.0.0.1's read/write and read-only ports, follows the committed
// cluster state, holds transactions through a switchover and moves with
// leadership. Every agent is its own process; clients are pgbench and pgx.
package routing

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgha/pgha/internal/itest"
	"github.com/pgha/pgha/internal/localcluster"
	"github.com/pgha/pgha/internal/wait"
)

var agentBinary string

func TestMain(m *testing.M) { itest.Main(m, &agentBinary) }

// startCluster brings up three agents and waits until the router answers.
func startCluster(t *testing.T) (*localcluster.Cluster, string) {
	lc := itest.NewCluster(t, agentBinary, 3)
	if err := lc.StartAll(); err != nil {
		t.Fatal(err)
	}
	v := itest.WaitHealthy(t, lc, 3, 2*time.Minute)
	wait.For(t, 30*time.Second, "the router to answer on "+lc.RouterAddr(), func() (bool, string) {
		conn, err := dialRouter(context.Background(), lc.RouterAddr())
		if err != nil {
			return false, err.Error()
		}
		conn.Close(context.Background())
		return true, ""
	})
	return lc, itest.Primary(v)
}

func dialRouter(ctx context.Context, addr string) (*pgx.Conn, error) {
	host, port, _ := net.SplitHostPort(addr)
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=disable connect_timeout=3", host, port))
}

// pgbench runs pgbench against addr and returns its combined output.
func pgbench(ctx context.Context, addr string, args ...string) (string, error) {
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.CommandContext(ctx, "pgbench", append([]string{"-h", host, "-p", port, "-U", "postgres"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

var processedRE = regexp.MustCompile(`number of transactions actually processed: (\d+)`)

func processed(out string) int {
	m := processedRE.FindStringSubmatch(out)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// TestSwitchoverUnderPgbench: a planned switchover while pgbench runs the
// default (writing) mix with prepared statements through the router in
// transaction mode. The router holds new transactions while the primary
// changes and releases them to the new one: pgbench sees no error at all.
func TestSwitchoverUnderPgbench(t *testing.T) {
	lc, old := startCluster(t)
	ctx := context.Background()
	if out, err := pgbench(ctx, lc.RouterAddr(), "-i", "-s", "1", "-q", "postgres"); err != nil {
		t.Fatalf("pgbench -i through the router: %v\n%s", err, out)
	}

	checkReadsAndMetrics(t, lc)

	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	// Rate-limited: on a two-core machine an unthrottled pgbench starves the
	// agents' Raft heartbeats, and a leadership change (which moves the
	// router, dropping its clients) is not what this test is about.
	go func() {
		out, err := pgbench(ctx, lc.RouterAddr(), "-n", "-c", "8", "-j", "2", "-T", "12", "-R", "400", "-M", "prepared", "postgres")
		done <- result{out, err}
	}()
	// Let pgbench get going against the old primary first.
	oldConn := itest.Connect(t, lc.Node(old).PGPort)
	base := itest.QueryInt(t, oldConn, "SELECT count(*) FROM pgbench_history")
	wait.For(t, 20*time.Second, "pgbench to commit on "+old, func() (bool, string) {
		n := itest.QueryInt(t, oldConn, "SELECT count(*) FROM pgbench_history")
		return n > base+100, fmt.Sprintf("%d rows", n-base)
	})
	oldConn.Close(ctx)

	out, err := exec.Command(agentBinary, "switchover", "--api", lc.Nodes()[0].APIURL).CombinedOutput()
	if err != nil {
		t.Fatalf("switchover: %v\n%s", err, out)
	}
	switched := time.Now()
	v := itest.WaitHealthy(t, lc, 3, time.Minute)
	neu := itest.Primary(v)
	if neu == old {
		t.Fatalf("the primary is still %s after the switchover:\n%s", old, out)
	}

	r := <-done
	if r.err != nil || strings.Contains(r.out, "aborted") || strings.Contains(r.out, "error") {
		t.Fatalf("pgbench saw errors through the switchover (%s -> %s): %v\n%s", old, neu, r.err, r.out)
	}
	if processed(r.out) == 0 {
		t.Fatalf("pgbench processed nothing:\n%s", r.out)
	}
	// The transactions after the switchover ran on the new primary.
	conn := itest.Connect(t, lc.Node(neu).PGPort)
	var after int64
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pgbench_history WHERE mtime > $1", switched).Scan(&after); err != nil {
		t.Fatal(err)
	}
	if after == 0 {
		t.Fatalf("no pgbench transaction committed on the new primary %s after the switchover:\n%s", neu, r.out)
	}
	t.Logf("switchover %s -> %s under pgbench: 0 errors, %d transactions, %d on %s after the switch", old, neu, processed(r.out), after, neu)
}

// loadClient runs one client's insert loop through the router and counts
// what happened. Every statement has a deadline: a hang is a failure, not a
// slow success.
type loadClient struct {
	mu     sync.Mutex
	acked  []int64
	errs   []string
	hung   int
	nextID int64
}

func (c *loadClient) run(ctx context.Context, addr string, base int64) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	c.nextID = base
	for ctx.Err() == nil {
		if conn == nil {
			var err error
			if conn, err = dialRouter(ctx, addr); err != nil {
				// The router moves with leadership: a refused connection
				// while no leader serves is expected, and retried.
				select {
				case <-ctx.Done():
				case <-time.After(50 * time.Millisecond):
				}
				continue
			}
		}
		c.nextID++
		id := c.nextID
		sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		_, err := conn.Exec(sctx, "INSERT INTO acked (id) VALUES ($1)", id)
		cancel()
		c.mu.Lock()
		switch {
		case err == nil:
			c.acked = append(c.acked, id)
		case ctx.Err() != nil:
		case errors.Is(err, context.DeadlineExceeded):
			c.hung++
		default:
			c.errs = append(c.errs, err.Error())
		}
		c.mu.Unlock()
		if err != nil {
			conn.Close(context.Background())
			conn = nil
		}
	}
}

func (c *loadClient) ackedCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.acked)
}

// TestFailoverUnderLoad: four clients insert through the router while the
// primary's PostgreSQL is killed, then while the host running the router
// (the Raft leader) is lost. Each in-flight transaction gets an error, none
// hangs, new transactions reach the new primary, and no acknowledged insert
// is missing afterwards.
func TestFailoverUnderLoad(t *testing.T) {
	lc, primary := startCluster(t)
	ctx := context.Background()
	setup, err := dialRouter(ctx, lc.RouterAddr())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := setup.Exec(ctx, "CREATE TABLE acked (id bigint PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	setup.Close(ctx)

	const clients = 4
	lctx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	load := make([]*loadClient, clients)
	for i := range load {
		load[i] = &loadClient{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			load[i].run(lctx, lc.RouterAddr(), int64(i)<<40)
		}()
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			stopLoad()
			wg.Wait()
		}
	}
	defer stop()
	total := func() int {
		n := 0
		for _, c := range load {
			n += c.ackedCount()
		}
		return n
	}
	progress := func(what string) {
		from := total()
		wait.For(t, 60*time.Second, what, func() (bool, string) {
			return total() > from+50, fmt.Sprintf("%d inserts acknowledged since", total()-from)
		})
	}
	progress("inserts through the router")

	// 1. The primary's PostgreSQL dies; its agent and the router live on.
	if err := lc.KillPostgres(lc.Node(primary)); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 60*time.Second, "a new primary", func() (bool, string) {
		v, err := lc.View(ctx)
		if err != nil {
			return false, err.Error()
		}
		p := itest.Primary(v)
		return p != "" && p != primary, "primary " + p
	})
	progress("inserts on the new primary after killing " + primary + "'s PostgreSQL")

	// 2. The host running the router is lost: the router moves with Raft
	// leadership and clients reconnect to the same address.
	v, err := lc.View(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leader := v.RaftLeader
	lc.KillHost(lc.Node(leader))
	wait.For(t, 60*time.Second, "a new Raft leader", func() (bool, string) {
		v, err := lc.View(ctx)
		if err != nil {
			return false, err.Error()
		}
		return v.RaftLeader != "" && v.RaftLeader != leader, "leader " + v.RaftLeader
	})
	progress("inserts through the new leader's router after losing " + leader)
	stop()

	var errs []string
	hung := 0
	var acked []int64
	for _, c := range load {
		errs = append(errs, c.errs...)
		hung += c.hung
		acked = append(acked, c.acked...)
	}
	if hung > 0 {
		t.Errorf("%d statements hung for 15s instead of failing cleanly", hung)
	}
	// Each client may lose the transaction in flight at each of the two
	// faults (and its reconnect attempt while the router moves); anything
	// more means the router sent new transactions to a dead primary.
	if len(errs) > clients*4 {
		t.Errorf("%d client errors for %d clients and 2 faults:\n%s", len(errs), clients, summarize(errs))
	}
	t.Logf("%d inserts acknowledged, %d client errors (%d clients, 2 faults):\n%s", len(acked), len(errs), clients, summarize(errs))

	// No acknowledged insert is missing on the final primary.
	var final string
	wait.For(t, 60*time.Second, "a writable primary", func() (bool, string) {
		w := itest.WritablePrimaries(lc)
		if len(w) != 1 {
			return false, fmt.Sprintf("writable: %v", w)
		}
		final = w[0]
		return true, ""
	})
	conn := itest.Connect(t, lc.Node(final).PGPort)
	have := map[int64]bool{}
	rows, err := conn.Query(ctx, "SELECT id FROM acked")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		have[id] = true
	}
	missing := 0
	for _, id := range acked {
		if !have[id] {
			missing++
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged inserts are missing on the final primary %s", missing, len(acked), final)
	}
}

// summarize counts identical error messages.
func summarize(errs []string) string {
	counts := map[string]int{}
	var order []string
	for _, e := range errs {
		if counts[e] == 0 {
			order = append(order, e)
		}
		counts[e]++
	}
	var b strings.Builder
	for _, e := range order {
		fmt.Fprintf(&b, "  %4d × %s\n", counts[e], e)
	}
	return b.String()
}

// checkReadsAndMetrics: plain SELECTs on the read/write port land on the
// standbys (SHOW POOL_NODES counts them there), and the leader's /metrics
// carries the router's counters by route.
func checkReadsAndMetrics(t *testing.T, lc *localcluster.Cluster) {
	ctx := context.Background()
	conn, err := dialRouter(ctx, lc.RouterAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// Right after pgbench -i the standbys may still be more than max_lag
	// behind (then reads rightly go to the primary): poll.
	wait.For(t, 30*time.Second, "plain SELECTs on the read/write port to reach a standby", func() (bool, string) {
		for i := 0; i < 20; i++ {
			if _, err := conn.Exec(ctx, "SELECT count(*) FROM pgbench_branches"); err != nil {
				t.Fatal(err)
			}
		}
		n := standbySelects(t, conn)
		return n > 0, fmt.Sprintf("SHOW POOL_NODES counts %d SELECTs on standbys", n)
	})

	v, err := lc.View(ctx)
	if err != nil {
		t.Fatal(err)
	}
	body := httpGet(t, lc.Node(v.RaftLeader).APIURL+"/metrics")
	for _, want := range []string{`pgha_router_queries_total{route="read_standby"}`, `pgha_raft_leader 1`, `pgha_cluster_epoch `, `pgha_member_lag_bytes{member=`} {
		if !strings.Contains(body, want) {
			t.Errorf("the leader's /metrics has no %s", want)
		}
	}
}

func httpGet(t *testing.T, url string) string {
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return string(b)
}

// standbySelects sums SHOW POOL_NODES' select_cnt over the standbys.
func standbySelects(t *testing.T, conn *pgx.Conn) int {
	rows, err := conn.Query(context.Background(), "SHOW POOL_NODES", pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	total := 0
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		cols := map[string]string{}
		for i, f := range rows.FieldDescriptions() {
			cols[f.Name] = fmt.Sprint(vals[i])
		}
		if cols["role"] == "standby" {
			n, _ := strconv.Atoi(cols["select_cnt"])
			total += n
		}
	}
	return total
}

// TestRouterTLSAndSCRAM: configured as in production (router.tls_cert,
// router.auth_file, a hostssl scram-sha-256 rule), the leader's router
// serves psql with sslmode=verify-full and SCRAM end to end, and refuses a
// clear-text client and a wrong password with PostgreSQL's own errors.
func TestRouterTLSAndSCRAM(t *testing.T) {
	lc := itest.NewCluster(t, agentBinary, 3, func(o *localcluster.Options) { o.SecureRouter = true })
	if err := lc.StartAll(); err != nil {
		t.Fatal(err)
	}
	itest.WaitHealthy(t, lc, 3, 2*time.Minute)
	pw, err := os.ReadFile(lc.RouterPasswordFile())
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(lc.RouterAddr())
	psql := func(password, conninfo string) (string, error) {
		cmd := exec.Command("psql", "-X", "-A", "-t", "-c", "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
			fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres connect_timeout=5 %s", host, port, conninfo))
		cmd.Env = append(os.Environ(), "PGPASSWORD="+password)
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	good := strings.TrimSpace(string(pw))
	wait.For(t, 30*time.Second, "psql sslmode=verify-full through the router", func() (bool, string) {
		out, err := psql(good, "sslmode=verify-full sslrootcert="+lc.RouterCA())
		// The router's TLS ends at the router; its server connection is
		// plain loopback, so pg_stat_ssl says f: what matters is that
		// psql verified the router's certificate and logged in.
		return err == nil && strings.HasPrefix(out, "f|"), fmt.Sprintf("%v: %s", err, out)
	})
	if out, err := psql(good, "sslmode=disable"); err == nil || !strings.Contains(out, "no pg_hba.conf entry") {
		t.Errorf("a clear-text client was not refused by the hostssl rule: %v: %s", err, out)
	}
	if out, err := psql("wrong-"+good, "sslmode=require"); err == nil || !strings.Contains(out, `password authentication failed for user "postgres"`) {
		t.Errorf("a wrong password did not get PostgreSQL's error: %v: %s", err, out)
	}
	// The router asks for SCRAM-SHA-256, not a clear-text password.
	if mechs := authRequest(t, lc.RouterAddr(), lc.RouterCA()); !slices.Contains(mechs, "SCRAM-SHA-256") {
		t.Errorf("the router's authentication request offers %v, want SCRAM-SHA-256", mechs)
	}
}

// authRequest opens a TLS session like libpq (SSLRequest, then the startup
// message) and returns the SASL mechanisms of the router's authentication
// request (nil for any other kind of request).
func authRequest(t *testing.T, addr, caFile string) []string {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	req, err := (&pgproto3.SSLRequest{}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(req); err != nil {
		t.Fatal(err)
	}
	answer := make([]byte, 1)
	if _, err := io.ReadFull(conn, answer); err != nil || answer[0] != 'S' {
		t.Fatalf("SSLRequest answered %q, %v; want 'S'", answer, err)
	}
	ca, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	tc := tls.Client(conn, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	fe := pgproto3.NewFrontend(tc, tc)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "postgres", "database": "postgres"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	msg, err := fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	if sasl, ok := msg.(*pgproto3.AuthenticationSASL); ok {
		return sasl.AuthMechanisms
	}
	t.Logf("the router answered the startup with %T", msg)
	return nil
}

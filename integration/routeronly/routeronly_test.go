// Package routeronly tests `pgha-agent router`, the router-only process
// of an application host, beside a loopback cluster with mutual TLS: two
// router-only processes (their own OS processes, from the built binary)
// follow the agents' GET /router/topology with the cluster CA and the API
// token; one reaches the agents directly, the other through TCP relays
// the test can cut, as a network partition would.
package routeronly

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/internal/itest"
	"github.com/pgha/pgha/internal/localcluster"
	"github.com/pgha/pgha/internal/wait"
)

var agentBinary string

func TestMain(m *testing.M) { itest.Main(m, &agentBinary) }

// fenceTimeout is the cluster's timing.fence_timeout (the agents' default).
const fenceTimeout = agent.DefaultFenceTimeout

// primaryWait is the cluster-wide router.primary_wait the test sets, so a
// refused write fails in a second rather than the default ten.
const primaryWait = time.Second

func TestRouterOnly(t *testing.T) {
	lc := itest.NewCluster(t, agentBinary, 3, itest.WithTLS)
	if err := lc.StartAll(); err != nil {
		t.Fatal(err)
	}
	itest.WaitHealthy(t, lc, 3, 2*time.Minute)
	cli(t, lc, "edit-config", "--set", "router.primary_wait="+primaryWait.String(), "--yes")

	direct := startRouter(t, lc, "direct", nil)
	var relays []*relay
	for _, n := range lc.Nodes() {
		relays = append(relays, newRelay(t, fmt.Sprintf("127.0.0.1:%d", n.APIPort)))
	}
	cut := startRouter(t, lc, "cut", relays)
	routers := []*routerProc{direct, cut}
	setup := itest.Connect(t, lc.Node(itest.PrimaryOf(t, itest.WaitHealthy(t, lc, 3, time.Minute)).Name).PGPort)
	if _, err := setup.Exec(context.Background(), "CREATE TABLE IF NOT EXISTS routed (id bigserial PRIMARY KEY, via text, attempt bigint)"); err != nil {
		t.Fatalf("create table: %v", err)
	}
	setup.Close(context.Background())

	t.Run("TopologyNeedsCredentials", func(t *testing.T) {
		// The CA but neither a client certificate nor the token: refused.
		resp, err := lc.HTTPClient().Get(lc.Nodes()[1].APIURL + "/router/topology")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("GET /router/topology without credentials: %s, want 401", resp.Status)
		}
	})

	t.Run("WritesToPrimaryReadsToStandbys", func(t *testing.T) {
		primary := itest.PrimaryOf(t, itest.WaitHealthy(t, lc, 3, time.Minute))
		for _, r := range routers {
			wait.For(t, 20*time.Second, r.name+" to write to the primary "+primary.Name, func() (bool, string) {
				port, err := r.write(context.Background(), 0)
				return err == nil && port == lc.Node(primary.Name).PGPort, fmt.Sprintf("port %d err %v", port, err)
			})
			standbys := map[int]bool{}
			for _, n := range lc.Nodes() {
				if n.Name != primary.Name {
					standbys[n.PGPort] = true
				}
			}
			wait.For(t, 10*time.Second, r.name+"'s read-only port to read from a standby", func() (bool, string) {
				port, err := r.read(context.Background())
				return err == nil && standbys[port], fmt.Sprintf("port %d err %v", port, err)
			})
		}
	})

	t.Run("ShowPoolNodesMatchesTheLeader", func(t *testing.T) {
		leader := routerProc{name: "leader", rw: lc.RouterAddr()}
		wait.For(t, 10*time.Second, "SHOW POOL_NODES to agree on every router", func() (bool, string) {
			want, err := leader.poolNodes(context.Background())
			if err != nil {
				return false, "leader's router: " + err.Error()
			}
			for _, r := range routers {
				got, err := r.poolNodes(context.Background())
				if err != nil {
					return false, r.name + ": " + err.Error()
				}
				if !slices.Equal(got, want) {
					return false, fmt.Sprintf("%s: %v, leader's router: %v", r.name, got, want)
				}
			}
			return len(want) == 3, fmt.Sprint(want)
		})
	})

	t.Run("FailoverReachesBoth", func(t *testing.T) {
		old := itest.PrimaryOf(t, itest.WaitHealthy(t, lc, 3, time.Minute))
		if err := lc.KillPostgres(lc.Node(old.Name)); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		leader := &routerProc{name: "leader", rw: lc.RouterAddr()}
		// Each router's first write to a new primary, probed side by side,
		// each by its own goroutine.
		var mu sync.Mutex
		first := map[string]time.Duration{}
		var probes sync.WaitGroup
		for _, r := range []*routerProc{leader, direct, cut} {
			probes.Add(1)
			go func() {
				defer probes.Done()
				_ = wait.Until(context.Background(), time.Minute, func() (bool, string) {
					ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
					port, err := r.write(ctx, 0)
					cancel()
					if err != nil || port == lc.Node(old.Name).PGPort {
						return false, ""
					}
					mu.Lock()
					first[r.name] = time.Since(killed)
					mu.Unlock()
					return true, ""
				})
			}()
		}
		probes.Wait()
		if len(first) != 3 {
			t.Fatalf("within a minute of killing %s's PostgreSQL, only these routers wrote to a new primary: %v", old.Name, first)
		}
		t.Logf("first write to the new primary after the kill: %v (health interval %v)", first, agent.DefaultHealthInterval)
		for _, r := range routers {
			// Probed in turns of up to a few hundred milliseconds each: one
			// health interval plus one turn of the probe loop.
			if d := first[r.name] - first["leader"]; d > agent.DefaultHealthInterval+time.Second {
				t.Errorf("%s wrote to the new primary %v after the leader's router did; want within a health interval (%v) and a probe turn", r.name, d, agent.DefaultHealthInterval)
			}
		}
		itest.WaitHealthy(t, lc, 3, 2*time.Minute)
	})

	t.Run("CutOffRouterFencesAndRecovers", func(t *testing.T) {
		before := itest.PrimaryOf(t, itest.WaitHealthy(t, lc, 3, time.Minute))
		wait.For(t, 20*time.Second, "cut to write to "+before.Name, func() (bool, string) {
			port, err := cut.write(context.Background(), 0)
			return err == nil && port == lc.Node(before.Name).PGPort, fmt.Sprintf("port %d err %v", port, err)
		})
		for _, r := range relays {
			r.stop()
		}
		severed := time.Now()
		// Write attempts through the cut router, one at a time, until one
		// is refused; each records when it was sent.
		var refusedAt time.Duration
		attempt := int64(0)
		for refusedAt == 0 {
			attempt++
			sent := time.Since(severed)
			ctx, cancel := context.WithTimeout(context.Background(), primaryWait+3*time.Second)
			_, err := cut.write(ctx, attempt)
			cancel()
			switch {
			case err == nil && sent > fenceTimeout:
				t.Fatalf("a write sent %v after the router was cut off succeeded; the fence timeout is %v", sent, fenceTimeout)
			case err == nil:
			case sent <= fenceTimeout && pgCode(err) == "08006":
				// In flight when the router fenced: it closes its
				// connections to the primary, and says the outcome is
				// unknown. Only a write sent before the fence may see it.
			case !isRouterRefusal(err):
				t.Fatalf("write %d through the cut-off router: %v; want success or the router's refusal (57P03)", attempt, err)
			default:
				refusedAt = sent
			}
			if sent > fenceTimeout+primaryWait+5*time.Second {
				t.Fatalf("still writing %v after the cut", sent)
			}
		}
		t.Logf("cut-off router refused the first write sent %v after the cut (fence timeout %v)", refusedAt.Round(time.Millisecond), fenceTimeout)

		// A switchover while it is cut off: the router keeps refusing, and
		// never with an error from a server (a write sent to the deposed
		// primary would fail there with 25006, read-only transaction).
		out := cli(t, lc, "switchover")
		after := itest.PrimaryOf(t, itest.WaitHealthy(t, lc, 3, time.Minute))
		if after.Name == before.Name {
			t.Fatalf("the primary is still %s after the switchover:\n%s", before.Name, out)
		}
		for i := 0; i < 3; i++ {
			attempt++
			ctx, cancel := context.WithTimeout(context.Background(), primaryWait+3*time.Second)
			port, err := cut.write(ctx, attempt)
			cancel()
			if err == nil || !isRouterRefusal(err) {
				t.Fatalf("after the switchover, write %d through the cut-off router: port %d err %v; want the router's refusal", attempt, port, err)
			}
		}
		// Nothing the cut-off router refused reached any server: no row of
		// a refused attempt on the new primary.
		conn := itest.Connect(t, lc.Node(after.Name).PGPort)
		if n := itest.QueryInt(t, conn, fmt.Sprintf("SELECT count(*) FROM routed WHERE via = 'cut' AND attempt >= %d", attempt-3)); n != 0 {
			t.Fatalf("%d refused writes are on the new primary", n)
		}

		for _, r := range relays {
			r.start(t)
		}
		healed := time.Now()
		wait.For(t, 20*time.Second, "cut to write to the new primary "+after.Name, func() (bool, string) {
			port, err := cut.write(context.Background(), 0)
			return err == nil && port == lc.Node(after.Name).PGPort, fmt.Sprintf("port %d err %v", port, err)
		})
		t.Logf("reconnected router wrote to the new primary %v after the relays came back", time.Since(healed).Round(time.Millisecond))
	})
}

// isRouterRefusal: the router's own "no primary available" (57P03).
func isRouterRefusal(err error) bool { return pgCode(err) == "57P03" }

// pgCode is the SQLSTATE of err ("" if it carries none).
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// cli runs a pgha-agent command against the cluster as the operator
// would (token from PGHA_TOKEN_FILE, set by itest.NewCluster).
func cli(t *testing.T, lc *localcluster.Cluster, args ...string) string {
	t.Helper()
	var apis []string
	for _, n := range lc.Nodes() {
		apis = append(apis, n.APIURL)
	}
	args = append(args, "--api", strings.Join(apis, ","), "--ca", lc.CA())
	out, err := exec.Command(agentBinary, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("pgha-agent %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// routerProc is a router-only process (or, for comparisons, the leader's
// router: rw only).
type routerProc struct {
	name   string
	rw, ro string
}

// startRouter writes a router.yaml and starts `pgha-agent router` with
// it, pointed at the agents or at relays; it is stopped (SIGTERM, by PID)
// when the test ends.
func startRouter(t *testing.T, lc *localcluster.Cluster, name string, relays []*relay) *routerProc {
	t.Helper()
	dir := t.TempDir()
	var agents []string
	for i, n := range lc.Nodes() {
		if relays != nil {
			agents = append(agents, "https://"+relays[i].addr)
		} else {
			agents = append(agents, n.APIURL)
		}
	}
	rw, err := itest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ro, err := itest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`agents: [%s]
tls:
  ca: %s
token_file: %s
router:
  listen: 127.0.0.1
  port: %d
  read_only_port: %d
  hba: ["host all all 127.0.0.1/32 trust"]
`, strings.Join(agents, ", "), lc.CA(), lc.TokenFile(), rw, ro)
	path := filepath.Join(dir, "router.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "router.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(agentBinary, "router", "--config", path)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); logFile.Close(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			t.Errorf("router %s did not stop within 10s of SIGTERM", name)
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			b, err := os.ReadFile(logPath)
			t.Logf("---- router-only %s log (tail; %d bytes, %v) ----\n%s", name, len(b), err, itest.TailLines(string(b), 40))
		}
	})
	return &routerProc{name: name, rw: fmt.Sprintf("127.0.0.1:%d", rw), ro: fmt.Sprintf("127.0.0.1:%d", ro)}
}

func connect(ctx context.Context, addr string) (*pgx.Conn, error) {
	host, port, _ := net.SplitHostPort(addr)
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=disable connect_timeout=3", host, port))
}

// write inserts a row through the router's read/write port and returns
// the port of the server that took it.
func (r *routerProc) write(ctx context.Context, attempt int64) (int, error) {
	conn, err := connect(ctx, r.rw)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var port int
	err = conn.QueryRow(ctx, "INSERT INTO routed (via, attempt) VALUES ($1, $2) RETURNING inet_server_port()", r.name, attempt).Scan(&port)
	return port, err
}

// read runs a read on the read-only port and returns the server's port.
func (r *routerProc) read(ctx context.Context) (int, error) {
	conn, err := connect(ctx, r.ro)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var port int
	err = conn.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port)
	return port, err
}

// poolNodes is SHOW POOL_NODES's node_id, hostname, port, status and
// role columns, one string per node (the counters differ by router).
func (r *routerProc) poolNodes(ctx context.Context) ([]string, error) {
	conn, err := connect(ctx, r.rw)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, "SHOW POOL_NODES", pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		v, err := rows.Values()
		if err != nil {
			return nil, err
		}
		out = append(out, fmt.Sprintf("%v %v %v %v %v", v[0], v[1], v[2], v[3], v[5]))
	}
	return out, rows.Err()
}

// relay forwards TCP connections from its own loopback port to an agent's
// API; stop closes its listener and every connection, as a partition
// would, and start listens again on the same port.
type relay struct {
	addr, target string
	mu           sync.Mutex
	ln           net.Listener
	conns        map[net.Conn]bool
}

func newRelay(t *testing.T, target string) *relay {
	t.Helper()
	port, err := itest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{addr: fmt.Sprintf("127.0.0.1:%d", port), target: target, conns: map[net.Conn]bool{}}
	r.start(t)
	t.Cleanup(r.stop)
	return r
}

func (r *relay) start(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", r.addr)
	if err != nil {
		t.Fatalf("relay listen %s: %v", r.addr, err)
	}
	r.mu.Lock()
	r.ln = ln
	r.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go r.forward(c)
		}
	}()
}

func (r *relay) forward(c net.Conn) {
	up, err := net.DialTimeout("tcp", r.target, 2*time.Second)
	if err != nil {
		c.Close()
		return
	}
	if !r.track(c, up) {
		return
	}
	go func() { io.Copy(up, c); up.Close() }()
	io.Copy(c, up)
	c.Close()
}

// track registers a connection pair unless the relay was stopped meanwhile.
func (r *relay) track(cs ...net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ln == nil {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		r.conns[c] = true
	}
	return true
}

func (r *relay) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ln != nil {
		r.ln.Close()
		r.ln = nil
	}
	for c := range r.conns {
		c.Close()
		delete(r.conns, c)
	}
}

// Package itest is the toolkit of the end-to-end tests and benchmarks: it
// builds the agent binary, runs loopback clusters of real agent processes
// (internal/localcluster), checks them, and writes numbered rows to whatever
// node is the primary, and optionally straight to every host, while
// recording every acknowledgement (Writer, which the loopback and the
// namespaced clusters share).
package itest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/internal/localcluster"
	"github.com/pgha/pgha/internal/wait"
	"github.com/pgha/pgha/postgres/pgtest"
)

// BuildAgent builds cmd/pgha-agent into a fresh directory, with the race
// detector when this binary has it (go test -race).
func BuildAgent() (string, func(), error) {
	dir, err := os.MkdirTemp("", "pgha-bin-")
	if err != nil {
		return "", nil, err
	}
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	bin := filepath.Join(dir, "pgha-agent")
	args := []string{"build", "-o", bin}
	if raceEnabled() {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "./cmd/pgha-agent")...)
	build.Dir = root
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("build pgha-agent: %w", err)
	}
	return bin, func() { os.RemoveAll(dir) }, nil
}

// Main is the TestMain of the end-to-end packages: it builds the agent into
// *binary, runs the tests and removes the build. Under go test -race the
// agents are built with the race detector too, and a race report from any
// agent fails the package.
func Main(m *testing.M, binary *string) {
	bin, cleanup, err := BuildAgent()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	*binary = bin
	races := ""
	if raceEnabled() {
		if races, err = raceLogDir(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	if races != "" {
		if reportRaces(races) && code == 0 {
			code = 1
		}
		os.RemoveAll(races)
	}
	cleanup()
	os.Exit(code)
}

// raceEnabled: this binary was built with -race.
func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// raceLogDir makes a directory every agent process can write to and points
// the race detector of the processes this one starts at it (GORACE
// log_path), so that reports do not drown in the agents' logs.
func raceLogDir() (string, error) {
	dir, err := os.MkdirTemp("", "pgha-race-")
	if err != nil {
		return "", err
	}
	// The agents may run as another OS user (postgres when root).
	if err := os.Chmod(dir, 0o777); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" log_path="+filepath.Join(dir, "agent")))
	return dir, nil
}

// reportRaces prints every race report an agent left in dir and says
// whether there was one.
func reportRaces(dir string) bool {
	files, _ := filepath.Glob(filepath.Join(dir, "agent.*"))
	found := false
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil || len(b) == 0 {
			continue
		}
		found = true
		fmt.Fprintf(os.Stderr, "itest: race detector report from agent process %s:\n%s\n", strings.TrimPrefix(filepath.Ext(f), "."), b)
	}
	return found
}

// FreePort is a TCP port on 127.0.0.1 that nothing listens on right now,
// never the same one twice in a process (pgtest.PickPort).
func FreePort() (int, error) { return pgtest.PickPort() }

// AwaitHealthy polls until the cluster has one running primary and
// members-1 streaming standbys, or the timeout passes (an error with the
// last view). WaitHealthy is the same for a test.
func AwaitHealthy(ctx context.Context, lc *localcluster.Cluster, members int, timeout time.Duration) (agent.ClusterView, error) {
	var v agent.ClusterView
	err := wait.Until(ctx, timeout, func() (bool, string) {
		var err error
		if v, err = lc.View(ctx); err != nil {
			return false, err.Error()
		}
		return localcluster.Healthy(v, members), Describe(v)
	})
	if err != nil {
		return v, fmt.Errorf("%d healthy members: %w", members, err)
	}
	return v, nil
}

// Primary is the name of the member the view names primary ("" if none).
func Primary(v agent.ClusterView) string {
	for _, m := range v.Members {
		if m.Role == "leader" {
			return m.Name
		}
	}
	return ""
}

// NewCluster prepares a loopback cluster on free ports; every process it
// starts is stopped when the test ends, also when it fails. opts adjust
// the options (WithTLS).
//
// It sets PGHA_TOKEN_FILE to the cluster's API token for the test, so the
// pgha-agent commands a test runs authenticate as an operator's would
// after the demo's `export PGHA_TOKEN_FILE=...`.
func NewCluster(t *testing.T, binary string, nodes int, opts ...func(*localcluster.Options)) *localcluster.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test; skipped with -short")
	}
	bin := pgtest.BinDir(t)
	var api, raft, pg []int
	for i := 0; i < nodes; i++ {
		api = append(api, pgtest.FreePort(t))
		raft = append(raft, pgtest.FreePort(t))
		pg = append(pg, pgtest.FreePort(t))
	}
	o := localcluster.Options{
		Dir: pgtest.TempDir(t), Binary: binary, BinDir: bin, Name: "itest",
		Nodes: nodes, APIPorts: api, RaftPorts: raft, PGPorts: pg,
		RouterPort: pgtest.FreePort(t), RouterReadOnlyPort: pgtest.FreePort(t),
		LoopInterval: 200 * time.Millisecond,
	}
	for _, f := range opts {
		f(&o)
	}
	lc, err := localcluster.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("PGHA_TOKEN_FILE", lc.TokenFile())
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range lc.Nodes() {
				b, _ := os.ReadFile(n.Log)
				t.Logf("---- %s agent log (tail) ----\n%s", n.Name, TailLines(string(b), 60))
				b, _ = os.ReadFile(n.PGData + ".log")
				t.Logf("---- %s postgres log (tail) ----\n%s", n.Name, TailLines(string(b), 30))
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := lc.StopAll(ctx); err != nil {
			t.Errorf("stop cluster: %v", err)
		}
		for _, n := range lc.Nodes() {
			if pid := n.PostmasterPID(); pid != 0 && ProcessAlive(pid) {
				t.Errorf("%s: postmaster %d still running after StopAll", n.Name, pid)
			}
		}
	})
	return lc
}

// WithTLS makes NewCluster's cluster use agent-to-agent mutual TLS.
func WithTLS(o *localcluster.Options) { o.TLS = true }

// WaitHealthy is AwaitHealthy for a test: it fails t when the cluster is
// not healthy within timeout.
func WaitHealthy(t testing.TB, lc *localcluster.Cluster, members int, timeout time.Duration) agent.ClusterView {
	t.Helper()
	v, err := AwaitHealthy(context.Background(), lc, members, timeout)
	if err != nil {
		t.Fatalf("waiting for %v", err)
	}
	return v
}

// Describe is a one-line summary of a cluster view for failure messages.
func Describe(v agent.ClusterView) string {
	var parts []string
	for _, m := range v.Members {
		s := fmt.Sprintf("%s=%s/%s", m.Name, m.Role, m.State)
		if m.Problem != "" {
			s += "(" + m.Problem + ")"
		}
		parts = append(parts, s)
	}
	return fmt.Sprintf("epoch %d leader %s [%s] problems %v", v.Epoch, v.RaftLeader, strings.Join(parts, " "), v.Problems)
}

// PrimaryOf returns the member the view names primary.
func PrimaryOf(t testing.TB, v agent.ClusterView) agent.MemberStatus {
	t.Helper()
	for _, m := range v.Members {
		if m.Role == "leader" {
			return m
		}
	}
	t.Fatalf("no primary in %s", Describe(v))
	return agent.MemberStatus{}
}

// Connect opens a session as postgres (trusted over loopback in these clusters).
func Connect(t testing.TB, port int) *pgx.Conn {
	t.Helper()
	conn, err := Dial(context.Background(), port)
	if err != nil {
		t.Fatalf("connect to 127.0.0.1:%d: %v", port, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// Dial connects as postgres to 127.0.0.1:port within two seconds.
func Dial(ctx context.Context, port int) (*pgx.Conn, error) {
	cfg, err := loopbackConfig(port)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return pgx.ConnectConfig(ctx, cfg)
}

// QueryInt runs a query returning one integer.
func QueryInt(t testing.TB, conn *pgx.Conn, sql string) int64 {
	t.Helper()
	var n int64
	if err := conn.QueryRow(context.Background(), sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// WritablePrimaries asks every node's PostgreSQL directly whether it accepts
// writes: the ground truth for "never two primaries".
func WritablePrimaries(lc *localcluster.Cluster) []string {
	var out []string
	for _, n := range lc.Nodes() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := Dial(ctx, n.PGPort)
		if err == nil {
			var ro bool
			if conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&ro) == nil && !ro {
				out = append(out, n.Name)
			}
			conn.Close(context.Background())
		}
		cancel()
	}
	return out
}

// ProcessAlive reports whether pid exists.
func ProcessAlive(pid int) bool {
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	return p.Signal(syscall.Signal(0)) == nil
}

// TailLines returns the last n lines of s.
func TailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

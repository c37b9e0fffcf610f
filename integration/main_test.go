// Package integration holds end-to-end tests: real pgha-agent processes
// (built from ./cmd/pgha-agent), each with its own real PostgreSQL, talking
// Raft over TCP on 127.0.0.1.
package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/examples/localcluster"
	"github.com/pgha/pgha/postgres/pgtest"
)

// agentBinary is built once by TestMain.
var agentBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pgha-integration-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBinary = filepath.Join(dir, "pgha-agent")
	build := exec.Command("go", "build", "-o", agentBinary, "../cmd/pgha-agent")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build pgha-agent:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// newCluster prepares a loopback cluster on free ports; every process it
// starts is stopped when the test ends, also when it fails.
func newCluster(t *testing.T, nodes int) *localcluster.Cluster {
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
	lc, err := localcluster.New(localcluster.Options{
		Dir: pgtest.TempDir(t), Binary: agentBinary, BinDir: bin, Name: "itest",
		Nodes: nodes, APIPorts: api, RaftPorts: raft, PGPorts: pg,
		LoopInterval: 200 * time.Millisecond, HealthInterval: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range lc.Nodes() {
				b, _ := os.ReadFile(n.Log)
				t.Logf("---- %s agent log (tail) ----\n%s", n.Name, tailLines(string(b), 40))
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := lc.StopAll(ctx); err != nil {
			t.Errorf("stop cluster: %v", err)
		}
		for _, n := range lc.Nodes() {
			if pid := n.PostmasterPID(); pid != 0 && processAlive(pid) {
				t.Errorf("%s: postmaster %d still running after StopAll", n.Name, pid)
			}
		}
	})
	return lc
}

// waitFor polls cond until it returns true or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, state := cond()
		if ok {
			return
		}
		if state != "" {
			last = state
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; last seen: %s", timeout, what, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitHealthy waits for one running primary and members-1 streaming standbys.
func waitHealthy(t *testing.T, lc *localcluster.Cluster, members int, timeout time.Duration) agent.ClusterView {
	t.Helper()
	var v agent.ClusterView
	waitFor(t, timeout, fmt.Sprintf("%d healthy members", members), func() (bool, string) {
		var err error
		v, err = lc.View(context.Background())
		if err != nil {
			return false, err.Error()
		}
		return localcluster.Healthy(v, members), describe(v)
	})
	return v
}

func describe(v agent.ClusterView) string {
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

func primaryOf(t *testing.T, v agent.ClusterView) agent.MemberStatus {
	t.Helper()
	for _, m := range v.Members {
		if m.Role == "leader" {
			return m
		}
	}
	t.Fatalf("no primary in %s", describe(v))
	return agent.MemberStatus{}
}

// connect opens a session as postgres (trusted over loopback in these clusters).
func connect(t *testing.T, port int) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable connect_timeout=5", port))
	if err != nil {
		t.Fatalf("connect to 127.0.0.1:%d: %v", port, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func queryInt(t *testing.T, conn *pgx.Conn, sql string) int64 {
	t.Helper()
	var n int64
	if err := conn.QueryRow(context.Background(), sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// httpStatus does one request and returns the status code.
func httpStatus(t *testing.T, method, url string) int {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func getJSON(t *testing.T, url string, into any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
		t.Fatalf("decode %s: %v", url, err)
	}
}

func processAlive(pid int) bool {
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	return p.Signal(syscall.Signal(0)) == nil
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

package agent

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
)

// restAgent is a real agent whose Raft is a single-node cluster on
// loopback, with an API token and no PostgreSQL running: enough for every
// REST handler to run for real.
func restAgent(t testing.TB) (*Agent, http.Handler) {
	dir := t.TempDir()
	a := unstartedAgent(t, dir, "node1")
	log := slog.New(slog.DiscardHandler)
	node, err := consensus.Open(consensus.Config{ID: "node1", BindAddr: "127.0.0.1:0", Dir: filepath.Join(dir, "raft"), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	if err := node.Bootstrap([]consensus.Server{{ID: "node1", Addr: node.Addr()}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !node.IsLeader() {
		if time.Now().After(deadline) {
			t.Fatal("single-node raft did not elect itself")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ctx := context.Background()
	for _, c := range []consensus.Command{
		consensus.UpsertMember(consensus.Member{Name: "node1", RaftAddr: node.Addr(), APIURL: "http://127.0.0.1:1", PGHost: "127.0.0.1", PGPort: 1}),
		consensus.InitCluster("fuzz", "node1"),
	} {
		if err := node.Apply(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	a.node = node
	a.nodeRef.Store(node)
	return a, a.routes()
}

// unstartedAgent is a real agent named name, configured for loopback in dir,
// with an API token, no Raft node and no PostgreSQL running.
func unstartedAgent(t testing.TB, dir, name string) *Agent {
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("fuzz-token-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	raw := strings.NewReplacer(
		`"10.0.0.11:8300"`, `"127.0.0.1:1"`, `"10.0.0.12:8300"`, `"127.0.0.1:2"`, `"10.0.0.13:8300"`, `"127.0.0.1:3"`,
		`"http://10.0.0.11:8008"`, `"http://127.0.0.1:1"`, `"http://10.0.0.12:8008"`, `"http://127.0.0.1:2"`, `"http://10.0.0.13:8008"`, `"http://127.0.0.1:3"`,
		"host: 10.0.0.11", "host: 127.0.0.1",
		"/var/lib/pgha", filepath.Join(dir, "agent"),
		"/var/lib/postgresql/15/pgha", filepath.Join(dir, "pgdata"),
	).Replace(validConfig(t)) + "api: {auth_token_file: " + token + "}\n"
	cfg, err := ParseConfig([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Postgres.SocketDir = dir
	if os.Geteuid() == 0 {
		cfg.Postgres.RunAs = "postgres" // nothing is started; New only checks
	}
	if cfg.Postgres.BinDir = postgres.FindBinDir(); cfg.Postgres.BinDir == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("PostgreSQL binaries not found")
		}
		t.Skip("PostgreSQL binaries not found")
	}
	cfg.Name = name
	a, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// FuzzREST sends arbitrary requests, without the token, to the real
// handlers: none panics, none answers 5xx except the documented 502/503,
// and the committed state never changes.
func FuzzREST(f *testing.F) {
	for _, s := range []struct{ method, path, body, auth string }{
		{"POST", "/switchover", `{"candidate": "node2"}`, ""},
		{"POST", "/failover", `{"candidate": "node1"}`, "Bearer wrong"},
		{"POST", "/pause", "", "Basic eDp5"},
		{"POST", "/reinit", `{"member": "node1"}`, ""},
		{"DELETE", "/members/node1", "", ""},
		{"POST", "/internal/join", `{"name": "evil", "raft_addr": "127.0.0.1:9"}`, ""},
		{"POST", "/internal/permit", `{"member": "node1", "epoch": 1}`, ""},
		{"GET", "/cluster", "", ""},
		{"GET", "/replica?lag=abc", "", ""},
		{"HEAD", "/primary", "", ""},
		{"PUT", "/metrics", strings.Repeat("x", 70000), ""},
		{"GET", "/../../etc/passwd", "", ""},
		{"PATCH", "/config", `{"postgresql": {"parameters": {"work_mem": "8MB"}}}`, ""},
		{"GET", "/config", "", ""},
		{"GET", "/history", "", ""},
		{"POST", "/tags", `{"member": "node1", "tags": {"nofailover": "true"}}`, ""},
		{"POST", "/restart", `{"member": "node1"}`, ""},
		{"POST", "/reload", ``, ""},
		{"POST", "/switchover", `{"at": "2030-01-01T00:00:00Z"}`, ""},
		{"DELETE", "/switchover", "", ""},
		{"GET", "/", "", ""},
		{"GET", "/status?since=-1", "", ""},
		{"GET", "/ui/../agent.go", "", ""},
	} {
		f.Add(s.method, s.path, []byte(s.body), s.auth)
	}
	a, h := restAgent(f)
	before := a.node.State()
	f.Fuzz(func(t *testing.T, method, path string, body []byte, auth string) {
		req, err := http.NewRequest(method, "http://127.0.0.1:8008"+path, bytes.NewReader(body))
		if err != nil || !strings.HasPrefix(path, "/") {
			return // not a request a server would parse
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code >= 500 && w.Code != http.StatusBadGateway && w.Code != http.StatusServiceUnavailable {
			t.Fatalf("%s %s: %d %s", method, path, w.Code, w.Body.String())
		}
		after := a.node.State()
		if after.Epoch != before.Epoch || after.Paused != before.Paused || len(after.Members) != len(before.Members) || after.Switchover != before.Switchover ||
			after.Config.Version != before.Config.Version || len(after.TagOverrides) != len(before.TagOverrides) || after.ScheduledSwitchover != before.ScheduledSwitchover {
			t.Fatalf("%s %s without the token changed the cluster: %+v -> %+v", method, path, before, after)
		}
	})
}

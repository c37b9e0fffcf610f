package integration

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/internal/itest"
	"github.com/pgha/pgha/internal/localcluster"
	"github.com/pgha/pgha/internal/wait"
	"github.com/pgha/pgha/postgres/pgtest"
)

// stateChanging are the calls that need credentials, with a body each would
// accept, so a refusal is the auth check's and not the handler's.
func stateChanging(standby string) []struct{ method, path, body string } {
	return []struct{ method, path, body string }{
		{"POST", "/pause", ""},
		{"POST", "/resume", ""},
		{"POST", "/switchover", `{"candidate": "` + standby + `"}`},
		{"POST", "/failover", `{"candidate": "` + standby + `"}`},
		{"POST", "/reinit", `{"member": "` + standby + `"}`},
		{"POST", "/restart", `{"member": "` + standby + `", "at": "2099-01-01T00:00:00Z"}`},
		{"DELETE", "/restart", ""},
		{"DELETE", "/members/" + standby, ""},
		{"POST", "/internal/join", `{"name": "intruder", "raft_addr": "127.0.0.1:1", "api_url": "http://127.0.0.1:1"}`},
		{"POST", "/internal/permit", `{"member": "` + standby + `", "epoch": 99}`},
		{"POST", "/internal/news", `{"name": "` + standby + `"}`},
		{"POST", "/internal/removed", ""},
	}
}

// leaderView is /cluster as the Raft leader answers it: it has applied
// every committed change, which a follower may not have yet.
func leaderView(t *testing.T, lc *localcluster.Cluster) agent.ClusterView {
	t.Helper()
	v, err := lc.View(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if n := lc.Node(v.RaftLeader); n != nil {
		if v, err = localcluster.FetchViewWith(context.Background(), lc.ViewClient(), n.APIURL); err != nil {
			t.Fatal(err)
		}
	}
	return v
}

// assertUnchanged fails if the cluster moved from before: primary, epoch,
// pause, members, or a member re-cloning.
func assertUnchanged(t *testing.T, lc *localcluster.Cluster, before agent.ClusterView) {
	t.Helper()
	v := leaderView(t, lc)
	if itest.Primary(v) != itest.Primary(before) || v.Epoch != before.Epoch || v.Pause || len(v.Members) != len(before.Members) {
		t.Fatalf("a refused call changed the cluster: %s (paused %v); before %s", itest.Describe(v), v.Pause, itest.Describe(before))
	}
	for _, m := range v.Members {
		if m.Activity != "" {
			t.Fatalf("a refused call started work on %s: %s", m.Name, m.Activity)
		}
	}
}

// cliWithout runs pgha-agent with the environment minus PGHA_TOKEN_FILE,
// so only the flags given authenticate.
func cliWithout(args ...string) (string, error) {
	cmd := exec.Command(agentBinary, args...)
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "PGHA_TOKEN_FILE=") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// cliRetrying is cliWithout, again while the cluster answers 503.
func cliRetrying(t *testing.T, args ...string) string {
	t.Helper()
	var out string
	wait.For(t, 30*time.Second, "pgha-agent "+args[0], func() (bool, string) {
		var err error
		out, err = cliWithout(args...)
		if err != nil && !strings.Contains(out, "503") {
			t.Fatalf("pgha-agent %v: %v\n%s", args, err, out)
		}
		return err == nil, out
	})
	return out
}

func apiList(lc *localcluster.Cluster) string {
	var apis []string
	for _, n := range lc.Nodes() {
		apis = append(apis, n.APIURL)
	}
	return strings.Join(apis, ",")
}

func aStandby(t *testing.T, v agent.ClusterView) string {
	t.Helper()
	for _, m := range v.Members {
		if m.Role != "leader" {
			return m.Name
		}
	}
	t.Fatalf("no standby in %s", itest.Describe(v))
	return ""
}

// TestControlAuth: with an API token configured (plain HTTP), every
// state-changing call needs it: none is 401 with a challenge, a wrong one
// 403, and neither changes anything; the right one works, from curl-like
// clients and from the CLI. Reads stay open.
func TestControlAuth(t *testing.T) {
	lc := itest.NewCluster(t, agentBinary, 3)
	if err := lc.StartAll(); err != nil {
		t.Fatal(err)
	}
	before := itest.WaitHealthy(t, lc, 3, 90*time.Second)
	standby := aStandby(t, before)
	// A follower: its refusal must come before it forwards anything.
	api := lc.Node(standby).APIURL
	c := http.DefaultClient

	t.Run("without the token nothing changes", func(t *testing.T) {
		for _, s := range stateChanging(standby) {
			code, hdr, body := call(t, c, s.method, api+s.path, "", s.body)
			if code != http.StatusUnauthorized || !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("%s %s without a token: %d %q %s, want 401 with a Bearer challenge", s.method, s.path, code, hdr.Get("WWW-Authenticate"), body)
			}
			if code, _, body := call(t, c, s.method, api+s.path, strings.Repeat("0", 64), s.body); code != http.StatusForbidden {
				t.Errorf("%s %s with a wrong token: %d %s, want 403", s.method, s.path, code, body)
			}
		}
		assertUnchanged(t, lc, before)
	})

	t.Run("reads stay open", func(t *testing.T) {
		for _, path := range []string{"/replica", "/health", "/liveness", "/cluster", "/metrics", "/internal/observation", "/internal/raft"} {
			if code, _, body := call(t, c, "GET", api+path, "", ""); code != http.StatusOK {
				t.Errorf("GET %s without a token: %d %s", path, code, body)
			}
		}
	})

	t.Run("the right token pauses and resumes", func(t *testing.T) {
		authorised(t, c, "POST", api+"/pause", lc.Token())
		if v := leaderView(t, lc); !v.Pause {
			t.Fatal("not paused after an authorised /pause")
		}
		authorised(t, c, "POST", api+"/resume", lc.Token())
		assertUnchanged(t, lc, before)
	})

	t.Run("the CLI with and without --token-file", func(t *testing.T) {
		out, err := cliWithout("pause", "--api", apiList(lc))
		if err == nil || !strings.Contains(out, "401") || !strings.Contains(out, "authentication required") {
			t.Fatalf("pause without a token: %v\n%s", err, out)
		}
		wrong := filepath.Join(t.TempDir(), "wrong.token")
		if err := os.WriteFile(wrong, []byte(strings.Repeat("f", 32)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err = cliWithout("pause", "--api", apiList(lc), "--token-file", wrong)
		if err == nil || !strings.Contains(out, "403") {
			t.Fatalf("pause with a wrong token: %v\n%s", err, out)
		}
		assertUnchanged(t, lc, before)

		if out := cliRetrying(t, "pause", "--api", apiList(lc), "--token-file", lc.TokenFile()); !strings.Contains(out, "paused") {
			t.Fatalf("pause --token-file:\n%s", out)
		}
		// Asked of the leader: a follower may not have applied the pause yet.
		out, err = cliWithout("list", "--api", lc.Node(leaderView(t, lc).RaftLeader).APIURL)
		if err != nil || !strings.Contains(out, "PAUSED") {
			t.Fatalf("list (no token needed) after pause: %v\n%s", err, out)
		}
		// PGHA_TOKEN_FILE, as the demo prints it.
		wait.For(t, 30*time.Second, "resume with PGHA_TOKEN_FILE", func() (bool, string) {
			cmd := exec.Command(agentBinary, "resume", "--api", apiList(lc))
			cmd.Env = append(os.Environ(), "PGHA_TOKEN_FILE="+lc.TokenFile())
			out, err := cmd.CombinedOutput()
			if err != nil && !strings.Contains(string(out), "503") {
				t.Fatalf("resume with PGHA_TOKEN_FILE: %v\n%s", err, out)
			}
			return err == nil, string(out)
		})
		assertUnchanged(t, lc, before)
	})

	t.Run("no secret in logs, configs or /cluster", func(t *testing.T) {
		itest.AssertNoSecretsLeaked(t, lc)
	})
}

// TestTLSCluster: three agents with certificates from one cluster CA form a
// cluster over mutual TLS, fail over and switch over; a load balancer
// without a certificate gets the health checks but not the internal
// endpoints; a fourth agent with a certificate from another CA never gets
// in.
func TestTLSCluster(t *testing.T) {
	lc := itest.NewCluster(t, agentBinary, 3, itest.WithTLS)
	if err := lc.StartAll(); err != nil {
		t.Fatal(err)
	}
	v := itest.WaitHealthy(t, lc, 3, 90*time.Second)
	primary := itest.Primary(v)

	t.Run("list works over https with the CA", func(t *testing.T) {
		for _, m := range v.Members {
			if !strings.HasPrefix(m.APIURL, "https://") {
				t.Errorf("%s api_url %s, want https", m.Name, m.APIURL)
			}
		}
		out, err := exec.Command(agentBinary, "list", "--api", apiList(lc), "--ca", lc.CA()).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Primary") || !strings.Contains(string(out), "streaming") || !strings.Contains(string(out), "node3") {
			t.Fatalf("list --ca: %v\n%s", err, out)
		}
		if out, err := exec.Command(agentBinary, "list", "--api", apiList(lc)).CombinedOutput(); err == nil {
			t.Fatalf("list trusted the agents without --ca:\n%s", out)
		}
	})

	t.Run("a client without a certificate gets health checks, not internal endpoints", func(t *testing.T) {
		c := lc.HTTPClient() // trusts the CA, presents no certificate
		for _, n := range lc.Nodes() {
			isPrimary := n.Name == primary
			for path, want := range map[string]int{
				"/primary": pick(isPrimary, 200, 503), "/replica": pick(isPrimary, 503, 200),
				"/read-only": 200, "/health": 200, "/liveness": 200, "/readiness": 200,
				"/cluster": 401, "/metrics": 401, // cluster state: certificate or token
				"/internal/observation": 403, "/internal/raft": 403,
			} {
				if code, _, body := call(t, c, "GET", n.APIURL+path, "", ""); code != want {
					t.Errorf("%s GET %s: %d %s, want %d", n.Name, path, code, body, want)
				}
			}
		}
		api := lc.Nodes()[0].APIURL
		for _, s := range stateChanging(aStandby(t, v)) {
			want := http.StatusUnauthorized
			if strings.HasPrefix(s.path, "/internal/") {
				want = http.StatusForbidden // agents only, whatever the token
			}
			if code, _, body := call(t, c, s.method, api+s.path, "", s.body); code != want {
				t.Errorf("%s %s without credentials: %d %s, want %d", s.method, s.path, code, body, want)
			}
		}
		if code, _, _ := call(t, c, "POST", api+"/internal/join", lc.Token(), `{"name": "x", "raft_addr": "127.0.0.1:1"}`); code != http.StatusForbidden {
			t.Errorf("POST /internal/join with the token but no certificate: %d, want 403", code)
		}
		assertUnchanged(t, lc, v)
	})

	t.Run("the token or a node certificate authorises control", func(t *testing.T) {
		api := lc.Nodes()[1].APIURL
		authorised(t, lc.HTTPClient(), "POST", api+"/pause", lc.Token())
		tc, err := lc.Node("node3").TLS.ClientConfig()
		if err != nil {
			t.Fatal(err)
		}
		withCert := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
		authorised(t, withCert, "POST", api+"/resume", "")
		assertUnchanged(t, lc, v)
	})

	t.Run("an agent with a certificate from another CA cannot join", func(t *testing.T) {
		n4, err := lc.AddImpostor("node4", pgtest.FreePort(t), pgtest.FreePort(t), pgtest.FreePort(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := lc.Start(n4); err != nil {
			t.Fatal(err)
		}
		wait.For(t, 30*time.Second, "node4 to try to join and fail", func() (bool, string) {
			b, _ := os.ReadFile(n4.Log)
			return strings.Contains(string(b), "join the cluster: will retry") && strings.Contains(string(b), "certificate"), itest.TailLines(string(b), 3)
		})
		// With its certificate, even trusting anything, it is refused by
		// the API and by Raft at the handshake.
		cert, err := tls.LoadX509KeyPair(n4.TLS.Cert, n4.TLS.Key)
		if err != nil {
			t.Fatal(err)
		}
		reckless := &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true}
		node1 := lc.Node("node1")
		impostor := &http.Client{Transport: &http.Transport{TLSClientConfig: reckless}}
		req, _ := http.NewRequest("POST", node1.APIURL+"/internal/join", strings.NewReader(`{"name": "node4", "raft_addr": "127.0.0.1:1"}`))
		if resp, err := impostor.Do(req); err == nil {
			resp.Body.Close()
			t.Errorf("the API accepted a certificate of another CA: %s", resp.Status)
		}
		if err := raftHandshake(node1.RaftPort, reckless); err == nil {
			t.Error("raft accepted a certificate of another CA")
		}
		// Without a certificate, the API answers, and refuses.
		anon := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		if code, _, _ := call(t, anon, "POST", node1.APIURL+"/internal/join", lc.Token(), `{"name": "node4", "raft_addr": "127.0.0.1:1"}`); code != http.StatusForbidden {
			t.Errorf("join without a certificate: %d, want 403", code)
		}
		// It keeps trying for a while; the cluster never lists it.
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			cv, err := lc.View(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range cv.Members {
				if m.Name == "node4" {
					t.Fatalf("the impostor is a member: %s", itest.Describe(cv))
				}
			}
			time.Sleep(250 * time.Millisecond)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := lc.Stop(ctx, n4); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("fails over and switches over", func(t *testing.T) {
		old := lc.Node(primary)
		if err := lc.KillPostgres(old); err != nil {
			t.Fatal(err)
		}
		wait.For(t, 60*time.Second, "a new primary", func() (bool, string) {
			cv, err := lc.View(context.Background())
			if err != nil {
				return false, err.Error()
			}
			p := itest.Primary(cv)
			return p != "" && p != primary && cv.Epoch > v.Epoch, itest.Describe(cv)
		})
		after := itest.WaitHealthy(t, lc, 3, 90*time.Second)
		// A switchover back, authorised by a node certificate instead of a token.
		n2 := lc.Node("node2").TLS
		cliRetrying(t, "switchover", "--candidate", primary, "--api", apiList(lc), "--ca", n2.CA, "--cert", n2.Cert, "--key", n2.Key)
		final := itest.WaitHealthy(t, lc, 3, 90*time.Second)
		if itest.Primary(final) != primary || final.Epoch <= after.Epoch {
			t.Fatalf("after the switchover to %s: %s", primary, itest.Describe(final))
		}
	})

	t.Run("no secret in logs, configs or /cluster", func(t *testing.T) {
		itest.AssertNoSecretsLeaked(t, lc)
	})
}

// raftHandshake connects to a raft port with cfg and reads: over TLS 1.3 a
// client learns that the server refused its certificate on its first read.
func raftHandshake(port int, cfg *tls.Config) error {
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Read(make([]byte, 1))
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return nil // the server kept the connection: accepted
	}
	return err
}

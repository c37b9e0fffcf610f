package agent

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgha/pgha/pki"
)

const testToken = "0123456789abcdef0123456789abcdef"

// authAgent is an Agent with only what the auth wrappers use.
func authAgent(token string, withTLS bool) *Agent {
	cfg := &Config{}
	cfg.API.token = token
	if withTLS {
		cfg.TLS = TLSConfig{CA: "ca.crt", Cert: "node1.crt", Key: "node1.key"}
	}
	return &Agent{cfg: cfg, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// withPeer marks r as coming over TLS from a client whose certificate for
// name the cluster CA verified.
func withPeer(r *http.Request, name string) *http.Request {
	cert := &x509.Certificate{Subject: pkix.Name{CommonName: name}}
	r.TLS = &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{cert}}}
	return r
}

func TestAuthorized(t *testing.T) {
	cases := []struct {
		name      string
		token     string
		tls       bool
		auth      string
		peer      string
		want      int
		challenge bool
	}{
		{"open without token or tls", "", false, "", "", 200, false},
		{"no credentials", testToken, false, "", "", 401, true},
		{"right token", testToken, false, "Bearer " + testToken, "", 200, false},
		{"scheme is case-insensitive", testToken, false, "bearer " + testToken, "", 200, false},
		{"wrong token", testToken, false, "Bearer " + strings.Repeat("x", 32), "", 403, false},
		{"token prefix", testToken, false, "Bearer " + testToken[:31], "", 403, false},
		{"basic auth", testToken, false, "Basic dXNlcjpwYXNz", "", 403, false},
		{"tls only, no credentials", "", true, "", "", 401, true},
		{"tls only, a token", "", true, "Bearer " + testToken, "", 403, false},
		{"tls, verified certificate", "", true, "", "node2", 200, false},
		{"certificate and wrong token", testToken, true, "Bearer nope", "node2", 200, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := authAgent(c.token, c.tls)
			called := false
			h := a.authorized(func(w http.ResponseWriter, r *http.Request) { called = true })
			r := httptest.NewRequest("POST", "/pause", nil)
			if c.auth != "" {
				r.Header.Set("Authorization", c.auth)
			}
			if c.peer != "" {
				r = withPeer(r, c.peer)
			}
			w := httptest.NewRecorder()
			h(w, r)
			code := w.Code // 200 when the stub handler ran
			if code != c.want {
				t.Fatalf("status %d, want %d (%s)", code, c.want, w.Body)
			}
			if called != (c.want == 200) {
				t.Fatalf("handler called = %v with status %d", called, code)
			}
			if got := w.Header().Get("WWW-Authenticate") != ""; got != c.challenge {
				t.Errorf("WWW-Authenticate present = %v, want %v", got, c.challenge)
			}
			if strings.Contains(w.Body.String(), testToken) {
				t.Errorf("the answer shows the token: %s", w.Body)
			}
		})
	}
}

func TestGuardInternal(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})
	for _, c := range []struct {
		tls  bool
		path string
		peer string
		want int
	}{
		{false, "/internal/observation", "", 200},
		{true, "/internal/observation", "", 403},
		{true, "/internal/raft", "", 403},
		{true, "/internal/join", "", 403},
		{true, "/internal/observation", "node2", 200},
		{true, "/primary", "", 200},
		{false, "/cluster", "", 200},
		{true, "/cluster", "", 401},
		{true, "/metrics", "", 401},
		{true, "/cluster", "node2", 200},
		{true, "/metrics", "node2", 200},
	} {
		r := httptest.NewRequest("GET", c.path, nil)
		if c.peer != "" {
			r = withPeer(r, c.peer)
		}
		w := httptest.NewRecorder()
		authAgent(testToken, c.tls).guardInternal(ok).ServeHTTP(w, r)
		if w.Code != c.want {
			t.Errorf("tls=%v %s peer=%q: %d, want %d", c.tls, c.path, c.peer, w.Code, c.want)
		}
	}
}

// The API server over real TLS: a client without a certificate is served
// (health checks), one with a certificate of the cluster CA is a verified
// peer, and one with a certificate of another CA is refused in the handshake.
func TestAPIServerTLS(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	if err := pki.GenerateCluster(dir, "main", map[string][]string{"node1": {"127.0.0.1"}, "node2": {"127.0.0.1"}}); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), "other")
	if err := pki.GenerateCluster(other, "main", map[string][]string{"node2": {"127.0.0.1"}}); err != nil {
		t.Fatal(err)
	}
	cfg := &Config{Name: "node1"}
	f := pki.Files(dir, "node1")
	cfg.TLS = TLSConfig{CA: f.CA, Cert: f.Cert, Key: f.Key}
	var err error
	if cfg.TLS.server, err = f.ServerConfig(); err != nil {
		t.Fatal(err)
	}
	a := &Agent{cfg: cfg, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	srv := a.apiServer()
	ts := httptest.NewUnstartedServer(a.guardInternal(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "peer="+verifiedPeer(r))
	})))
	ts.TLS = srv.TLSConfig
	ts.Config.ErrorLog = srv.ErrorLog
	ts.StartTLS()
	defer ts.Close()

	caPool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(f.CA)
	caPool.AppendCertsFromPEM(caPEM)
	client := func(certs ...tls.Certificate) *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: caPool, Certificates: certs}}}
	}
	get := func(c *http.Client, path string) (int, string, error) {
		resp, err := c.Get(ts.URL + path)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}

	if code, _, err := get(client(), "/primary"); err != nil || code != 200 {
		t.Errorf("health check without a certificate: %d %v", code, err)
	}
	if code, _, err := get(client(), "/internal/observation"); err != nil || code != 403 {
		t.Errorf("internal call without a certificate: %d %v, want 403", code, err)
	}
	n2 := pki.Files(dir, "node2")
	peer, err := tls.LoadX509KeyPair(n2.Cert, n2.Key)
	if err != nil {
		t.Fatal(err)
	}
	if code, body, err := get(client(peer), "/internal/observation"); err != nil || code != 200 || body != "peer=node2" {
		t.Errorf("internal call with node2's certificate: %d %q %v", code, body, err)
	}
	o2 := pki.Files(other, "node2")
	impostor, err := tls.LoadX509KeyPair(o2.Cert, o2.Key)
	if err != nil {
		t.Fatal(err)
	}
	if code, _, err := get(client(impostor), "/primary"); err == nil {
		t.Errorf("a certificate of another CA was accepted: %d", code)
	}
}

func TestTokenTransport(t *testing.T) {
	var got []string
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Header.Get("Authorization"))
		if r.URL.Path == "/redirect" {
			http.Redirect(w, r, "http://example.invalid/", http.StatusFound)
		}
	}))
	defer ts.Close()
	cfg := &Config{}
	cfg.API.token = testToken
	c := newAPIClient(cfg, 0)
	if _, err := c.Get(ts.URL + "/internal/raft"); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != "Bearer "+testToken {
		t.Fatalf("Authorization sent: %q", got)
	}
	if _, err := c.Get(ts.URL + "/redirect"); err == nil || !strings.Contains(err.Error(), "redirect") {
		t.Fatalf("a redirect was followed: %v", err)
	}
}

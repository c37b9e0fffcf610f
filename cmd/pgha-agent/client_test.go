package main

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/pki"
)

const token = "0123456789abcdef0123456789abcdef"

// fakeAgent answers like an agent with a token: reads are open, changes
// need the token or a verified certificate. It records who called.
type fakeAgent struct {
	mu    sync.Mutex
	auth  []string
	peers []string
}

func (f *fakeAgent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.auth = append(f.auth, r.Header.Get("Authorization"))
	if r.TLS != nil {
		f.peers = append(f.peers, pki.PeerName(*r.TLS))
	}
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.Method == http.MethodGet: // reads are open
	case r.TLS != nil && pki.PeerName(*r.TLS) != "":
	case r.Header.Get("Authorization") == "":
		w.WriteHeader(http.StatusUnauthorized)
		json.NewEncoder(w).Encode(map[string]string{"error": "authentication required"})
		return
	case r.Header.Get("Authorization") != "Bearer "+token:
		w.WriteHeader(http.StatusForbidden)
		json.NewEncoder(w).Encode(map[string]string{"error": "the API token is not valid"})
		return
	}
	json.NewEncoder(w).Encode(agent.ControlResult{Message: "paused"})
}

func writeToken(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(content+"\n"), mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestControlSendsTheToken(t *testing.T) {
	fa := &fakeAgent{}
	srv := httptest.NewServer(fa)
	defer srv.Close()
	good := writeToken(t, token, 0o600)

	out, err := run(t, pauseCmd(true), "--api", srv.URL, "--token-file", good)
	if err != nil || !strings.Contains(out, "paused") {
		t.Fatalf("pause with --token-file: %v\n%s", err, out)
	}
	if fa.auth[0] != "Bearer "+token {
		t.Errorf("sent Authorization %q", fa.auth[0])
	}

	t.Setenv("PGHA_TOKEN_FILE", good) // read when the command is built
	if out, err := run(t, pauseCmd(true), "--api", srv.URL); err != nil {
		t.Fatalf("pause with PGHA_TOKEN_FILE: %v\n%s", err, out)
	}

	t.Setenv("PGHA_TOKEN_FILE", "")
	// Refused: the server's message, and no second member asked.
	_, err = run(t, pauseCmd(true), "--api", srv.URL+","+srv.URL)
	if err == nil || !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), "authentication required") {
		t.Fatalf("pause without a token: %v", err)
	}
	wrong := writeToken(t, strings.Repeat("f", 32), 0o600)
	_, err = run(t, pauseCmd(true), "--api", srv.URL, "--token-file", wrong)
	if err == nil || !strings.Contains(err.Error(), "403") || !strings.Contains(err.Error(), "not valid") {
		t.Fatalf("pause with a wrong token: %v", err)
	}
	if len(fa.auth) != 4 {
		t.Errorf("%d calls, want 4 (a refusal is not retried on another member)", len(fa.auth))
	}

	loose := writeToken(t, token, 0o644)
	if _, err := run(t, pauseCmd(true), "--api", srv.URL, "--token-file", loose); err == nil || !strings.Contains(err.Error(), "--token-file") || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("loose token file: %v", err)
	}
	if len(fa.auth) != 4 {
		t.Error("a loose token file was still used")
	}
}

// --ca verifies the agent; --cert/--key authenticate instead of a token.
func TestControlOverTLS(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	if err := pki.GenerateCluster(dir, "main", map[string][]string{"node1": {"127.0.0.1"}, "admin": {"127.0.0.1"}}); err != nil {
		t.Fatal(err)
	}
	server, err := pki.Files(dir, "node1").ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	server.ClientAuth = tls.VerifyClientCertIfGiven
	fa := &fakeAgent{}
	srv := httptest.NewUnstartedServer(fa)
	srv.TLS = server
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshake the test expects to fail
	srv.StartTLS()
	defer srv.Close()
	admin := pki.Files(dir, "admin")

	if _, err := run(t, pauseCmd(true), "--api", srv.URL); err == nil {
		t.Fatal("an agent certificate of a private CA was trusted without --ca")
	}
	out, err := run(t, pauseCmd(true), "--api", srv.URL, "--ca", admin.CA, "--cert", admin.Cert, "--key", admin.Key)
	if err != nil || !strings.Contains(out, "paused") {
		t.Fatalf("pause with a certificate: %v\n%s", err, out)
	}
	if got := fa.peers[len(fa.peers)-1]; got != "admin" {
		t.Errorf("server saw peer %q, want admin", got)
	}
	if _, err := run(t, pauseCmd(true), "--api", srv.URL, "--ca", admin.CA); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("--ca alone must not authorise: %v", err)
	}
	for _, args := range [][]string{{"--cert", admin.Cert}, {"--cert", admin.Cert, "--key", admin.Key}} {
		if _, err := run(t, pauseCmd(true), append([]string{"--api", srv.URL}, args...)...); err == nil {
			t.Errorf("pause %v accepted", args)
		}
	}

	// list reads /cluster, open to anyone: it needs only the CA.
	if out, err := run(t, listCmd(), "--api", srv.URL, "--ca", admin.CA); err != nil || !strings.Contains(out, "Cluster:") {
		t.Fatalf("list --ca: %v\n%s", err, out)
	}
}

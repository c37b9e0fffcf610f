package localcluster

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/pki"
)

// The cluster's secrets: the roles' passwords and the API token in
// Dir/secrets, and with Options.TLS a cluster CA and node certificates in
// Dir/certs. Every agent is configured with the token, so control calls
// need it (TokenFile), as in production.

// TokenFile is the file holding the API token (mode 0600): what
// `pgha-agent --token-file` or PGHA_TOKEN_FILE take.
func (c *Cluster) TokenFile() string { return filepath.Join(c.opts.Dir, "secrets", "api.token") }

// Token is the API token.
func (c *Cluster) Token() string {
	tok, err := agent.ReadTokenFile("token", c.TokenFile())
	if err != nil {
		return ""
	}
	return tok
}

// Secrets returns every secret the cluster was given, by name (replication,
// monitor, rewind, api-token): what must never appear in a log or an answer.
func (c *Cluster) Secrets() map[string]string {
	out := map[string]string{"api-token": c.Token()}
	for _, s := range secretRoles {
		b, _ := os.ReadFile(c.secret(s))
		out[s] = strings.TrimSpace(string(b))
	}
	return out
}

var secretRoles = []string{"replication", "monitor", "rewind"}

// ensureSecrets creates the passwords and the token once; a resumed
// cluster keeps its own.
func (c *Cluster) ensureSecrets() error {
	for _, s := range secretRoles {
		if err := c.ensureSecret(c.secret(s), 18); err != nil {
			return err
		}
	}
	return c.ensureSecret(c.TokenFile(), 32)
}

// ensureSecret writes n random bytes, hex encoded, to path (mode 0600)
// unless it exists.
func (c *Cluster) ensureSecret(path string, n int) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	return c.writeFile(path, []byte(hex.EncodeToString(b)+"\n"), 0o600)
}

// CertDir holds the cluster CA and the node certificates (Options.TLS).
func (c *Cluster) CertDir() string { return filepath.Join(c.opts.Dir, "certs") }

// CA is the cluster CA certificate's path ("" without Options.TLS).
func (c *Cluster) CA() string {
	if !c.opts.TLS {
		return ""
	}
	return filepath.Join(c.CertDir(), pki.CACertFile)
}

// issueCerts gives each node a certificate for 127.0.0.1 from the cluster
// CA in CertDir, creating the CA the first time.
func (c *Cluster) issueCerts(names ...string) error {
	nodes := map[string][]string{}
	for _, n := range names {
		nodes[n] = []string{"127.0.0.1"}
	}
	_, err := os.Stat(filepath.Join(c.CertDir(), pki.CAKeyFile))
	opts := pki.GenerateOptions{ReuseCA: err == nil}
	if err := pki.GenerateClusterWith(c.CertDir(), c.opts.Name, nodes, opts); err != nil {
		return fmt.Errorf("issue certificates: %w", err)
	}
	return c.chownTree(c.CertDir())
}

// chownTree gives dir and the files in it to the agents' OS user.
func (c *Cluster) chownTree(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := c.chown(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return c.chown(dir)
}

// AddImpostor prepares a node like AddNode, except that its certificate
// and the CA it trusts are its own, not the cluster's: a host that knows
// the addresses but holds no key of the cluster. (Tests; needs Options.TLS.)
func (c *Cluster) AddImpostor(name string, apiPort, raftPort, pgPort int) (*Node, error) {
	if !c.opts.TLS {
		return nil, fmt.Errorf("AddImpostor needs a TLS cluster")
	}
	dir := filepath.Join(c.opts.Dir, name, "foreign-certs")
	if err := pki.GenerateCluster(dir, c.opts.Name, map[string][]string{name: {"127.0.0.1"}}); err != nil {
		return nil, err
	}
	if err := c.chownTree(dir); err != nil {
		return nil, err
	}
	return c.addNode(name, apiPort, raftPort, pgPort, pki.Files(dir, name))
}

// HTTPClient calls the agents' APIs as a load balancer or `pgha-agent list
// --ca` does: it verifies their certificates against the cluster CA (with
// Options.TLS) and presents none of its own.
func (c *Cluster) HTTPClient() *http.Client {
	return c.client
}

func newHTTPClient(caFile string) (*http.Client, error) {
	if caFile == "" {
		return &http.Client{}, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no certificate", caFile)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}
	return &http.Client{Transport: tr}, nil
}

// bearer adds the API token to every request: with TLS, /cluster and
// /metrics need it (or a cluster certificate).
type bearer struct {
	token func() string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token())
	return b.next.RoundTrip(r)
}

// FetchViewWith GETs one agent's /cluster with client.
func FetchViewWith(ctx context.Context, client *http.Client, apiURL string) (agent.ClusterView, error) {
	var v agent.ClusterView
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, apiURL+"/cluster", nil)
	if err != nil {
		return v, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return v, fmt.Errorf("GET %s/cluster: %s", apiURL, resp.Status)
	}
	return v, json.NewDecoder(resp.Body).Decode(&v)
}

// ViewClient is HTTPClient plus the API token: what reads /cluster and
// /metrics, which need the token (or a certificate) with Options.TLS.
func (c *Cluster) ViewClient() *http.Client { return c.viewClient }

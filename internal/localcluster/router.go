package localcluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/pgha/pgha/pki"
)

// Options.SecureRouter makes the router what production runs: clients must
// use TLS (a certificate for 127.0.0.1 from a CA of its own, RouterCA) and
// authenticate with SCRAM-SHA-256 as postgres with the password in
// RouterPasswordFile; the router itself logs into PostgreSQL as before.

// RouterCertDir holds the router's CA, certificate and key.
func (c *Cluster) RouterCertDir() string { return filepath.Join(c.opts.Dir, "router-certs") }

// RouterCA is the CA that signed the router's certificate (sslrootcert).
func (c *Cluster) RouterCA() string { return filepath.Join(c.RouterCertDir(), pki.CACertFile) }

// RouterPasswordFile holds the password clients give the router for the
// postgres user (SecureRouter).
func (c *Cluster) RouterPasswordFile() string { return c.secret("router-client") }

// prepareSecureRouter writes the router's certificate and auth file once.
func (c *Cluster) prepareSecureRouter() error {
	if !c.opts.SecureRouter {
		return nil
	}
	if err := c.ensureSecret(c.RouterPasswordFile(), 18); err != nil {
		return err
	}
	if _, err := os.Stat(c.RouterCA()); err != nil {
		if err := pki.GenerateCluster(c.RouterCertDir(), c.opts.Name+"-router", map[string][]string{"router": {"127.0.0.1", "localhost"}}); err != nil {
			return fmt.Errorf("router certificate: %w", err)
		}
		if err := c.chownTree(c.RouterCertDir()); err != nil {
			return err
		}
	}
	pw, err := os.ReadFile(c.RouterPasswordFile())
	if err != nil {
		return err
	}
	// pgbouncer's userlist.txt format; a clear-text entry is what the
	// router turns into a SCRAM exchange with the client.
	line := fmt.Sprintf("%q %q\n", "postgres", strings.TrimSpace(string(pw)))
	return c.writeFile(c.routerUserList(), []byte(line), 0o600)
}

func (c *Cluster) routerUserList() string {
	return filepath.Join(c.opts.Dir, "secrets", "router-userlist.txt")
}

// routerYAML is the router section's authentication lines.
func (c *Cluster) routerYAML() string {
	if !c.opts.SecureRouter {
		return `  # Demo only: loopback clients are trusted (as the postgres role above).
  hba: ["host all all 127.0.0.1/32 trust"]
`
	}
	files := pki.Files(c.RouterCertDir(), "router")
	return fmt.Sprintf(`  # TLS and SCRAM required, as in production.
  hba: ["hostssl all all 127.0.0.1/32 scram-sha-256"]
  auth_file: %s
  tls_cert: %s
  tls_key: %s
`, c.routerUserList(), files.Cert, files.Key)
}

package agent

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"

	"github.com/pgha/pgha/pki"
)

// TLSConfig is the `tls:` section: this node's certificate and key, and the
// cluster CA that signed every member's (pgha-agent certs writes them).
// When set, Raft is mutual TLS, the REST API is HTTPS, the agents' internal
// endpoints admit only clients with a certificate from the CA, and every
// api URL must be https://. When absent, everything is plain as before.
type TLSConfig struct {
	CA   string `yaml:"ca"`   // the cluster CA certificate (ca.crt)
	Cert string `yaml:"cert"` // this node's certificate (<name>.crt)
	Key  string `yaml:"key"`  // its private key (<name>.key), mode 0600

	server, client *tls.Config // loaded by Load
}

// Enabled reports whether the section is set.
func (t TLSConfig) Enabled() bool { return t.CA != "" || t.Cert != "" || t.Key != "" }

// minTokenLength keeps guessable tokens out: 16 characters of
// `openssl rand -hex 32` output is 64 bits.
const minTokenLength = 16

// Token is the resolved api.auth_token_file / api.auth_token_env ("" if none).
func (a APIConfig) Token() string { return a.token }

// validateSecurity checks the tls section and the API token keys, and that
// every api URL's scheme agrees with tls (an agent with TLS cannot talk to
// an http:// peer, nor one without it to an https:// one).
func (c *Config) validateSecurity(bad func(string, string, ...any)) {
	t := c.TLS
	if t.Enabled() {
		for _, kv := range [][2]string{{"tls.ca", t.CA}, {"tls.cert", t.Cert}, {"tls.key", t.Key}} {
			if kv[1] == "" {
				bad(kv[0], "missing; tls needs ca, cert and key together (pgha-agent certs writes them)")
			}
		}
	}
	urls := [][2]string{{"api.advertise", c.API.Advertise}}
	for i, m := range c.Cluster.Members {
		urls = append(urls, [2]string{fmt.Sprintf("cluster.members[%d].api", i), m.API})
	}
	for i, u := range c.Cluster.Join {
		urls = append(urls, [2]string{fmt.Sprintf("cluster.join[%d]", i), u})
	}
	for _, kv := range urls {
		key, raw := kv[0], kv[1]
		u, err := url.Parse(raw)
		if err != nil || raw == "" {
			continue // checkURL reports it
		}
		switch {
		case t.Enabled() && u.Scheme != "https":
			bad(key, "%q must be https:// because tls is set: the agents serve their API over TLS", raw)
		case !t.Enabled() && u.Scheme == "https":
			bad(key, "%q is https:// but there is no tls section: add tls (ca, cert, key) or use http://", raw)
		}
	}
	a := c.API
	if a.AuthTokenFile != "" && a.AuthTokenEnv != "" {
		bad("api.auth_token_file", "give api.auth_token_file or api.auth_token_env, not both")
	}
}

// resolveSecurity reads the API token and loads the TLS files, so a wrong
// file fails at start with the key that names it, not at the first call.
func (c *Config) resolveSecurity() error {
	a := &c.API
	switch {
	case a.AuthTokenFile != "":
		tok, err := ReadTokenFile("api.auth_token_file", a.AuthTokenFile)
		if err != nil {
			return err
		}
		a.token = tok
	case a.AuthTokenEnv != "":
		tok := os.Getenv(a.AuthTokenEnv)
		if err := checkToken("api.auth_token_env", "environment variable "+a.AuthTokenEnv, tok); err != nil {
			return err
		}
		a.token = tok
	}
	if !c.TLS.Enabled() {
		return nil
	}
	if err := checkSecretFile("tls.key", c.TLS.Key); err != nil {
		return err
	}
	files := pki.TLSFiles{CA: c.TLS.CA, Cert: c.TLS.Cert, Key: c.TLS.Key}
	server, err := files.ServerConfig()
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	client, err := files.ClientConfig()
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	if err := c.checkCertificate(server.Certificates[0].Leaf); err != nil {
		return err
	}
	c.TLS.server, c.TLS.client = server, client
	return nil
}

// checkCertificate makes sure the certificate is this node's and names the
// addresses peers dial, which they verify: a certificate copied to the
// wrong host otherwise fails only at the peers, as a handshake error.
func (c *Config) checkCertificate(leaf *x509.Certificate) error {
	if leaf == nil {
		return fmt.Errorf("tls.cert: %s: no certificate", c.TLS.Cert)
	}
	if leaf.Subject.CommonName != c.Name {
		return fmt.Errorf("tls.cert: %s is the certificate of %q, not of this node %q; give this node's own (pgha-agent certs writes %s.crt)", c.TLS.Cert, leaf.Subject.CommonName, c.Name, c.Name)
	}
	hosts := map[string]string{"raft.advertise": c.Raft.Advertise}
	if u, err := url.Parse(c.API.Advertise); err == nil {
		hosts["api.advertise"] = u.Host
	}
	for key, hp := range hosts {
		host := hp
		if h, _, err := net.SplitHostPort(hp); err == nil {
			host = h
		}
		if err := leaf.VerifyHostname(host); err != nil {
			return fmt.Errorf("tls.cert: %s does not name %s (the host of %s), which peers verify; reissue it: pgha-agent certs --reuse-ca ... %s=%s", c.TLS.Cert, host, key, c.Name, host)
		}
	}
	return nil
}

// ReadTokenFile reads a bearer token from the first line of path, refusing
// a file that group or others can read (as every pgha secret). key names
// the setting in errors (api.auth_token_file, --token-file); the token
// itself never appears in one.
func ReadTokenFile(key, path string) (string, error) {
	if err := checkSecretFile(key, path); err != nil {
		return "", err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", key, err)
	}
	tok := strings.TrimRight(strings.SplitN(string(b), "\n", 2)[0], "\r")
	if err := checkToken(key, path, tok); err != nil {
		return "", err
	}
	return tok, nil
}

func checkToken(key, source, tok string) error {
	switch {
	case tok == "":
		return fmt.Errorf("%s: %s is empty", key, source)
	case strings.ContainsAny(tok, " \t\r\n"):
		return fmt.Errorf("%s: the token in %s contains white space; it is sent in an HTTP header", key, source)
	case len(tok) < minTokenLength:
		return fmt.Errorf("%s: the token in %s has %d characters; use at least %d (e.g. openssl rand -hex 32)", key, source, len(tok), minTokenLength)
	}
	return nil
}

// ValidMemberName reports whether name can be a member's name (and so the
// CommonName of its certificate).
func ValidMemberName(name string) bool { return nameRE.MatchString(name) }

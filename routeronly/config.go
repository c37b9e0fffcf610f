// Package routeronly is `pgha-agent router`: the router on an application
// host, with no PostgreSQL and no Raft vote. It serves the same two ports
// as the leader's router (9999 read/write, 9998 read-only) on the host's
// own address, so applications need no VIP, and routes by what the Raft
// leader's router routes by: it follows the agents' GET /router/topology
// (agent/topologyapi.go) over their REST API, with the cluster CA and a
// client certificate or the API token.
//
// Fencing: every backend it routes to is valid only until its last
// leader-verified answer is fence_timeout old, counted from when it sent
// the request (Follower). A router cut off from the agents, or frozen and
// woken, refuses writes and reads once that has passed, and until an agent
// answers again.
package routeronly

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/pki"
)

// Config is router.yaml.
type Config struct {
	// Agents are the REST API base URLs of the cluster's agents (their
	// api.advertise), e.g. https://10.0.0.11:8008; any member answers, the
	// others are tried when one does not.
	Agents []string `yaml:"agents"`
	// TLS: ca is the cluster CA that signed the agents' certificates
	// (required for https:// agents); cert and key, optional, a client
	// certificate from that CA, which then stands in for the token.
	TLS TLSConfig `yaml:"tls"`
	// TokenFile (mode 0600) holds the agents' API token (api.auth_token_file).
	TokenFile string `yaml:"token_file"`
	// Router is a node's router section, with the same keys: listen
	// (default 127.0.0.1), port, read_only_port, auth_file, hba, tls_cert,
	// tls_key, auth_user, ... The cluster-wide router settings (pool mode
	// and size, hba, load balancing, ...) override the file's once an
	// agent has answered, as they do on the leader.
	Router agent.RouterConfig `yaml:"router"`

	token     string      // read from TokenFile
	clientTLS *tls.Config // for the agents' https:// API
}

// TLSConfig is the tls section.
type TLSConfig struct {
	CA   string `yaml:"ca"`
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Token is the API token ("" without token_file).
func (c *Config) Token() string { return c.token }

// LoadConfig reads and checks router.yaml.
func LoadConfig(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	cfg, err := ParseConfig(raw)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig decodes YAML strictly (an unknown key is an error: a typo
// must not silently leave a setting at its default), validates, and
// loads the files it names.
func ParseConfig(raw []byte) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("the file is empty; give at least agents: [URL of each agent's REST API]")
		}
		return nil, fmt.Errorf("parse YAML: %s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	if err := c.load(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) validate() error {
	var errs []string
	bad := func(key, format string, args ...any) {
		errs = append(errs, key+": "+fmt.Sprintf(format, args...))
	}
	if len(c.Agents) == 0 {
		bad("agents", "missing; list the REST API URL of every agent, e.g. [https://10.0.0.11:8008, https://10.0.0.12:8008, https://10.0.0.13:8008]")
	}
	for i, raw := range c.Agents {
		key := fmt.Sprintf("agents[%d]", i)
		u, err := url.Parse(raw)
		switch {
		case err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https"):
			bad(key, "%q is not an http:// or https:// URL such as https://10.0.0.11:8008", raw)
		case u.Scheme == "https" && c.TLS.CA == "":
			bad(key, "%q is https:// but tls.ca is not set: give the cluster CA that signed the agents' certificates", raw)
		case u.Scheme == "http" && c.TLS.CA != "":
			bad(key, "%q is http:// but tls is set: the agents of a TLS cluster serve https://", raw)
		case u.Path != "" && u.Path != "/":
			bad(key, "%q has a path; give the API's base URL only", raw)
		}
	}
	if (c.TLS.Cert == "") != (c.TLS.Key == "") {
		bad("tls.cert", "give tls.cert and tls.key together, or neither (and token_file)")
	}
	if c.TLS.Cert != "" && c.TLS.CA == "" {
		bad("tls.ca", "missing; a client certificate needs the cluster CA too")
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// load reads the token, the TLS files and the router section's files, so
// a wrong file fails at start with the key that names it.
func (c *Config) load() error {
	if c.TokenFile != "" {
		tok, err := agent.ReadTokenFile("token_file", c.TokenFile)
		if err != nil {
			return err
		}
		c.token = tok
	}
	if c.TLS.CA != "" {
		if c.TLS.Cert != "" {
			cfg, err := pki.TLSFiles{CA: c.TLS.CA, Cert: c.TLS.Cert, Key: c.TLS.Key}.ClientConfig()
			if err != nil {
				return fmt.Errorf("tls: %w", err)
			}
			c.clientTLS = cfg
		} else {
			pem, err := os.ReadFile(c.TLS.CA)
			if err != nil {
				return fmt.Errorf("tls.ca: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return fmt.Errorf("tls.ca: %s holds no PEM certificate", c.TLS.CA)
			}
			c.clientTLS = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		}
	}
	return c.Router.PrepareStandalone()
}

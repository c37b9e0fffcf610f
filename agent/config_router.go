package agent

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/router"
	"github.com/pgha/pgha/vip"
)

// RouterConfig is the PostgreSQL proxy the Raft leader runs: clients use one
// address for read/write traffic (port, default 9999) and one for read-only
// traffic (read_only_port, default 9998). Only the leader listens, on the VIP
// when one is configured, so the address always reaches the current router.
type RouterConfig struct {
	// Enabled runs the router on the leader. Default true.
	Enabled *bool `yaml:"enabled"`
	// Listen is the host to bind. Default: the VIP's address when vip is
	// set, else 0.0.0.0.
	Listen       string `yaml:"listen"`
	Port         int    `yaml:"port"`           // read/write, default 9999
	ReadOnlyPort int    `yaml:"read_only_port"` // read-only, default 9998

	PoolMode          string        `yaml:"pool_mode"`           // transaction (default) or session
	PoolSize          int           `yaml:"pool_size"`           // server connections per (server, database, user); default 20
	MaxClientConn     int           `yaml:"max_client_conn"`     // default 1000
	QueryWaitTimeout  time.Duration `yaml:"query_wait_timeout"`  // waiting for a pooled connection; default 120s
	ServerIdleTimeout time.Duration `yaml:"server_idle_timeout"` // default 10m
	ServerLifetime    time.Duration `yaml:"server_lifetime"`     // default 1h
	// LoadBalance sends read-only statements outside transactions to
	// standbys. Default true.
	LoadBalance *bool `yaml:"load_balance"`
	// MaxLag (bytes): standbys whose replay is further behind the primary
	// get no reads. Default 1MB.
	MaxLag int64 `yaml:"max_lag"`
	// ReadYourWrites sends a session's reads after its write only to
	// standbys that have replayed that write. Default true.
	ReadYourWrites *bool `yaml:"read_your_writes"`
	// WriteFunctions: a SELECT calling one of these is a write.
	WriteFunctions []string `yaml:"write_functions"`
	// DrainTimeout bounds how long a switchover waits for transactions in
	// flight on the old primary before it stops it. Default 2s.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// PrimaryWait: with no primary (during a failover), how long a new
	// transaction waits for one before it gets an error. Default 10s.
	PrimaryWait time.Duration `yaml:"primary_wait"`

	// AuthFile holds the users clients authenticate as, in pgbouncer's
	// userlist.txt format ("user" "secret") or pgpool's pool_passwd
	// (user:secret); secrets are SCRAM verifiers, md5 hashes or passwords.
	AuthFile string `yaml:"auth_file"`
	// HBA: pg_hba-style lines "host DATABASE USER ADDRESS METHOD", first
	// match wins. Default: everyone with scram-sha-256.
	HBA []string `yaml:"hba"`

	// AuthUser looks up users missing from AuthFile with AuthQuery on the
	// primary (pgbouncer's auth_user / auth_query), logging in with the
	// password in AuthPasswordFile. SCRAM stays end to end: the router logs
	// the client into PostgreSQL with the key its own SCRAM exchange proved.
	AuthUser         string `yaml:"auth_user"`
	AuthPasswordFile string `yaml:"auth_password_file"`
	AuthQuery        string `yaml:"auth_query"` // default: pg_shadow by user name

	// TLSCert and TLSKey (PEM files) let clients use sslmode=require or
	// verify-full; "hostssl" rules in hba then require it.
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`

	users     map[string]string // resolved by Load from AuthFile
	hba       []router.HBARule  // parsed by Load from HBA
	authPass  string            // resolved from AuthPasswordFile
	tlsConfig *tls.Config       // loaded from TLSCert and TLSKey
}

// Default router ports (pgpool-II's, which operators' scripts already use).
const (
	DefaultRouterPort         = 9999
	DefaultRouterReadOnlyPort = 9998
)

// RouterEnabled reports whether the leader runs the router.
func (c *Config) RouterEnabled() bool { return c.Router.Enabled == nil || *c.Router.Enabled }

func (r *RouterConfig) applyDefaults(v vip.Config) {
	if r.Listen == "" {
		r.Listen = "0.0.0.0"
		if ip, _, err := net.ParseCIDR(v.Address); err == nil {
			r.Listen = ip.String()
		}
	}
	if r.Port == 0 {
		r.Port = DefaultRouterPort
	}
	if r.ReadOnlyPort == 0 {
		r.ReadOnlyPort = DefaultRouterReadOnlyPort
	}
	if r.PoolMode == "" {
		r.PoolMode = string(router.PoolTransaction)
	}
	// The router's own defaults, written out: the cluster-wide copy of
	// these settings holds what is in force, not zeros.
	if r.PoolSize == 0 {
		r.PoolSize = 20
	}
	if r.MaxClientConn == 0 {
		r.MaxClientConn = 1000
	}
	if r.QueryWaitTimeout == 0 {
		r.QueryWaitTimeout = 120 * time.Second
	}
	if r.ServerIdleTimeout == 0 {
		r.ServerIdleTimeout = 10 * time.Minute
	}
	if r.ServerLifetime == 0 {
		r.ServerLifetime = time.Hour
	}
	if r.MaxLag == 0 {
		r.MaxLag = 1 << 20
	}
	if r.DrainTimeout == 0 {
		r.DrainTimeout = 2 * time.Second
	}
	if r.PrimaryWait == 0 {
		r.PrimaryWait = 10 * time.Second
	}
}

func (r *RouterConfig) validate(bad func(string, string, ...any)) {
	if ip := net.ParseIP(r.Listen); ip == nil {
		bad("router.listen", "%q is not an IP address (give the host only; the ports are router.port and router.read_only_port)", r.Listen)
	}
	for _, kp := range []struct {
		key  string
		port int
	}{{"router.port", r.Port}, {"router.read_only_port", r.ReadOnlyPort}} {
		if kp.port < 1 || kp.port > 65535 {
			bad(kp.key, "%d is not a TCP port", kp.port)
		}
	}
	if r.Port == r.ReadOnlyPort {
		bad("router.read_only_port", "%d is also router.port; give the read-only listener its own port", r.Port)
	}
	if r.MaxLag < 0 {
		bad("router.max_lag", "must not be negative")
	}
	if r.DrainTimeout < 0 || r.PrimaryWait < 0 {
		bad("router.drain_timeout", "durations must not be negative")
	}
	rules, err := router.ParseHBA(strings.Join(r.HBA, "\n"))
	if err != nil {
		bad("router.hba", "%v", err)
	}
	r.hba = rules
	if r.AuthPasswordFile != "" && r.AuthUser == "" {
		bad("router.auth_password_file", "set without router.auth_user")
	}
	cfg := r.routerConfig()
	cfg.TLS = &tls.Config{} // hostssl rules are checked once the certificate is loaded
	if err := cfg.Validate(); err != nil && !strings.Contains(err.Error(), "TLS") {
		bad("router", "%s", strings.TrimPrefix(err.Error(), "router config: "))
	}
}

func (r *RouterConfig) resolveSecrets() error {
	if r.AuthFile != "" {
		if err := checkSecretFile("router.auth_file", r.AuthFile); err != nil {
			return err
		}
		users, err := router.LoadUserList(r.AuthFile)
		if err != nil {
			return fmt.Errorf("router.auth_file: %w", err)
		}
		r.users = users
	}
	if r.AuthPasswordFile != "" {
		pw, err := readSecret("router.auth_password_file", "", r.AuthPasswordFile, "")
		if err != nil {
			return err
		}
		r.authPass = pw
	}
	if r.TLSCert != "" || r.TLSKey != "" {
		if r.TLSCert == "" || r.TLSKey == "" {
			return fmt.Errorf("router.tls_cert and router.tls_key: give both or neither")
		}
		if err := checkSecretFile("router.tls_key", r.TLSKey); err != nil {
			return err
		}
		cert, err := tls.LoadX509KeyPair(r.TLSCert, r.TLSKey)
		if err != nil {
			return fmt.Errorf("router.tls_cert: %w", err)
		}
		r.tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	// Checked again now that TLS is known: hostssl rules need it.
	if err := r.routerConfig().Validate(); err != nil {
		return fmt.Errorf("router: %s", strings.TrimPrefix(err.Error(), "router config: "))
	}
	return nil
}

// routerConfig is the router package's configuration for these settings.
func (r *RouterConfig) routerConfig() router.Config {
	cfg := router.Config{
		PoolMode:              router.PoolMode(r.PoolMode),
		PoolSize:              r.PoolSize,
		MaxClientConn:         r.MaxClientConn,
		QueryWaitTimeout:      r.QueryWaitTimeout,
		PrimaryWait:           r.PrimaryWait,
		ServerIdleTimeout:     r.ServerIdleTimeout,
		ServerLifetime:        r.ServerLifetime,
		DisableLoadBalance:    r.LoadBalance != nil && !*r.LoadBalance,
		MaxLag:                r.MaxLag,
		DisableReadYourWrites: r.ReadYourWrites != nil && !*r.ReadYourWrites,
		WriteFunctions:        r.WriteFunctions,
		HBA:                   r.hba,
		Users:                 r.users,
		AuthUser:              r.AuthUser,
		AuthQuery:             r.AuthQuery,
		TLS:                   r.tlsConfig,
	}
	if r.AuthUser != "" && r.authPass != "" {
		cfg.ServerPasswords = map[string]string{r.AuthUser: r.authPass}
	}
	if len(r.hba) == 0 {
		cfg.HBA = nil
	}
	return cfg
}

// checkSecretFile refuses a secret file that others may read: a password
// or key readable by group or world is as good as published.
func checkSecretFile(key, path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%s: %s has mode %04o; a secret must not be readable by group or others: chmod 600 %s", key, path, fi.Mode().Perm(), path)
	}
	return nil
}

// PrepareStandalone defaults, validates and loads (auth file, TLS
// certificate) a router section read outside a node's config: the
// router-only process's router.yaml (package routeronly). The keys and
// rules are a node's (errors name them as router.*); the listen address
// defaults to 127.0.0.1, since an application host's router serves that
// host's applications.
func (r *RouterConfig) PrepareStandalone() error {
	if r.Enabled != nil && !*r.Enabled {
		return fmt.Errorf("router.enabled: false makes no sense for a router-only process; remove the key")
	}
	if r.Listen == "" {
		r.Listen = "127.0.0.1"
	}
	r.applyDefaults(vip.Config{})
	var errs []string
	r.validate(func(key, format string, args ...any) {
		errs = append(errs, key+": "+fmt.Sprintf(format, args...))
	})
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return r.resolveSecrets()
}

// InForce is the router package's configuration for this file's section
// under the cluster-wide router settings s of configuration version
// (nil s: the file's own), as the leader's router applies them (routerOf).
func (r RouterConfig) InForce(version uint64, s *consensus.RouterSettings) (router.Config, error) {
	rc, err := routerOf(consensus.ClusterConfig{Version: version, Router: s}, r)
	return rc.routerConfig(), err
}

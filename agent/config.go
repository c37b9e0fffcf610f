package agent

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/pgha/pgha/postgres"
	"github.com/pgha/pgha/vip"
)

// Config is one node's configuration: one YAML file per node (see examples/).
// Load fills defaults and validates; every error names the key and what is expected.
type Config struct {
	// Name identifies this member in Raft, in /cluster and in replication
	// (application_name, slot pgha_<name>).
	Name string `yaml:"name"`
	// DataDir holds the agent's own state: the Raft log and snapshots, the passfile.
	DataDir string `yaml:"data_dir"`

	Cluster  ClusterConfig  `yaml:"cluster"`
	API      APIConfig      `yaml:"api"`
	Raft     RaftConfig     `yaml:"raft"`
	Timing   TimingConfig   `yaml:"timing"`
	Failover FailoverConfig `yaml:"failover"`
	Postgres PostgresConfig `yaml:"postgres"`
	// Archive and Backup are the WAL archive and the backup tool
	// (archive.go); cluster-wide once recorded, as timing is.
	Archive ArchiveConfig `yaml:"archive"`
	Backup  BackupConfig  `yaml:"backup"`
	Tags    TagsConfig    `yaml:"tags"`
	Router  RouterConfig  `yaml:"router"`
	VIP     vip.Config    `yaml:"vip"`
	TLS     TLSConfig     `yaml:"tls"` // agent-to-agent mutual TLS (config_security.go)
	// Callbacks are the operator's hooks on start, stop, restart, reload
	// and role change (callbacks.go).
	Callbacks CallbacksConfig `yaml:"callbacks"`
}

// ClusterConfig says how this node finds its cluster.
type ClusterConfig struct {
	// Name is the cluster's name (Patroni's "scope"), shown by list and /cluster.
	Name string `yaml:"name"`
	// Members are the initial voters. A cluster bootstraps exactly once, from
	// this list; afterwards Raft's own configuration is the truth and this list
	// only tells a starting node where to look for the cluster.
	Members []PeerConfig `yaml:"members"`
	// Join lists API URLs of existing members for a node that is not one of the
	// initial members (a node added later). Default: the members' API URLs.
	Join []string `yaml:"join"`
	// Voter: this node votes in Raft. Default: true for the initial
	// members (they must), false for a node added later, which joins as a
	// non-voter: it streams and serves reads but never counts towards a
	// quorum nor decides, and is promoted only if tagged candidate. Set it
	// on an added node to grow the voters (five make a quorum of three).
	Voter *bool `yaml:"voter"`
}

// PeerConfig is one initial member of the cluster.
type PeerConfig struct {
	Name string `yaml:"name"`
	Raft string `yaml:"raft"` // host:port of its Raft transport
	API  string `yaml:"api"`  // base URL of its REST API
}

// APIConfig is the REST API (Patroni-compatible health checks, /cluster, control).
type APIConfig struct {
	Listen    string `yaml:"listen"`    // host:port to bind, default 0.0.0.0:8008
	Advertise string `yaml:"advertise"` // URL other agents and the CLI use, e.g. http://10.0.0.11:8008
	// AuthTokenFile (mode 0600) or AuthTokenEnv holds the bearer token that
	// state-changing calls (switchover, pause, ..., the agents' own) must
	// carry, unless the caller has a certificate from the cluster CA. Every
	// member must have the same token: agents send it to each other.
	AuthTokenFile string `yaml:"auth_token_file"`
	AuthTokenEnv  string `yaml:"auth_token_env"`

	token string // resolved by Load
}

// RaftConfig is the embedded Raft member.
type RaftConfig struct {
	Listen             string        `yaml:"listen"`    // host:port to bind, default 0.0.0.0:8300
	Advertise          string        `yaml:"advertise"` // host:port the others dial
	HeartbeatTimeout   time.Duration `yaml:"heartbeat_timeout"`
	ElectionTimeout    time.Duration `yaml:"election_timeout"`
	LeaderLeaseTimeout time.Duration `yaml:"leader_lease_timeout"`
}

// TimingConfig holds the agent's loop periods.
type TimingConfig struct {
	// LoopInterval is how often the agent observes its PostgreSQL and converges it.
	LoopInterval time.Duration `yaml:"loop_interval"`
	// HealthInterval is how often members' observations are pulled over HTTP.
	HealthInterval time.Duration `yaml:"health_interval"`
	// FenceTimeout: an agent that has heard nothing from the Raft leader for
	// this long stops its PostgreSQL from accepting writes, and the leader
	// promotes a replacement only after this long (plus a margin) since the
	// old primary's last contact.
	FenceTimeout time.Duration `yaml:"fence_timeout"`
	// SwitchoverTimeout bounds a planned switchover; past it, it is cancelled
	// and the old primary resumes.
	SwitchoverTimeout time.Duration `yaml:"switchover_timeout"`
}

// FailoverConfig is the leader's failover policy.
type FailoverConfig struct {
	// SynchronousMode makes every commit wait for one standby, recorded in
	// Raft, so failover never loses an acknowledged write. Default on.
	SynchronousMode *bool `yaml:"synchronous_mode"`
	// MaximumLagOnFailover (bytes) bounds data loss in asynchronous mode:
	// a standby further behind the primary's last known LSN is not promoted.
	MaximumLagOnFailover int64 `yaml:"maximum_lag_on_failover"`
	// MaximumLagOnSwitchover (bytes): a switchover candidate further behind
	// is refused.
	MaximumLagOnSwitchover int64 `yaml:"maximum_lag_on_switchover"`
	// PrimaryRestartWindow: when the primary's postmaster crashes but its
	// agent lives, the leader lets the agent restart it in place (crash
	// recovery) for this long before failing over. 0 (the default) fails
	// over at once, which on small and medium databases is as fast and does
	// not depend on the crashed server coming back.
	PrimaryRestartWindow time.Duration `yaml:"primary_restart_window"`
}

// Synchronous reports whether synchronous mode is on.
func (f FailoverConfig) Synchronous() bool { return f.SynchronousMode == nil || *f.SynchronousMode }

// PostgresConfig is the local PostgreSQL instance this agent controls.
type PostgresConfig struct {
	BinDir    string `yaml:"bin_dir"`
	DataDir   string `yaml:"data_dir"`
	Listen    string `yaml:"listen"` // listen_addresses
	Host      string `yaml:"host"`   // the address other members and clients use
	Port      int    `yaml:"port"`
	SocketDir string `yaml:"socket_dir"`
	Superuser string `yaml:"superuser"`
	// RunAs is the OS user that runs PostgreSQL when the agent itself runs as root.
	RunAs           string            `yaml:"run_as"`
	Replication     RoleConfig        `yaml:"replication"`
	Monitor         RoleConfig        `yaml:"monitor"`
	Rewind          RoleConfig        `yaml:"rewind"`
	AllowedNetworks []string          `yaml:"allowed_networks"`
	HBA             []string          `yaml:"hba"`
	Parameters      map[string]string `yaml:"parameters"`
	// StopOnShutdown stops PostgreSQL (fast) when the agent is stopped cleanly.
	// A crashed or killed agent never stops it: agent death is not database death.
	StopOnShutdown *bool `yaml:"stop_on_shutdown"`
	// KeepReplacedDataDirs is how many data directories a re-clone replaced
	// are kept aside as <data_dir>.pgha-replaced-<time> (the only copy of
	// whatever made them diverge), while free space allows; 0 removes them.
	KeepReplacedDataDirs *int `yaml:"keep_replaced_data_dirs"`
}

// RoleConfig is a database role pgha creates and uses. The password comes from
// a file or an environment variable, never from the YAML itself.
type RoleConfig struct {
	User         string `yaml:"user"`
	PasswordFile string `yaml:"password_file"`
	PasswordEnv  string `yaml:"password_env"`

	password string // resolved by Load
}

// Password is the resolved secret.
func (r RoleConfig) Password() string { return r.password }

// TagsConfig are per-member hints for the leader's decisions.
type TagsConfig struct {
	NoFailover    bool `yaml:"nofailover"`    // never promoted, never synchronous while another member can be
	NoSync        bool `yaml:"nosync"`        // never synchronous while another member can be
	NoLoadBalance bool `yaml:"noloadbalance"` // the router sends it no reads
	Priority      int  `yaml:"priority"`      // among standbys with equal WAL, the higher is promoted
	CloneFrom     bool `yaml:"clonefrom"`     // preferred source of base backups for new and reinitialised standbys
	// Candidate: a non-voter (cluster.voter: false) may be promoted, and so
	// be a synchronous standby. Without it a non-voter is nofailover.
	Candidate bool `yaml:"candidate"`
}

// Defaults applied by Load before validation.
const (
	DefaultAPIPort        = 8008
	DefaultRaftPort       = 8300
	DefaultPostgresPort   = 5432
	DefaultLoopInterval   = 500 * time.Millisecond
	DefaultHealthInterval = 250 * time.Millisecond
	DefaultFenceTimeout   = time.Second
	// DefaultKeepReplacedDataDirs: the last data directory a re-clone
	// replaced stays aside as evidence.
	DefaultKeepReplacedDataDirs = 1
	// Raft timing tuned for failover in seconds on a LAN; raise them on
	// slow or distant networks. A follower notices a lost leader after one
	// to three heartbeat timeouts, and an election needs both survivors to
	// have noticed (each refuses votes while it still has a leader): with
	// 500 ms, the lost leader's successor came 1.1-1.4 s after the loss
	// (chaos host-loss, seed 778); 300 ms halves that. A stall that long
	// already costs the leader its lease (leader_lease_timeout, 250 ms).
	DefaultHeartbeatTimeout   = 300 * time.Millisecond
	DefaultElectionTimeout    = 500 * time.Millisecond
	DefaultLeaderLeaseTimeout = 250 * time.Millisecond
)

// LoadConfig reads, defaults and validates a node's YAML configuration.
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

// ParseConfig decodes YAML strictly (unknown keys are errors), applies defaults,
// resolves secrets and validates.
func ParseConfig(raw []byte) (*Config, error) {
	var cfg Config
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("parse YAML: %s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	cfg.applyDefaults()
	// Older files set the archive as PostgreSQL parameters.
	cfg.Postgres.Parameters, cfg.Archive = liftArchive(cfg.Postgres.Parameters, cfg.Archive)
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.resolveSecrets(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

func (c *Config) applyDefaults() {
	if c.API.Listen == "" {
		c.API.Listen = fmt.Sprintf("0.0.0.0:%d", DefaultAPIPort)
	}
	if c.Raft.Listen == "" {
		c.Raft.Listen = fmt.Sprintf("0.0.0.0:%d", DefaultRaftPort)
	}
	if c.Timing.LoopInterval == 0 {
		c.Timing.LoopInterval = DefaultLoopInterval
	}
	if c.Timing.HealthInterval == 0 {
		c.Timing.HealthInterval = DefaultHealthInterval
	}
	if c.Timing.FenceTimeout == 0 {
		c.Timing.FenceTimeout = DefaultFenceTimeout
	}
	if c.Timing.SwitchoverTimeout == 0 {
		c.Timing.SwitchoverTimeout = 15 * time.Second
	}
	if c.Raft.HeartbeatTimeout == 0 {
		c.Raft.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if c.Raft.ElectionTimeout == 0 {
		c.Raft.ElectionTimeout = DefaultElectionTimeout
	}
	if c.Raft.LeaderLeaseTimeout == 0 {
		c.Raft.LeaderLeaseTimeout = DefaultLeaderLeaseTimeout
	}
	if c.Failover.MaximumLagOnFailover == 0 {
		c.Failover.MaximumLagOnFailover = 1 << 20
	}
	if c.Failover.MaximumLagOnSwitchover == 0 {
		c.Failover.MaximumLagOnSwitchover = 16 << 20
	}
	p := &c.Postgres
	if p.Port == 0 {
		p.Port = DefaultPostgresPort
	}
	if p.Listen == "" {
		p.Listen = "*"
	}
	if p.SocketDir == "" {
		p.SocketDir = "/var/run/postgresql"
	}
	if p.Superuser == "" {
		p.Superuser = "postgres"
	}
	if p.Replication.User == "" {
		p.Replication.User = "replicator"
	}
	if p.Monitor.User == "" {
		p.Monitor.User = "pgha_monitor"
	}
	if p.Rewind.User == "" {
		p.Rewind.User = "pgha_rewind"
	}
	if p.StopOnShutdown == nil {
		yes := true
		p.StopOnShutdown = &yes
	}
	if p.KeepReplacedDataDirs == nil {
		n := DefaultKeepReplacedDataDirs
		p.KeepReplacedDataDirs = &n
	}
	c.Router.applyDefaults(c.VIP)
	if c.API.Advertise == "" {
		c.API.Advertise = c.memberField(func(m PeerConfig) string { return m.API })
	}
	if c.Raft.Advertise == "" {
		c.Raft.Advertise = c.memberField(func(m PeerConfig) string { return m.Raft })
	}
	if len(c.Cluster.Join) == 0 {
		for _, m := range c.Cluster.Members {
			if m.Name != c.Name {
				c.Cluster.Join = append(c.Cluster.Join, m.API)
			}
		}
	}
}

// validateTiming checks the timing section, of a node's file or of a
// cluster-wide change (PATCH /config), against this node's Raft timing.
func validateTiming(bad func(key, format string, args ...any), t TimingConfig, r RaftConfig) {
	if t.LoopInterval < 50*time.Millisecond || t.LoopInterval > time.Minute {
		bad("timing.loop_interval", "%s is out of range; use 50ms to 1m", t.LoopInterval)
	}
	if t.HealthInterval < 50*time.Millisecond || t.HealthInterval > time.Minute {
		bad("timing.health_interval", "%s is out of range; use 50ms to 1m", t.HealthInterval)
	}
	if t.FenceTimeout < r.LeaderLeaseTimeout {
		bad("timing.fence_timeout", "%s is shorter than raft.leader_lease_timeout (%s); a primary would fence itself before Raft notices anything", t.FenceTimeout, r.LeaderLeaseTimeout)
	} else if t.FenceTimeout <= r.ElectionTimeout {
		bad("timing.fence_timeout", "%s is not longer than raft.election_timeout (%s); the primary would freeze at every loss of the Raft leader, before the next one can renew its lease", t.FenceTimeout, r.ElectionTimeout)
	}
	if t.FenceTimeout > time.Minute {
		bad("timing.fence_timeout", "%s is out of range; use raft.leader_lease_timeout (%s) to 1m", t.FenceTimeout, r.LeaderLeaseTimeout)
	}
	if t.SwitchoverTimeout < time.Second || t.SwitchoverTimeout > time.Hour {
		bad("timing.switchover_timeout", "%s is out of range; use 1s to 1h", t.SwitchoverTimeout)
	}
}

// validateFailover checks the failover section, of a node's file or of a
// cluster-wide change.
func validateFailover(bad func(key, format string, args ...any), f FailoverConfig) {
	if f.MaximumLagOnFailover < 0 {
		bad("failover.maximum_lag_on_failover", "must not be negative")
	}
	if f.MaximumLagOnSwitchover < 0 {
		bad("failover.maximum_lag_on_switchover", "must not be negative")
	}
	if f.PrimaryRestartWindow < 0 {
		bad("failover.primary_restart_window", "must not be negative")
	}
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,40}$`)

// Validate checks every key and names the first wrong one with the fix.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.Name == "" {
		bad("name", "missing; set a member name such as node1")
	} else if !nameRE.MatchString(c.Name) {
		bad("name", "%q is not valid; use lowercase letters, digits, '-' or '_' (it becomes a replication slot name)", c.Name)
	}
	checkAbsDir(bad, "data_dir", c.DataDir)

	if len(c.Cluster.Members) == 0 && len(c.Cluster.Join) == 0 {
		bad("cluster.members", "missing; list the initial members (name, raft, api), or cluster.join for a node added later")
	}
	seen := map[string]bool{}
	for i, m := range c.Cluster.Members {
		key := fmt.Sprintf("cluster.members[%d]", i)
		if !nameRE.MatchString(m.Name) {
			bad(key+".name", "%q is not a valid member name", m.Name)
		}
		if seen[m.Name] {
			bad(key+".name", "%q is listed twice", m.Name)
		}
		seen[m.Name] = true
		checkHostPort(bad, key+".raft", m.Raft)
		checkURL(bad, key+".api", m.API)
		if m.Name == c.Name {
			if c.Raft.Advertise != "" && c.Raft.Advertise != m.Raft {
				bad("raft.advertise", "%q differs from this node's entry in cluster.members (%q)", c.Raft.Advertise, m.Raft)
			}
			if c.API.Advertise != "" && c.API.Advertise != m.API {
				bad("api.advertise", "%q differs from this node's entry in cluster.members (%q)", c.API.Advertise, m.API)
			}
		}
	}
	if n := len(c.Cluster.Members); n == 2 {
		bad("cluster.members", "two members cannot keep a majority when one fails; list three (or add a third, witness-only node)")
	}
	for i, u := range c.Cluster.Join {
		checkURL(bad, fmt.Sprintf("cluster.join[%d]", i), u)
	}
	if c.Cluster.Voter != nil && !*c.Cluster.Voter && c.InitialMember() {
		bad("cluster.voter", "false on an initial member: the members of cluster.members bootstrap Raft as its voters; add a non-voter as a node that is not in that list")
	}

	checkHostPort(bad, "api.listen", c.API.Listen)
	if c.API.Advertise == "" {
		bad("api.advertise", "missing; the URL other members use to reach this node's API, e.g. http://10.0.0.11:8008")
	} else {
		checkURL(bad, "api.advertise", c.API.Advertise)
	}
	checkHostPort(bad, "raft.listen", c.Raft.Listen)
	if c.Raft.Advertise == "" {
		bad("raft.advertise", "missing; the host:port other members dial for Raft, e.g. 10.0.0.11:8300")
	} else {
		checkHostPort(bad, "raft.advertise", c.Raft.Advertise)
		if h, _, err := net.SplitHostPort(c.Raft.Advertise); err == nil && (h == "0.0.0.0" || h == "::" || h == "") {
			bad("raft.advertise", "%q is not an address others can dial; give this host's address", c.Raft.Advertise)
		}
	}
	if c.Raft.LeaderLeaseTimeout != 0 && c.Raft.ElectionTimeout != 0 && c.Raft.LeaderLeaseTimeout >= c.Raft.ElectionTimeout {
		bad("raft.leader_lease_timeout", "must be shorter than raft.election_timeout, so a deposed leader steps down before a new one is elected")
	}
	validateTiming(bad, c.Timing, c.Raft)
	validateFailover(bad, c.Failover)
	validateArchive(bad, c.Archive, c.Backup.withDefaults(c.Cluster.Name))
	p := c.Postgres
	if p.BinDir == "" {
		bad("postgres.bin_dir", "missing; the directory with pg_ctl and initdb, e.g. /usr/lib/postgresql/15/bin")
	} else if _, err := os.Stat(filepath.Join(p.BinDir, "pg_ctl")); err != nil {
		bad("postgres.bin_dir", "%s has no pg_ctl; install PostgreSQL or fix the path", p.BinDir)
	}
	checkAbsDir(bad, "postgres.data_dir", p.DataDir)
	checkAbsDir(bad, "postgres.socket_dir", p.SocketDir)
	if n := p.KeepReplacedDataDirs; n != nil && (*n < 0 || *n > 10) {
		bad("postgres.keep_replaced_data_dirs", "%d is not between 0 and 10 (each copy is a whole data directory)", *n)
	}
	if p.Host == "" {
		bad("postgres.host", "missing; the address other members and clients use to reach this PostgreSQL")
	}
	if p.Port < 1 || p.Port > 65535 {
		bad("postgres.port", "%d is not a TCP port", p.Port)
	}
	// In a fixed order (not a map's): the same file gives the same errors.
	for _, kr := range []struct {
		key string
		r   RoleConfig
	}{{"postgres.replication", p.Replication}, {"postgres.monitor", p.Monitor}, {"postgres.rewind", p.Rewind}} {
		if kr.r.PasswordFile == "" && kr.r.PasswordEnv == "" {
			bad(kr.key+".password_file", "missing; give a file (mode 0600) holding the %s role's password, or password_env", kr.r.User)
		}
	}
	if err := postgres.ValidateParameters(p.Parameters); err != nil {
		bad("postgres.parameters", "%v", err)
	}
	for i, n := range p.AllowedNetworks {
		if err := postgres.ValidateAllowedNetwork(n); err != nil {
			bad(fmt.Sprintf("postgres.allowed_networks[%d]", i), "%v", err)
		}
	}
	if len(p.AllowedNetworks) == 0 {
		bad("postgres.allowed_networks", "missing; the CIDRs the other members connect from for replication, e.g. [10.0.0.0/24]")
	}
	c.validateSecurity(bad)
	c.Router.validate(bad)
	c.Callbacks.validate(bad)
	if err := c.VIP.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (c *Config) memberField(get func(PeerConfig) string) string {
	for _, m := range c.Cluster.Members {
		if m.Name == c.Name {
			return get(m)
		}
	}
	return ""
}

// InitialMember reports whether this node is one of the members the cluster bootstraps from.
// Voter reports whether this node votes in Raft (cluster.voter; by
// default the initial members do and nodes added later do not).
func (c *Config) Voter() bool {
	if c.Cluster.Voter != nil {
		return *c.Cluster.Voter
	}
	return c.InitialMember()
}

func (c *Config) InitialMember() bool {
	for _, m := range c.Cluster.Members {
		if m.Name == c.Name {
			return true
		}
	}
	return false
}

func (c *Config) resolveSecrets() error {
	roles := []struct {
		key string
		r   *RoleConfig
	}{{"postgres.replication", &c.Postgres.Replication}, {"postgres.monitor", &c.Postgres.Monitor}, {"postgres.rewind", &c.Postgres.Rewind}}
	for _, x := range roles {
		pw, err := readSecret(x.key+".password_file", x.key+".password_env", x.r.PasswordFile, x.r.PasswordEnv)
		if err != nil {
			return err
		}
		x.r.password = pw
	}
	if err := c.resolveSecurity(); err != nil {
		return err
	}
	return c.Router.resolveSecrets()
}

// readSecret reads a password from a file (first line) or an environment
// variable; fileKey and envKey name the settings in errors.
func readSecret(fileKey, envKey, file, env string) (string, error) {
	if file != "" {
		if err := checkSecretFile(fileKey, file); err != nil {
			return "", err
		}
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("%s: %w", fileKey, err)
		}
		pw := strings.TrimRight(strings.SplitN(string(b), "\n", 2)[0], "\r")
		if pw == "" {
			return "", fmt.Errorf("%s: %s is empty", fileKey, file)
		}
		return pw, nil
	}
	pw := os.Getenv(env)
	if pw == "" {
		return "", fmt.Errorf("%s: environment variable %s is empty or unset", envKey, env)
	}
	return pw, nil
}

func checkAbsDir(bad func(string, string, ...any), key, dir string) {
	switch {
	case dir == "":
		bad(key, "missing; give an absolute directory path")
	case !filepath.IsAbs(dir):
		bad(key, "%q is not an absolute path", dir)
	}
}

func checkHostPort(bad func(string, string, ...any), key, hp string) {
	if hp == "" {
		bad(key, "missing; give host:port")
		return
	}
	if _, port, err := net.SplitHostPort(hp); err != nil || port == "" || port == "0" {
		bad(key, "%q is not host:port", hp)
	}
}

func checkURL(bad func(string, string, ...any), key, raw string) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad(key, "%q is not a URL such as http://10.0.0.11:8008", raw)
	}
}

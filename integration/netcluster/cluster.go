// Package netcluster runs a pgha cluster on a network-namespace topology
// (internal/netns): three "hosts" h1..h3, each a namespace on one bridge
// with its own eth0 (10.77.0.11-13/24), its own port space and its own
// pgha-agent process started inside it as root (so the agent can hold the
// VIP, 10.77.0.100/24, with netlink and announce it with gratuitous ARP),
// running its PostgreSQL as the postgres OS user; and a client namespace
// (10.77.0.50, arp_accept=1) that reaches the cluster only through the VIP
// and the hosts' addresses, as an application server would.
//
// Every host uses the defaults of a real deployment: PostgreSQL on
// <host>:5432, the REST API on :8008, Raft on :8300, the router on the VIP's
// 9999 (read/write) and 9998 (read-only). Authentication is demo-grade: the
// test subnet is trusted by PostgreSQL and by the router; the REST API's
// control calls need the bearer token the harness writes.
//
// Faults: Cut/Heal a host's link (a full partition of one host), KillAgent,
// KillPostgres, KillHost (a machine lost: every process and its network),
// StartHost. Observations that never rely on one host's opinion:
// VIPHolders (the kernel's addresses in each namespace), WritablePrimaries
// (each PostgreSQL asked from inside its own namespace, so a host cut off
// from everyone else still answers), and View (GET /cluster of a reachable
// agent, from the client namespace).
//
// Everything needs root. New is for tests (cleanup in t.Cleanup, logs
// dumped on failure); Build and Close for programs such as the chaos
// campaign.
package netcluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/pgha/pgha/internal/itest"
	"github.com/pgha/pgha/internal/netns"
	"github.com/pgha/pgha/postgres"
)

// Fixed addresses and ports. Every host namespace has its own port space,
// so all hosts use the same, real-world ports.
const (
	PGPort             = 5432
	APIPort            = 8008
	RaftPort           = 8300
	RouterPort         = 9999
	RouterReadOnlyPort = 9998
	// VIPHostNumber is the VIP's host number on the segment: 10.77.0.100.
	VIPHostNumber = 100
	// User is the PostgreSQL role tests connect as (trusted on the subnet).
	User = "postgres"
	// nsPrefix names this package's namespaces ("pghanc-<pid>-<rand>-h1"),
	// so that netns.SweepStale with it removes only our leftovers.
	nsPrefix = "pghanc"
)

// Options describe a cluster. The zero value gives three hosts with the
// defaults below.
type Options struct {
	// Hosts is the number of members, default 3.
	Hosts int
	// Binary is a built pgha-agent; empty: Build runs `go build
	// ./cmd/pgha-agent` into a temporary directory (BuildAgent).
	Binary string
	// BinDir holds PostgreSQL's server binaries; default postgres.FindBinDir.
	BinDir string
	// RunAs is the OS user running PostgreSQL; default "postgres".
	RunAs string
	// LoopInterval and HealthInterval are the agents' timing.loop_interval
	// and timing.health_interval; defaults 200ms and 250ms.
	LoopInterval, HealthInterval time.Duration
	// DataFS puts each host's PostgreSQL data directory on a filesystem of
	// its own, so that FillDisk can fill it (see disk.go). DataFSSize is
	// its size, default 4GiB (a tmpfs: memory is used only for what is
	// written).
	DataFS     bool
	DataFSSize int64
	// Keep leaves the directory (configs, logs, data) in place after Close,
	// for a post-mortem.
	Keep bool
	// Logf receives progress lines (nil: none).
	Logf func(format string, args ...any)
}

// Cluster is a pgha cluster on a namespace topology.
//
// Concurrency: every method may be called from several goroutines. Faults
// on one host (Start/Kill*/Cut/Heal) are serialised per cluster by mu; the
// observation methods (View, WritablePrimaries, VIPHolders, ...) take no
// lock beyond what they read and may run alongside them. Call Close after
// the caller's own goroutines (writers, probers) have stopped.
type Cluster struct {
	// Topo is the namespace topology: Topo.Hosts[i] is Hosts[i].Node.
	Topo *netns.Topology
	// Hosts are h1..hN in order.
	Hosts []*Host
	// Client is the client namespace.
	Client *netns.Node
	// VIP is the virtual address with its prefix length, 10.77.0.100/24.
	VIP netip.Prefix
	// Dir holds everything on disk: secrets/, one directory per host.
	Dir string

	opts       Options
	binary     string
	dropBinary func() // removes a binary Build built itself
	token      string
	runAs      *syscall.Credential
	clientHTTP *http.Client // from the client namespace
	hostsHTTP  map[string]*http.Client
	closeOnce  sync.Once
	closeErr   error
	unregister func()
	mu         sync.Mutex                 // serialises process and link changes
	netlinks   map[string]*netlink.Handle // per host, bound to its namespace; safe for concurrent use
}

// Host is one member: a namespace, its agent process and its PostgreSQL.
type Host struct {
	// Name is the member's name and its namespace's node name: h1, h2, ...
	Name string
	// Node is its namespace.
	Node *netns.Node
	// IP is its eth0 address (PostgreSQL, API and Raft listen on it).
	IP netip.Addr
	// MAC is eth0's hardware address, lower case.
	MAC string
	// APIURL is the agent's REST API, e.g. http://10.77.0.11:8008.
	APIURL string

	Dir       string // the host's directory
	Config    string // its pgha-agent YAML
	AgentDir  string // the agent's data_dir (Raft state, pgpass)
	PGData    string // PostgreSQL's data directory
	DataFS    string // with Options.DataFS, the filesystem holding PGData and PGLog
	SocketDir string // its unix socket directory (distinct per host: the filesystem is shared)
	Log       string // the agent's stdout and stderr
	PGLog     string // PostgreSQL's server log (pg_ctl -l)

	// Guarded by Cluster.mu.
	cmd  *exec.Cmd
	done chan struct{} // closed when the agent process has exited
	down bool          // KillHost took the machine off the network
	// frozen are PostgreSQL processes stopped by FreezePostgres or
	// StallAgentSessions, for ThawPostgres.
	frozen []int
	// agentFrozen: FreezeAgent stopped the agent and ThawAgent has not
	// resumed it yet.
	agentFrozen bool
	thawedAt    time.Time // when ThawAgent last resumed it
	startedAt   time.Time // when its agent process was last started
	mounted     bool      // DataFS is mounted
	// squatter holds PGPort in h's namespace (OccupyPGPort).
	squatter net.Listener
}

// PGAddr is host:port of the host's PostgreSQL.
func (h *Host) PGAddr() string { return netip.AddrPortFrom(h.IP, PGPort).String() }

// Build creates the topology, writes every host's configuration and secrets,
// and builds the agent binary if Options.Binary is empty. Nothing is started:
// call StartAll. On error everything created so far is removed. The caller
// must Close the cluster; if the process is interrupted first, agents get
// SIGTERM when it dies (they stop their PostgreSQL) and the next Build
// removes the namespaces left behind.
func Build(opts Options) (*Cluster, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("netcluster: needs root: agents run inside network namespaces with CAP_NET_ADMIN for the VIP")
	}
	if opts.Hosts == 0 {
		opts.Hosts = 3
	}
	if opts.BinDir == "" {
		opts.BinDir = postgres.FindBinDir()
		if opts.BinDir == "" {
			return nil, errors.New("netcluster: PostgreSQL binaries not found (no pg_config --bindir, no /usr/lib/postgresql/*/bin)")
		}
	}
	if opts.RunAs == "" {
		opts.RunAs = "postgres"
	}
	if opts.LoopInterval == 0 {
		opts.LoopInterval = 200 * time.Millisecond
	}
	if opts.HealthInterval == 0 {
		opts.HealthInterval = 250 * time.Millisecond
	}
	cred, err := credentialOf(opts.RunAs)
	if err != nil {
		return nil, err
	}
	c := &Cluster{opts: opts, runAs: cred, hostsHTTP: map[string]*http.Client{}, netlinks: map[string]*netlink.Handle{}}
	if err := c.build(); err != nil {
		return nil, errors.Join(err, c.Close())
	}
	c.unregister = register(c)
	return c, nil
}

func (c *Cluster) build() error {
	dir, err := os.MkdirTemp("/tmp", "pgha-nc-")
	if err != nil {
		return err
	}
	c.Dir = dir
	// PostgreSQL (the postgres user) must traverse it to reach its data.
	if err := c.mkdirOwned(dir, 0o755); err != nil {
		return err
	}
	c.binary = c.opts.Binary
	if c.binary == "" {
		c.logf("building pgha-agent")
		bin, drop, err := BuildAgent()
		if err != nil {
			return err
		}
		c.binary, c.dropBinary = bin, drop
	}
	topo, err := netns.Build(netns.Options{Hosts: c.opts.Hosts, Client: true, Prefix: nsPrefix})
	if err != nil {
		return err
	}
	c.Topo, c.Client = topo, topo.Client
	c.VIP = topo.Address(VIPHostNumber)
	c.clientHTTP = httpClientIn(c.Client.NS)
	if err := c.writeSecrets(); err != nil {
		return err
	}
	for _, n := range topo.Hosts {
		hd := filepath.Join(dir, n.Name)
		h := &Host{
			Name: n.Name, Node: n, IP: n.IP(), MAC: n.MAC,
			APIURL:    fmt.Sprintf("http://%s", netip.AddrPortFrom(n.IP(), APIPort)),
			Dir:       hd,
			Config:    filepath.Join(hd, "node.yaml"),
			AgentDir:  filepath.Join(hd, "agent"),
			PGData:    filepath.Join(hd, "pgdata"),
			SocketDir: filepath.Join(hd, "run"),
			Log:       filepath.Join(hd, "agent.log"),
			PGLog:     filepath.Join(hd, "pgdata.log"),
		}
		c.Hosts = append(c.Hosts, h)
		c.hostsHTTP[h.Name] = httpClientIn(n.NS)
	}
	for _, h := range c.Hosts {
		if err := c.mkdirOwned(h.Dir, 0o755); err != nil {
			return err
		}
		// The agent runs as root but writes its pgpass here for the
		// walreceiver, pg_basebackup and pg_rewind, which run as RunAs. An
		// agent creates a missing data_dir as root, mode 0700, and they then
		// fail with "fe_sendauth: no password supplied"; so it is made here,
		// RunAs's.
		if err := c.mkdirOwned(h.AgentDir, 0o700); err != nil {
			return err
		}
		if err := c.mkdirOwned(h.SocketDir, 0o755); err != nil {
			return err
		}
		if c.opts.DataFS {
			if err := c.mountDataFS(h); err != nil {
				return err
			}
		}
		if err := os.WriteFile(h.Config, []byte(c.nodeConfig(h)), 0o600); err != nil {
			return err
		}
		nl, err := netlinkIn(h.Node)
		if err != nil {
			return err
		}
		c.netlinks[h.Name] = nl
	}
	return nil
}

// New builds a cluster for a test: it fails the test if it cannot (and
// skips it without root, unless CI=true), dumps the agents' and
// PostgreSQL's log tails if the test failed, and closes the cluster in
// t.Cleanup. Nothing is started yet.
func New(t testing.TB, opts Options) *Cluster {
	t.Helper()
	netns.Require(t)
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	c, err := Build(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(c.LogTails(80, 30))
		}
		if err := c.Close(); err != nil {
			t.Errorf("netcluster close: %v", err)
		}
	})
	return c
}

// Close stops every agent (SIGTERM; they stop their PostgreSQL), then kills
// whatever is left: agents that did not stop within 20s, postmasters by the
// pid in their postmaster.pid, and every process still inside the
// namespaces, which it then deletes. The directory is removed unless
// Options.Keep. Close may be called more than once.
func (c *Cluster) Close() error {
	c.closeOnce.Do(func() { c.closeErr = c.close() })
	return c.closeErr
}

func (c *Cluster) close() error {
	if c.unregister != nil {
		c.unregister()
	}
	var errs []error
	// A stopped process would hold SIGTERM until resumed.
	for _, h := range c.Hosts {
		_ = c.ThawAgent(h)
		_ = c.ThawPostgres(h)
		_ = c.ReleasePGPort(h)
	}
	var wg sync.WaitGroup
	for _, h := range c.Hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := c.StopAgent(ctx, h); err != nil {
				c.logf("close: %v", err)
			}
		}()
	}
	wg.Wait()
	for _, h := range c.Hosts {
		if pid := postmasterPID(h); pid != 0 && alive(pid) {
			c.logf("close: killing PostgreSQL %d of %s left running", pid, h.Name)
			killGroupOrPid(pid)
		}
	}
	for _, h := range c.Hosts {
		if c.opts.Keep && h.mounted {
			c.logf("close: %s's data stays on the tmpfs at %s (umount it when done)", h.Name, h.DataFS)
			continue
		}
		if err := c.unmountDataFS(h); err != nil {
			errs = append(errs, err)
		}
	}
	for _, nl := range c.netlinks {
		nl.Close()
	}
	if c.Topo != nil {
		errs = append(errs, c.Topo.Close())
	}
	if c.dropBinary != nil {
		c.dropBinary()
	}
	if c.Dir != "" && !c.opts.Keep {
		errs = append(errs, os.RemoveAll(c.Dir))
	} else if c.Dir != "" {
		c.logf("kept %s", c.Dir)
	}
	return errors.Join(errs...)
}

// Host returns the host with that name (h1, ...), or nil.
func (c *Cluster) Host(name string) *Host {
	for _, h := range c.Hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// Token is the REST API's bearer token for control calls.
func (c *Cluster) Token() string { return c.token }

// TokenFile is the file holding Token (api.auth_token_file).
func (c *Cluster) TokenFile() string { return filepath.Join(c.Dir, "secrets", "api.token") }

func (c *Cluster) secret(name string) string {
	return filepath.Join(c.Dir, "secrets", name+".password")
}

// writeSecrets writes the three role passwords and the API token, mode 0600
// and owned by root: the agents run as root and read them before anything
// else (PostgreSQL gets them through the pgpass the agent writes).
func (c *Cluster) writeSecrets() error {
	dir := filepath.Join(c.Dir, "secrets")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	for _, name := range []string{"replication", "monitor", "rewind"} {
		if err := os.WriteFile(c.secret(name), []byte(randomHex(16)+"\n"), 0o600); err != nil {
			return err
		}
	}
	c.token = randomHex(32)
	return os.WriteFile(c.TokenFile(), []byte(c.token+"\n"), 0o600)
}

func (c *Cluster) mkdirOwned(dir string, mode os.FileMode) error {
	if err := os.MkdirAll(dir, mode); err != nil {
		return err
	}
	if err := os.Chmod(dir, mode); err != nil {
		return err
	}
	return os.Chown(dir, int(c.runAs.Uid), int(c.runAs.Gid))
}

func (c *Cluster) logf(format string, args ...any) {
	if c.opts.Logf != nil {
		c.opts.Logf(format, args...)
	}
}

func credentialOf(name string) (*syscall.Credential, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("netcluster: PostgreSQL runs as the %q OS user: %w (create it: useradd --system --home /var/lib/postgresql postgres)", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails on Linux
	return hex.EncodeToString(b)
}

// BuildAgent builds cmd/pgha-agent into a fresh directory and returns the
// binary and a function removing it (itest.BuildAgent).
func BuildAgent() (string, func(), error) { return itest.BuildAgent() }

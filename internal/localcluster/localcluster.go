// Package localcluster runs a pgha cluster on one machine's loopback: every
// node is its own pgha-agent OS process (started from the built binary) with
// its own real PostgreSQL, so one "host" can be killed without touching the
// others. `pgha-agent demo`, the integration tests and the benchmarks use it.
//
// When the caller is root, agents run as the postgres OS user (PostgreSQL
// refuses root) and everything under Dir is owned by that user.
package localcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/pki"
)

// Options describe the cluster. Zero values take the demo's defaults.
type Options struct {
	Dir    string // everything lives below it; reusing it resumes the cluster
	Binary string // the pgha-agent binary; copied into Dir/bin
	BinDir string // PostgreSQL binaries
	Name   string // cluster name
	Nodes  int    // initial members, default 3
	// Ports of node i are APIPorts[i], RaftPorts[i], PGPorts[i]; defaults
	// 8008.., 8300.., 5433.. (5433 so a system PostgreSQL on 5432 is left alone).
	APIPorts, RaftPorts, PGPorts []int
	// The router's read/write and read-only ports on 127.0.0.1, served by
	// whichever agent is the Raft leader; defaults 9999 and 9998.
	RouterPort, RouterReadOnlyPort int
	LoopInterval, HealthInterval   time.Duration
	RunAs                          string // OS user for agents when root; default "postgres"
	// TLS gives the cluster a CA and each node a certificate (in Dir/certs,
	// see CertDir) and configures the agents' tls section: Raft over mutual
	// TLS and the REST API on https:// URLs.
	TLS bool
	// SecureRouter: the router requires TLS and SCRAM (see router.go).
	SecureRouter bool
	// ExtraConfig, if set, returns YAML appended to each node's config
	// (top-level sections the defaults leave out, such as callbacks).
	ExtraConfig func(name string) string
	// Parameters, if set, returns PostgreSQL parameters added to a node's
	// postgres.parameters (a node whose file disagrees with the others).
	Parameters func(name string) map[string]string
	// FenceTimeout, if set, returns a node's timing.fence_timeout (0: the
	// default): a node whose file disagrees with the others.
	FenceTimeout func(name string) time.Duration
}

// Cluster is a set of local nodes.
type Cluster struct {
	opts       Options
	binary     string
	cred       *syscall.Credential
	client     *http.Client // trusts the cluster CA with Options.TLS, presents nothing
	viewClient *http.Client // client plus the API token, for View

	mu    sync.Mutex
	nodes []*Node
}

// Node is one "host": an agent process and the PostgreSQL it controls.
type Node struct {
	Name      string
	Initial   bool
	APIPort   int
	RaftPort  int
	PGPort    int
	APIURL    string
	Dir       string // the node's directory
	Config    string // its YAML
	AgentDir  string // agent data_dir (Raft state)
	PGData    string
	SocketDir string
	Log       string       // the agent's log file (PostgreSQL's is in PGData's sibling, see postgres)
	TLS       pki.TLSFiles // its CA, certificate and key (zero without Options.TLS)

	cmd  *exec.Cmd
	done chan struct{} // closed when the agent process has exited
	err  error         // its exit status
}

// New prepares Dir (configs, secrets, the binary) without starting anything.
// Existing secrets and data are kept, so a second New on the same Dir resumes.
func New(opts Options) (*Cluster, error) {
	if opts.Dir == "" || opts.Binary == "" || opts.BinDir == "" {
		return nil, errors.New("localcluster: Dir, Binary and BinDir are required")
	}
	if opts.Name == "" {
		opts.Name = "pgha-demo"
	}
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.LoopInterval == 0 {
		opts.LoopInterval = agent.DefaultLoopInterval
	}
	if opts.HealthInterval == 0 {
		opts.HealthInterval = agent.DefaultHealthInterval
	}
	if opts.RunAs == "" {
		opts.RunAs = "postgres"
	}
	opts.APIPorts = withDefaults(opts.APIPorts, 8008, opts.Nodes)
	opts.RaftPorts = withDefaults(opts.RaftPorts, 8300, opts.Nodes)
	opts.PGPorts = withDefaults(opts.PGPorts, 5433, opts.Nodes)
	if opts.RouterPort == 0 {
		opts.RouterPort = agent.DefaultRouterPort
	}
	if opts.RouterReadOnlyPort == 0 {
		opts.RouterReadOnlyPort = agent.DefaultRouterReadOnlyPort
	}

	c := &Cluster{opts: opts}
	if os.Geteuid() == 0 {
		cred, err := credentialOf(opts.RunAs)
		if err != nil {
			return nil, err
		}
		c.cred = cred
	}
	if err := c.mkdir(opts.Dir, filepath.Join(opts.Dir, "bin"), filepath.Join(opts.Dir, "secrets")); err != nil {
		return nil, err
	}
	// The caller's binary may sit in a directory the postgres user cannot
	// enter (go run builds under a 0700 temp dir), so agents run a copy.
	c.binary = filepath.Join(opts.Dir, "bin", "pgha-agent")
	if err := copyFile(opts.Binary, c.binary, 0o755); err != nil {
		return nil, fmt.Errorf("copy agent binary: %w", err)
	}
	if err := c.ensureSecrets(); err != nil {
		return nil, err
	}
	var initial []*Node
	var names []string
	for i := 0; i < opts.Nodes; i++ {
		n := c.newNode(fmt.Sprintf("node%d", i+1), true, opts.APIPorts[i], opts.RaftPorts[i], opts.PGPorts[i])
		initial = append(initial, n)
		names = append(names, n.Name)
	}
	if opts.TLS {
		if err := c.issueCerts(names...); err != nil {
			return nil, err
		}
	}
	if err := c.prepareSecureRouter(); err != nil {
		return nil, err
	}
	client, err := newHTTPClient(c.CA())
	if err != nil {
		return nil, err
	}
	c.client = client
	c.viewClient = &http.Client{Transport: bearer{token: c.Token, next: client.Transport}}
	if client.Transport == nil {
		c.viewClient.Transport = bearer{token: c.Token, next: http.DefaultTransport}
	}
	for _, n := range initial {
		if err := c.writeNode(n, initial); err != nil {
			return nil, err
		}
	}
	c.nodes = initial
	return c, nil
}

func withDefaults(ports []int, base, n int) []int {
	out := append([]int{}, ports...)
	for i := len(out); i < n; i++ {
		out = append(out, base+i)
	}
	return out
}

func (c *Cluster) newNode(name string, initial bool, api, raft, pg int) *Node {
	dir := filepath.Join(c.opts.Dir, name)
	scheme := "http"
	var files pki.TLSFiles
	if c.opts.TLS {
		scheme, files = "https", pki.Files(c.CertDir(), name)
	}
	return &Node{
		Name: name, Initial: initial,
		APIPort: api, RaftPort: raft, PGPort: pg,
		TLS:       files,
		APIURL:    fmt.Sprintf("%s://127.0.0.1:%d", scheme, api),
		Dir:       dir,
		Config:    filepath.Join(dir, "node.yaml"),
		AgentDir:  filepath.Join(dir, "agent"),
		PGData:    filepath.Join(dir, "pgdata"),
		SocketDir: filepath.Join(dir, "run"),
		Log:       filepath.Join(dir, "agent.log"),
	}
}

func (c *Cluster) writeNode(n *Node, initial []*Node) error {
	if err := c.mkdir(n.Dir, n.SocketDir); err != nil {
		return err
	}
	return c.writeFile(n.Config, []byte(c.nodeConfig(n, initial)), 0o600)
}

// AddNode prepares a node that is not an initial member: it joins through
// the others when started. With Options.TLS the cluster CA issues its
// certificate.
func (c *Cluster) AddNode(name string, apiPort, raftPort, pgPort int) (*Node, error) {
	var files pki.TLSFiles
	if c.opts.TLS {
		if err := c.issueCerts(name); err != nil {
			return nil, err
		}
		files = pki.Files(c.CertDir(), name)
	}
	return c.addNode(name, apiPort, raftPort, pgPort, files)
}

func (c *Cluster) addNode(name string, apiPort, raftPort, pgPort int, files pki.TLSFiles) (*Node, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var initial []*Node
	for _, n := range c.nodes {
		if n.Initial {
			initial = append(initial, n)
		}
	}
	n := c.newNode(name, false, apiPort, raftPort, pgPort)
	n.TLS = files
	if err := c.writeNode(n, initial); err != nil {
		return nil, err
	}
	c.nodes = append(c.nodes, n)
	return n, nil
}

// Nodes lists the nodes.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Node{}, c.nodes...)
}

// Node returns the node with that name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes() {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Start starts a node's agent process (which starts its PostgreSQL).
func (c *Cluster) Start(n *Node) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n.cmd != nil && !n.exited() {
		return fmt.Errorf("%s is already running", n.Name)
	}
	logf, err := os.OpenFile(n.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(c.binary, "run", "--config", n.Config)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = n.Dir
	// Its own process group: a Ctrl-C in the demo's terminal reaches the demo,
	// which stops the agents in order, not every process at once. If the
	// demo or test process dies without stopping them, the kernel sends them
	// SIGTERM, so they stop their PostgreSQL and leave nothing behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: c.cred, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start agent %s: %w", n.Name, err)
	}
	n.cmd, n.done, n.err = cmd, make(chan struct{}), nil
	go func(n *Node, cmd *exec.Cmd, done chan struct{}) {
		err := cmd.Wait()
		logf.Close()
		c.mu.Lock()
		n.err = err
		c.mu.Unlock()
		close(done)
	}(n, cmd, n.done)
	return nil
}

// StartAll starts every node that is not running.
func (c *Cluster) StartAll() error {
	for _, n := range c.Nodes() {
		if n.Running() {
			continue
		}
		if err := c.Start(n); err != nil {
			return err
		}
	}
	return nil
}

// Running reports whether the node's agent process is alive.
func (n *Node) Running() bool { return n.cmd != nil && !n.exited() }

// AgentPID is the agent process's PID, 0 when it is not running.
func (n *Node) AgentPID() int {
	if !n.Running() {
		return 0
	}
	return n.cmd.Process.Pid
}

// Exited is closed when the agent process has ended (nil if never started).
func (n *Node) Exited() <-chan struct{} { return n.done }

func (n *Node) exited() bool {
	select {
	case <-n.done:
		return true
	default:
		return false
	}
}

// Stop asks the agent to stop (SIGTERM; it stops its PostgreSQL) and waits.
func (c *Cluster) Stop(ctx context.Context, n *Node) error { return c.stop(ctx, n, 0, nil) }

// stop is Stop, and after grace (if not 0) StopAllWithin's report and
// immediate stop of the node's PostgreSQL.
func (c *Cluster) stop(ctx context.Context, n *Node, grace time.Duration, slow func(*Node, string)) error {
	if !n.Running() {
		return nil
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	if grace > 0 {
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-n.done:
			return nil
		case <-ctx.Done():
		case <-t.C:
			if slow != nil {
				slow(n, c.StillRunning(n))
			}
			// The agent's pg_ctl stop -m fast returns once the postmaster
			// is gone, and the agent exits.
			c.stopPostgres(ctx, n, "immediate", 10)
		}
	}
	select {
	case <-n.done:
		return nil
	case <-ctx.Done():
		_ = n.cmd.Process.Kill()
		<-n.done
		return fmt.Errorf("%s did not stop in time: killed", n.Name)
	}
}

// StillRunning describes what of node n still runs: its agent and pg_ctl,
// and the postmaster's processes by their titles ("postgres: walsender
// replicator 127.0.0.1(40112) streaming 0/5000148", "postgres:
// checkpointer performing shutdown checkpoint"), which say what a
// shutdown waits for.
func (c *Cluster) StillRunning(n *Node) string {
	var parts []string
	if n.Running() {
		agent := "agent"
		for _, child := range childPIDs(n.cmd.Process.Pid) {
			agent += " > " + processTitle(child)
		}
		parts = append(parts, agent)
	}
	if pid := n.PostmasterPID(); pid != 0 && alive(pid) {
		titles := []string{"postmaster"}
		for _, child := range childPIDs(pid) {
			titles = append(titles, processTitle(child))
		}
		parts = append(parts, strings.Join(titles, "; "))
	} else {
		parts = append(parts, "PostgreSQL already stopped")
	}
	return strings.Join(parts, "; ")
}

// processTitle is pid's command line as ps shows it (PostgreSQL's
// processes write their state there).
func processTitle(pid int) string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return strconv.Itoa(pid) + " (exited)"
	}
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
}

// KillAgent kills the agent process only (kill -9); its PostgreSQL keeps running.
func (c *Cluster) KillAgent(n *Node) {
	if n.Running() {
		_ = n.cmd.Process.Kill()
		<-n.done
	}
}

// PostmasterPID reads the node's postmaster.pid (0 if none).
func (n *Node) PostmasterPID() int {
	b, err := os.ReadFile(filepath.Join(n.PGData, "postmaster.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	return pid
}

// KillPostgres kills the node's postmaster (kill -9), as a crash would.
func (c *Cluster) KillPostgres(n *Node) error {
	pid := n.PostmasterPID()
	if pid == 0 || !alive(pid) {
		return fmt.Errorf("%s: no running postmaster", n.Name)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill postmaster of %s: %w", n.Name, err)
	}
	return nil
}

// KillHost kills the agent and its PostgreSQL together, as losing the
// machine would: the postmaster and every one of its children, so no
// backend lives on to acknowledge a write.
func (c *Cluster) KillHost(n *Node) {
	pid := n.PostmasterPID()
	if n.Running() {
		_ = n.cmd.Process.Kill()
	}
	if pid != 0 && alive(pid) {
		killTree(pid)
	}
	if n.done != nil {
		<-n.done
	}
}

// StopAll stops every agent, then makes sure no PostgreSQL of the cluster is
// left running (an agent killed earlier leaves its postmaster behind).
func (c *Cluster) StopAll(ctx context.Context) error { return c.StopAllWithin(ctx, 0, nil) }

// StopAllWithin is StopAll for someone waiting at a terminal: a node whose
// agent has not exited grace after SIGTERM (it stops its PostgreSQL in
// fast mode) is reported to slow, naming what still runs (StillRunning),
// and its PostgreSQL is stopped in immediate mode, which is crash-safe: the
// server recovers from its WAL at the next start. grace 0 waits for ctx.
func (c *Cluster) StopAllWithin(ctx context.Context, grace time.Duration, slow func(n *Node, running string)) error {
	var wg sync.WaitGroup
	var errs []error
	var mu sync.Mutex
	for _, n := range c.Nodes() {
		wg.Add(1)
		go func(n *Node) {
			defer wg.Done()
			if err := c.stop(ctx, n, grace, slow); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}(n)
	}
	wg.Wait()
	for _, n := range c.Nodes() {
		if err := c.stopOrphanPostgres(ctx, n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// stopOrphanPostgres stops a postmaster no agent looks after any more:
// pg_ctl stop -m fast, then SIGKILL if it will not go.
func (c *Cluster) stopOrphanPostgres(ctx context.Context, n *Node) error {
	pid := n.PostmasterPID()
	if pid == 0 || !alive(pid) {
		return nil
	}
	if out, err := c.stopPostgres(ctx, n, "fast", 30); err != nil && alive(pid) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		return fmt.Errorf("stop orphaned PostgreSQL of %s: %v: %s", n.Name, err, out)
	}
	return nil
}

// stopPostgres runs pg_ctl stop on n's data directory in mode, waiting up
// to seconds.
func (c *Cluster) stopPostgres(ctx context.Context, n *Node, mode string, seconds int) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.opts.BinDir, "pg_ctl"), "stop", "-D", n.PGData, "-m", mode, "-w", "-t", strconv.Itoa(seconds))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	return cmd.CombinedOutput()
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// killTree kills pid and its children with SIGKILL. Killing the process
// group is not enough: pg_ctl does not always leave the postmaster a group
// leader, and a backend outliving its postmaster may still finish a commit.
// The postmaster is stopped first so it forks nothing meanwhile.
func killTree(pid int) {
	_ = syscall.Kill(pid, syscall.SIGSTOP)
	for _, child := range childPIDs(pid) {
		_ = syscall.Kill(child, syscall.SIGKILL)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// childPIDs lists the processes whose parent is pid, from /proc.
func childPIDs(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, child)
		}
	}
	return out
}

// View fetches GET /cluster from the first node whose agent answers.
func (c *Cluster) View(ctx context.Context) (agent.ClusterView, error) {
	var errs []error
	for _, n := range c.Nodes() {
		if !n.Running() {
			continue
		}
		v, err := FetchViewWith(ctx, c.viewClient, n.APIURL)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		// A member that just restarted may still be replaying the Raft log:
		// the leader's view is the committed one.
		if l := c.Node(v.RaftLeader); l != nil && l != n && l.Running() {
			if lv, err := FetchViewWith(ctx, c.viewClient, l.APIURL); err == nil {
				return lv, nil
			}
		}
		return v, nil
	}
	if len(errs) == 0 {
		return agent.ClusterView{}, errors.New("no agent is running")
	}
	return agent.ClusterView{}, errors.Join(errs...)
}

// FetchView GETs one agent's /cluster over plain HTTP.
func FetchView(ctx context.Context, apiURL string) (agent.ClusterView, error) {
	return FetchViewWith(ctx, http.DefaultClient, apiURL)
}

// Healthy reports whether the view shows `members` members: one running
// primary and every other member streaming.
func Healthy(v agent.ClusterView, members int) bool {
	if len(v.Members) != members {
		return false
	}
	primaries, streaming := 0, 0
	for _, m := range v.Members {
		switch {
		case m.Role == "leader" && m.State == "running":
			primaries++
		case m.Role != "leader" && m.State == "streaming":
			streaming++
		}
	}
	return primaries == 1 && streaming == members-1
}

// secret is the path of a generated password file.
func (c *Cluster) secret(name string) string {
	return filepath.Join(c.opts.Dir, "secrets", name+".password")
}

func (c *Cluster) mkdir(dirs ...string) error {
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if err := c.chown(d); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) writeFile(path string, data []byte, mode os.FileMode) error {
	if err := os.WriteFile(path, data, mode); err != nil {
		return err
	}
	return c.chown(path)
}

func (c *Cluster) chown(path string) error {
	if c.cred == nil {
		return nil
	}
	return os.Chown(path, int(c.cred.Uid), int(c.cred.Gid))
}

func credentialOf(name string) (*syscall.Credential, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("running as root, agents run as the %q OS user: %w (create it: useradd --system --home /var/lib/postgresql postgres)", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// RouterAddr is the router's read/write address (served by the Raft leader).
func (c *Cluster) RouterAddr() string { return fmt.Sprintf("127.0.0.1:%d", c.opts.RouterPort) }

// RouterReadOnlyAddr is the router's read-only address.
func (c *Cluster) RouterReadOnlyAddr() string {
	return fmt.Sprintf("127.0.0.1:%d", c.opts.RouterReadOnlyPort)
}

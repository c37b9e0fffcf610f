package consensus

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

// Defaults for the zero values of Config.
const (
	DefaultHeartbeatTimeout   = time.Second
	DefaultElectionTimeout    = time.Second
	DefaultLeaderLeaseTimeout = 500 * time.Millisecond
	// DefaultCommitTimeout is how soon followers hear that an entry was
	// committed when nothing else is sent (raft waits up to twice this),
	// and so how often an idle leader sends each follower an empty
	// AppendEntries. Apply pushes the commit index at once (pushCommit):
	// raft's own default is enough for the rest (membership changes).
	DefaultCommitTimeout     = 50 * time.Millisecond
	DefaultSnapshotThreshold = 1024
	DefaultRaftLogLevel      = "warn"
)

const (
	logCacheSize      = 64 // the newest entries, kept in memory
	boltFile          = "raft.db"
	snapshotsRetained = 2
	transportMaxPool  = 3
	transportTimeout  = 10 * time.Second
	boltOpenTimeout   = time.Second
)

// Config configures one Raft member. The zero values of the durations, of
// SnapshotThreshold and of RaftLogLevel select the defaults above.
type Config struct {
	ID            string // raft server ID, unique and stable for the node's life (the pgha node name)
	BindAddr      string // host:port the Raft transport listens on; port 0 picks a free port
	AdvertiseAddr string // host:port other members dial; "" advertises the bound address (which must not be 0.0.0.0)
	Dir           string // data directory: raft.db (log + stable store) and snapshots/
	Logger        *slog.Logger

	HeartbeatTimeout, ElectionTimeout, LeaderLeaseTimeout, CommitTimeout time.Duration
	SnapshotThreshold                                                    uint64

	// RaftLogLevel is the least level of raft's own records passed to Logger:
	// "trace", "debug", "info", "warn" (default) or "error".
	RaftLogLevel string

	// ServerTLS and ClientTLS, when set (both or neither), make the raft
	// transport mutual TLS: ServerTLS for accepted connections, with
	// ClientAuth tls.RequireAndVerifyClientCert, and ClientTLS, with this
	// node's certificate, for dialing peers, whose certificates must carry
	// the host or IP of their raft address (pki.TLSFiles builds both). Every
	// member of a cluster must use TLS or none. When nil the transport is
	// plain TCP. The configs must not be modified after Open.
	ServerTLS, ClientTLS *tls.Config
}

// withDefaults returns c with zero values replaced by defaults.
func (c Config) withDefaults() Config {
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = DefaultElectionTimeout
	}
	if c.LeaderLeaseTimeout == 0 {
		c.LeaderLeaseTimeout = DefaultLeaderLeaseTimeout
	}
	if c.CommitTimeout == 0 {
		c.CommitTimeout = DefaultCommitTimeout
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = DefaultSnapshotThreshold
	}
	if c.RaftLogLevel == "" {
		c.RaftLogLevel = DefaultRaftLogLevel
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Validate checks a Config after defaults are applied and names the key at
// fault.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.ID == "":
		return errors.New("consensus config: ID is empty; set it to the node name")
	case c.BindAddr == "":
		return errors.New("consensus config: BindAddr is empty; set host:port for raft to listen on")
	case c.Dir == "":
		return errors.New("consensus config: Dir is empty; set the raft data directory")
	case c.HeartbeatTimeout < 0 || c.ElectionTimeout < 0 || c.LeaderLeaseTimeout < 0 || c.CommitTimeout < 0:
		return errors.New("consensus config: timeouts must not be negative")
	case c.ElectionTimeout < c.HeartbeatTimeout:
		return fmt.Errorf("consensus config: ElectionTimeout (%s) must be >= HeartbeatTimeout (%s)", c.ElectionTimeout, c.HeartbeatTimeout)
	// VIP on one host (DESIGN safety rule): a leader that loses its quorum
	// must step down, and so drop the VIP, before the rest can elect a new
	// leader. Raft steps down after LeaderLeaseTimeout; followers start an
	// election no sooner than ElectionTimeout. Hence lease < election.
	case c.LeaderLeaseTimeout >= c.ElectionTimeout:
		return fmt.Errorf("consensus config: LeaderLeaseTimeout (%s) must be shorter than ElectionTimeout (%s)", c.LeaderLeaseTimeout, c.ElectionTimeout)
	case c.LeaderLeaseTimeout > c.HeartbeatTimeout:
		return fmt.Errorf("consensus config: LeaderLeaseTimeout (%s) must not exceed HeartbeatTimeout (%s)", c.LeaderLeaseTimeout, c.HeartbeatTimeout)
	}
	if hclog.LevelFromString(c.RaftLogLevel) == hclog.NoLevel {
		return fmt.Errorf("consensus config: RaftLogLevel %q is not one of trace, debug, info, warn, error", c.RaftLogLevel)
	}
	return validateTLS(c.ServerTLS, c.ClientTLS)
}

// Server is one member of the Raft configuration.
type Server struct {
	ID, Addr string
	// NonVoter: it receives the log but does not vote (Servers reports
	// it; Bootstrap ignores it and makes every server a voter).
	NonVoter bool
}

// Node is this process's Raft member and its replica of State.
//
// All methods are safe for concurrent use from any goroutine. The Node owns
// one goroutine (leadership observation) and raft's own goroutines; Close
// stops them all.
type Node struct {
	id, addr  string
	advertise string // Config.AdvertiseAddr as configured
	log       *slog.Logger

	raft   *raft.Raft
	fsm    *fsm
	store  *raftboltdb.BoltStore // the log; also the stable store, through stable
	stable *closableStable
	snaps  *raft.FileSnapshotStore
	trans  *ackTransport

	observer *raft.Observer
	obsCh    chan raft.Observation
	watchers broadcaster
	leaders  leaderFanout

	closing   chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error

	// For LeaderContact. The observer's filter runs inside raft's state
	// change, so leading is exactly raft's "this node leads" and ledUntil is
	// no earlier than the end of its last leadership.
	opened   time.Time // from then on the observer sees every state change
	leading  atomic.Bool
	ledMu    sync.Mutex
	ledUntil time.Time
	// voteTerm is the highest term a candidate asked this node's vote for,
	// and contactBeforeVote its last contact with a leader before that
	// request: granting a vote also counts as contact in raft.
	voteTerm          uint64
	contactBeforeVote time.Time
}

// Open opens the stores in cfg.Dir and the transport, and starts Raft. It
// does not bootstrap: see the package documentation for when to call
// Bootstrap.
func Open(cfg Config) (n *Node, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	level := hclog.LevelFromString(cfg.RaftLogLevel)
	logger := cfg.Logger.With("node", cfg.ID)
	hl := newRaftLogger(logger, level)

	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("open raft dir: %w", err)
	}

	var closers []func() error
	defer func() {
		if err != nil {
			for i := len(closers) - 1; i >= 0; i-- {
				_ = closers[i]()
			}
		}
	}()

	// The open timeout turns a second process on the same Dir into an
	// error instead of a hang on bolt's file lock.
	store, err := raftboltdb.New(raftboltdb.Options{
		Path:        filepath.Join(cfg.Dir, boltFile),
		BoltOptions: &bbolt.Options{Timeout: boltOpenTimeout},
	})
	if err != nil {
		return nil, fmt.Errorf("open raft store %s: %w", filepath.Join(cfg.Dir, boltFile), err)
	}
	stable := &closableStable{StableStore: store, close: store.Close}
	closers = append(closers, stable.Close)

	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, snapshotsRetained, hl.Named("snapshot"))
	if err != nil {
		return nil, fmt.Errorf("open snapshot store in %s: %w", cfg.Dir, err)
	}

	var advertise net.Addr
	if cfg.AdvertiseAddr != "" {
		a, err := net.ResolveTCPAddr("tcp", cfg.AdvertiseAddr)
		if err != nil {
			return nil, fmt.Errorf("resolve AdvertiseAddr %q: %w", cfg.AdvertiseAddr, err)
		}
		advertise = a
	}
	trans, err := newTransport(cfg, advertise, hl.Named("transport"), logger)
	if err != nil {
		return nil, fmt.Errorf("raft transport on %s: %w", cfg.BindAddr, err)
	}
	closers = append(closers, trans.Close)

	n = &Node{
		id:        cfg.ID,
		addr:      string(trans.LocalAddr()),
		advertise: cfg.AdvertiseAddr,
		log:       logger,
		store:     store,
		stable:    stable,
		snaps:     snaps,
		trans:     trans,
		obsCh:     make(chan raft.Observation, 16),
		closing:   make(chan struct{}),
		done:      make(chan struct{}),
	}
	n.fsm = newFSM(n.watchers.notify)

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.CommitTimeout
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.Logger = hl
	// The leader reads the entry before each follower's next one for every
	// AppendEntries it sends, heartbeats of the commit index included (every
	// CommitTimeout per follower, idle or not): from memory, not from bolt
	// and msgpack (a fifth of an idle leader's CPU).
	logs, err := raft.NewLogCache(logCacheSize, store)
	if err != nil {
		return nil, fmt.Errorf("raft log cache: %w", err)
	}
	r, err := raft.NewRaft(rc, n.fsm, logs, stable, snaps, trans)
	if err != nil {
		return nil, fmt.Errorf("start raft: %w", err)
	}
	n.raft = r

	n.observer = raft.NewObserver(n.obsCh, false, func(o *raft.Observation) bool {
		switch st := o.Data.(type) {
		case raft.RaftState:
			n.noteState(st)
			return true
		case raft.LeaderObservation:
			return true
		case raft.RequestVoteRequest:
			n.noteVoteRequest(st.Term)
		}
		return false
	})
	r.RegisterObserver(n.observer)
	n.opened = time.Now()
	n.obsCh <- raft.Observation{} // evaluate once: transitions before registration
	go n.observe()
	logger.Info("raft started", "addr", n.addr, "dir", cfg.Dir, "has_state", n.HasState())
	return n, nil
}

// newTransport returns raft's TCP transport, over mutual TLS if cfg says so,
// recording acknowledgements for VerifyLeader (ackTransport). One request
// in flight per peer turns pipelined replication off.
func newTransport(cfg Config, advertise net.Addr, hl hclog.Logger, logger *slog.Logger) (*ackTransport, error) {
	tc := &raft.NetworkTransportConfig{
		MaxPool:         transportMaxPool,
		MaxRPCsInFlight: 1,
		Timeout:         transportTimeout,
		Logger:          hl,
	}
	if cfg.ServerTLS == nil {
		t, err := raft.NewTCPTransportWithConfig(cfg.BindAddr, advertise, tc)
		if err != nil {
			return nil, err
		}
		return newAckTransport(t), nil
	}
	stream, err := newTLSStreamLayer(cfg.BindAddr, advertise, cfg.ServerTLS, cfg.ClientTLS, logger)
	if err != nil {
		return nil, err
	}
	tc.Stream = stream
	return newAckTransport(raft.NewNetworkTransportWithConfig(tc)), nil
}

// observe turns raft's leadership and state observations into Watch and
// LeaderCh signals. It runs until Close. Observations carry no data we
// trust: each one triggers a fresh read of raft's state, so one dropped by
// a full channel loses nothing.
func (n *Node) observe() {
	defer close(n.done)
	for {
		select {
		case <-n.obsCh:
		case <-n.closing:
			return
		}
		n.leaders.publish(n.raft.State() == raft.Leader)
		n.watchers.notify()
	}
}

// ID returns the node's raft server ID.
func (n *Node) ID() string { return n.id }

// Addr returns the address the node advertises to other members (the
// actual port when BindAddr asked for port 0).
func (n *Node) Addr() string { return n.addr }

// HasState reports whether this node has any Raft state on disk: a term, a
// log entry or a snapshot. A node with state was part of a cluster and must
// never bootstrap. If the stores cannot be read it reports true: not knowing
// must not lead to a second bootstrap.
func (n *Node) HasState() bool {
	has, err := raft.HasExistingState(n.store, n.store, n.snaps)
	if err != nil {
		n.log.Error("cannot read raft state; assuming it exists", "err", err)
		return true
	}
	return has
}

// Bootstrap writes the initial configuration of a new cluster. It is legal
// only on a node without state (HasState false) and otherwise returns an
// error wrapping ErrAlreadyBootstrapped, which also covers the race where a
// leader bootstrapped elsewhere reached this node first. servers must
// include this node with its advertised address, and must be the identical
// list on every initial member.
func (n *Node) Bootstrap(servers []Server) error {
	if len(servers) == 0 {
		return errors.New("bootstrap: empty server list")
	}
	if n.HasState() {
		return fmt.Errorf("bootstrap %s: %w", n.id, ErrAlreadyBootstrapped)
	}
	var conf raft.Configuration
	self := false
	for _, s := range servers {
		if s.ID == "" || s.Addr == "" {
			return fmt.Errorf("bootstrap: server %q at %q: ID and Addr are required", s.ID, s.Addr)
		}
		if s.ID == n.id {
			if !n.isSelfAddr(s.Addr) {
				return fmt.Errorf("bootstrap: this node %s is listed at %s but advertises %s", n.id, s.Addr, n.addr)
			}
			self = true
		}
		conf.Servers = append(conf.Servers, raft.Server{
			Suffrage: raft.Voter,
			ID:       raft.ServerID(s.ID),
			Address:  raft.ServerAddress(s.Addr),
		})
	}
	if !self {
		return fmt.Errorf("bootstrap: this node %s is not in the server list", n.id)
	}
	// Sorted, so that every initial member writes a byte-identical first
	// log entry whatever order its caller listed the servers in.
	slices.SortFunc(conf.Servers, func(a, b raft.Server) int { return cmp.Compare(a.ID, b.ID) })
	if err := n.raft.BootstrapCluster(conf).Error(); err != nil {
		if errors.Is(err, raft.ErrCantBootstrap) {
			return fmt.Errorf("bootstrap %s: %w", n.id, ErrAlreadyBootstrapped)
		}
		return fmt.Errorf("bootstrap %s: %w", n.id, err)
	}
	n.log.Info("raft bootstrapped", "servers", len(servers))
	return nil
}

// Apply commits c through Raft and returns the FSM's verdict: nil, or an
// error wrapping ErrRefused or ErrUnknownCommand. On success the command is
// applied to this node's State before Apply returns.
//
// On a follower it returns an error wrapping ErrNotLeader and writes
// nothing. If ctx ends first Apply returns ctx's error, but the command
// may still be committed later; the same holds for an error wrapping
// raft.ErrLeadershipLost. Commands are safe to retry in those cases only
// if they are idempotent or guarded by an epoch.
func (n *Node) Apply(ctx context.Context, c Command) error {
	b, err := c.Encode()
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("apply %s: %w", c.Type, err)
	}
	if err := n.leaderOnly(); err != nil {
		return fmt.Errorf("apply %s: %w", c.Type, err)
	}
	f := n.raft.Apply(b, enqueueTimeout(ctx))
	if err := n.wait(ctx, f); err != nil {
		return fmt.Errorf("apply %s: %w", c.Type, err)
	}
	if err, ok := f.Response().(error); ok && err != nil {
		return fmt.Errorf("apply %s: %w", c.Type, err)
	}
	n.pushCommit()
	return nil
}

// pushCommit tells the followers now that the log is committed up to the
// entry just applied, rather than at raft's next idle round (CommitTimeout):
// a member named the primary acts on the promotion only once its own copy
// of the state has it. raft sends the commit index with the next entry, so
// one is appended: a barrier, the cheapest (no state, and not waited for;
// an error means leadership is gone, and the next leader's first entry
// pushes the index anyway). This is what lets CommitTimeout be long, and
// an idle leader send nothing but heartbeats.
func (n *Node) pushCommit() {
	n.raft.Barrier(pushEnqueueTimeout)
}

// pushEnqueueTimeout bounds the wait for raft's leader loop to take the
// barrier: an Apply never waits long for its push.
const pushEnqueueTimeout = 10 * time.Millisecond

// State returns a deep copy of the committed state as applied on this node.
// On a follower it may lag the leader; Barrier on the leader, or Index,
// tell how far it is.
func (n *Node) State() State { return n.fsm.state().withTagOverrides() }

// Config is State().Config, cheaper: for the settings read on every pass
// of the agent's loops.
func (n *Node) Config() ClusterConfig { return n.fsm.config() }

// Watch returns a channel that receives after each change of State and
// each change of leadership or raft state (this node's, or who the leader
// is). Signals are non-blocking and coalesced: one pending signal stands for
// any number of changes, so read State/IsLeader after receiving. The func
// unsubscribes; it is safe to call more than once. The channel is never
// closed; after Close it gets one last signal and RaftState is "shutdown".
func (n *Node) Watch() (<-chan struct{}, func()) { return n.watchers.subscribe() }

// IsLeader reports whether this node is the Raft leader now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// VerifyLeader confirms with a quorum that this node is still the leader, so
// a decision taken now is not taken by a deposed leader. It returns once a
// quorum of voters, this node included, accepted a request of this leader
// sent after the call began: each of them reports a LeaderContact no earlier
// than that (see ackTransport for why raft's own verification is not enough).
func (n *Node) VerifyLeader(ctx context.Context) error {
	asked := time.Now()
	f := n.raft.VerifyLeader()
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
	case <-ctx.Done():
		return ctx.Err()
	}
	var peers []raft.ServerID
	voters := 0
	for _, s := range n.raft.GetConfiguration().Configuration().Servers {
		if s.Suffrage != raft.Voter {
			continue
		}
		voters++
		if s.ID != raft.ServerID(n.id) {
			peers = append(peers, s.ID)
		}
	}
	if err := n.trans.waitAccepted(ctx, asked, peers, voters/2); err != nil {
		return fmt.Errorf("verify leadership: no quorum accepted a request sent since %s ago: %w", time.Since(asked).Round(time.Millisecond), err)
	}
	return nil
}

// Leader returns the ID and address of the leader as this node knows it;
// both are empty if no leader is known.
func (n *Node) Leader() (id, addr string) {
	a, i := n.raft.LeaderWithID()
	return string(i), string(a)
}

// RaftState returns "leader", "follower", "candidate" or "shutdown".
func (n *Node) RaftState() string {
	return strings.ToLower(n.raft.State().String())
}

// LastContact returns, on a follower, the last time it heard from a leader
// (zero if never); on the leader, time.Now().
func (n *Node) LastContact() time.Time {
	if n.IsLeader() {
		return time.Now()
	}
	return n.raft.LastContact()
}

// LeaderContact bounds the last time this node took part in a leader's
// verification of its leadership (VerifyLeader), as the leader or as a
// follower that acknowledged its heartbeat: now while it leads, or has not
// yet noticed that it stopped; otherwise the last contact with a leader
// (raft sets it also when this node stops leading), or when the node was
// opened if later (a restarted node remembers no contact).
//
// A leader's decision verified at time v was acknowledged by a quorum, every
// member of which reports a LeaderContact after v until it hears from a
// later leader: the latest LeaderContact of any quorum bounds every such v
// (two quorums share a member). See PriorLeaderContact for the leader's own.
func (n *Node) LeaderContact() time.Time {
	if n.raft.State() == raft.Leader || n.leading.Load() {
		return time.Now()
	}
	return n.PriorLeaderContact()
}

// LeaderContactBefore is LeaderContact as it was before this node was
// asked to vote in term: what it tells the leader elected in term about the
// leaders before it. Raft counts a granted vote as contact, which would
// push the answer to the election itself.
func (n *Node) LeaderContactBefore(term uint64) time.Time {
	if n.raft.State() == raft.Leader || n.leading.Load() {
		return time.Now()
	}
	n.ledMu.Lock()
	before, ok := n.contactBeforeVote, n.voteTerm == term
	n.ledMu.Unlock()
	if !ok {
		return n.PriorLeaderContact()
	}
	return n.latest(before)
}

// PriorLeaderContact is LeaderContact without the current leadership: what a
// node that has just become leader knows of the time before its election.
func (n *Node) PriorLeaderContact() time.Time {
	return n.latest(n.raft.LastContact())
}

// latest returns the latest of t, the end of this node's last leadership
// and when it was opened.
func (n *Node) latest(t time.Time) time.Time {
	n.ledMu.Lock()
	defer n.ledMu.Unlock()
	for _, u := range []time.Time{n.ledUntil, n.opened} {
		if u.After(t) {
			t = u
		}
	}
	return t
}

// noteVoteRequest runs in raft's handling of a vote request, before it
// decides: no heartbeat of an older term is accepted after it (the request
// raises this node's term), so the contact read here covers them all.
func (n *Node) noteVoteRequest(term uint64) {
	n.ledMu.Lock()
	defer n.ledMu.Unlock()
	if term > n.voteTerm {
		n.voteTerm, n.contactBeforeVote = term, n.raft.LastContact()
	}
}

// noteState runs inside raft's state change (the observer's filter).
func (n *Node) noteState(st raft.RaftState) {
	if st == raft.Leader {
		n.leading.Store(true)
		return
	}
	if n.leading.Load() {
		// ledUntil first: a reader that sees leading false sees it.
		n.ledMu.Lock()
		n.ledUntil = time.Now()
		n.ledMu.Unlock()
		n.leading.Store(false)
	}
}

// AppliedIndex is the index of the last log entry applied to this FSM.
func (n *Node) AppliedIndex() uint64 { return n.raft.AppliedIndex() }

// Term is raft's current term: a node that leads in two different terms
// led twice, with possibly another leader between.
func (n *Node) Term() uint64 { return n.raft.CurrentTerm() }

// CommitIndex is the highest log index this node knows to be committed.
func (n *Node) CommitIndex() uint64 { return n.raft.CommitIndex() }

// LeaderCh returns a new channel that delivers this node's leadership:
// true on gaining it, false on losing it. It is primed with the current
// value, holds only the latest value a slow reader has not received (never
// blocks raft), delivers false on Close and is never closed. Every call
// makes a new channel with its own copy of the stream, so several
// consumers do not steal from each other; call it once per consumer, since
// channels are kept until the Node is garbage. Unlike raft.LeaderCh it is
// safe to ignore.
func (n *Node) LeaderCh() <-chan bool { return n.leaders.subscribe() }

// AddVoter adds a voting member, or updates the address of an existing one.
// Leader only; returns once the configuration change is committed. The new
// node must be Open (not bootstrapped): the leader replicates the log or a
// snapshot to it.
func (n *Node) AddVoter(ctx context.Context, id, addr string) error {
	if id == "" || addr == "" {
		return fmt.Errorf("add voter %q at %q: ID and address are required", id, addr)
	}
	if err := n.leaderOnly(); err != nil {
		return fmt.Errorf("add voter %s: %w", id, err)
	}
	f := n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, enqueueTimeout(ctx))
	if err := n.wait(ctx, f); err != nil {
		return fmt.Errorf("add voter %s: %w", id, err)
	}
	n.log.Info("raft voter added", "member", id, "addr", addr)
	return nil
}

// AddNonvoter adds a member that receives the log but never votes nor
// leads, or updates its address (a voter keeps its vote: only
// DemoteVoter takes it). Leader
// only; returns once the configuration change is committed.
func (n *Node) AddNonvoter(ctx context.Context, id, addr string) error {
	if id == "" || addr == "" {
		return fmt.Errorf("add non-voter %q at %q: ID and address are required", id, addr)
	}
	if err := n.leaderOnly(); err != nil {
		return fmt.Errorf("add non-voter %s: %w", id, err)
	}
	f := n.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(addr), 0, enqueueTimeout(ctx))
	if err := n.wait(ctx, f); err != nil {
		return fmt.Errorf("add non-voter %s: %w", id, err)
	}
	n.log.Info("raft non-voter added", "member", id, "addr", addr)
	return nil
}

// DemoteVoter takes a member's vote away; it stays in the configuration as
// a non-voter. Leader only; returns once the configuration change is
// committed (a demoted leader steps down).
func (n *Node) DemoteVoter(ctx context.Context, id string) error {
	if err := n.leaderOnly(); err != nil {
		return fmt.Errorf("demote voter %s: %w", id, err)
	}
	f := n.raft.DemoteVoter(raft.ServerID(id), 0, enqueueTimeout(ctx))
	if err := n.wait(ctx, f); err != nil {
		return fmt.Errorf("demote voter %s: %w", id, err)
	}
	n.log.Info("raft voter demoted", "member", id)
	return nil
}

// RemoveServer removes a member from the Raft configuration. Leader only;
// returns once the configuration change is committed.
func (n *Node) RemoveServer(ctx context.Context, id string) error {
	if id == "" {
		return errors.New("remove server: ID is required")
	}
	if err := n.leaderOnly(); err != nil {
		return fmt.Errorf("remove server %s: %w", id, err)
	}
	f := n.raft.RemoveServer(raft.ServerID(id), 0, enqueueTimeout(ctx))
	if err := n.wait(ctx, f); err != nil {
		return fmt.Errorf("remove server %s: %w", id, err)
	}
	n.log.Info("raft server removed", "member", id)
	return nil
}

// Servers returns the latest Raft configuration known to this node (voters
// and non-voters).
func (n *Node) Servers() ([]Server, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("raft configuration: %w", err)
	}
	cfg := f.Configuration()
	out := make([]Server, 0, len(cfg.Servers))
	for _, s := range cfg.Servers {
		out = append(out, Server{ID: string(s.ID), Addr: string(s.Address), NonVoter: s.Suffrage != raft.Voter})
	}
	return out, nil
}

// Stats returns raft's diagnostic counters (raft.Raft.Stats).
func (n *Node) Stats() map[string]string { return n.raft.Stats() }

// Barrier waits until every entry committed before the call is applied to
// this node's FSM. Leader only. After it returns, State reflects every
// command committed so far.
func (n *Node) Barrier(ctx context.Context) error {
	if err := n.leaderOnly(); err != nil {
		return fmt.Errorf("barrier: %w", err)
	}
	if err := n.wait(ctx, n.raft.Barrier(enqueueTimeout(ctx))); err != nil {
		return fmt.Errorf("barrier: %w", err)
	}
	return nil
}

// Snapshot asks raft to take a snapshot now and compact the log. Having
// nothing new to snapshot is not an error.
func (n *Node) Snapshot() error {
	err := n.raft.Snapshot().Error()
	if err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) {
		return fmt.Errorf("snapshot: %w", err)
	}
	return nil
}

// Close shuts raft down (without leaving the configuration: a restarted
// node rejoins as the same member), closes the transport and the stores.
// Safe to call more than once; later calls return the first call's error.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		var errs []error
		// Shutdown also closes the transport.
		if err := n.raft.Shutdown().Error(); err != nil {
			errs = append(errs, fmt.Errorf("raft shutdown: %w", err))
		}
		n.raft.DeregisterObserver(n.observer)
		close(n.closing)
		<-n.done
		n.leaders.publish(false)
		n.watchers.notify()
		if err := n.trans.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close raft transport: %w", err))
		}
		if err := n.stable.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close raft store: %w", err))
		}
		n.closeErr = errors.Join(errs...)
		n.log.Info("raft stopped")
	})
	return n.closeErr
}

// isSelfAddr reports whether addr names this node's advertised address,
// literally or after resolving a host name (config may say "pg1:8300"
// while the transport advertises the resolved "10.0.0.11:8300").
func (n *Node) isSelfAddr(addr string) bool {
	if addr == n.addr || (n.advertise != "" && addr == n.advertise) {
		return true
	}
	a, err := net.ResolveTCPAddr("tcp", addr)
	return err == nil && a.String() == n.addr
}

// leaderOnly returns nil on the leader, otherwise an error wrapping
// ErrNotLeader that names the leader if one is known.
func (n *Node) leaderOnly() error {
	if n.IsLeader() {
		return nil
	}
	return n.notLeader()
}

func (n *Node) notLeader() error {
	id, addr := n.Leader()
	if addr == "" {
		return fmt.Errorf("%w: no leader known to %s", ErrNotLeader, n.id)
	}
	return fmt.Errorf("%w: leader is %s at %s", ErrNotLeader, id, addr)
}

// wait waits for f or ctx. If ctx ends first, the goroutine waiting on f
// lives on until raft resolves f, which it always does (at the latest with
// ErrRaftShutdown on Close).
func (n *Node) wait(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		return fmt.Errorf("%w (the operation may still complete)", ctx.Err())
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		// Rejected before it entered the log: nothing was written.
		return n.notLeader()
	case errors.Is(err, raft.ErrLeadershipLost):
		return fmt.Errorf("%w: the entry may or may not be committed", err)
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
	}
	return err
}

// enqueueTimeout converts ctx's deadline into raft's enqueue timeout
// (0 means none).
func enqueueTimeout(ctx context.Context) time.Duration {
	dl, ok := ctx.Deadline()
	if !ok {
		return 0
	}
	return max(time.Until(dl), time.Millisecond)
}

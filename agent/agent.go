// Package agent is the node supervisor: it observes the local PostgreSQL,
// converges it to the committed cluster state, makes the Raft leader's
// decisions and serves the REST API.
//
// Goroutines, all started by Run and stopped before it returns:
//   - the HTTP server (REST API and the agents' internal calls), from before
//     bootstrap until Run returns;
//
// and seven loops, started together once the node has bootstrapped or joined
// and stopped when Run's context ends or this node is removed:
//   - reconcile: converges the local PostgreSQL to the committed state
//     (initdb, clone, configure, start, promote, rewind);
//   - observe: takes this node's observation and pulls every other member's
//     over HTTP, each member on a goroutine of its own;
//   - lead: on the Raft leader only, turns state + observations into commands;
//   - register: makes sure this node is a Raft voter with a current member record;
//   - lease: on the committed primary only, renews its lease with the Raft
//     leader (lease.go);
//   - fence: stops a writable PostgreSQL whose lease has run out (DESIGN's
//     "One writer");
//   - front: on the Raft leader only, runs the router and holds the VIP.
//
// The loops start short-lived goroutines of their own (a poll per member,
// the router's listeners, timers that wake the leader's loop); each ends
// with its loop's context or its own timeout.
//
// reconcile and fence both act on PostgreSQL's lifecycle, and only reconcile
// takes pgMu: the fence stops PostgreSQL by signal and never waits for a
// lock (fence.go).
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
	"github.com/pgha/pgha/vip"
)

// ErrRemoved is returned by Run when this node was removed from the cluster.
var ErrRemoved = errors.New("this node was removed from the cluster")

// Agent runs one member of a pgha cluster.
type Agent struct {
	cfg  *Config
	log  *slog.Logger
	inst *postgres.Instance
	node *consensus.Node
	obs  *observations
	http *http.Client

	// dbMu serialises use of inst's database connection between the
	// reconcile loop and the observation served over HTTP.
	dbMu sync.Mutex

	lastLoop atomic.Int64 // unix nanos of the last finished reconcile pass (for /liveness)
	removed  atomic.Bool  // the leader confirmed this node is no longer a voter
	// removalHint wakes the register loop to check whether this node was removed.
	removalHint chan struct{}
	// wakeLeader makes the leader's loop run now (an agent pushed news).
	wakeLeader chan struct{}
	lead       leader
	front      front                          // the router and the VIP, on the leader (front.go)
	nodeRef    atomic.Pointer[consensus.Node] // node, for readers outside Run's goroutines (Ready)
	vip        vip.Manager                    // nil when no VIP is configured

	// pgMu is held by the reconcile loop around actions on PostgreSQL's
	// lifecycle (start, stop, promote, rewind). The fence loop does not
	// take it (its stop must not wait), so nothing else takes it today.
	pgMu sync.Mutex
	// writableEpoch is the epoch in which this agent last had its PostgreSQL
	// running as the primary; if it is down in that same epoch, it crashed
	// or was fenced, and starting it again is a restart the leader may refuse.
	writableEpoch atomic.Uint64
	// wakingReceiver is set while a goroutine wakes this standby's
	// startup process until it streams from its new upstream
	// (followNewUpstream).
	wakingReceiver atomic.Bool
	started        time.Time // when Run began (the fence clock starts here)
	// restarted: Raft state existed when this run began. Its committed
	// state then lags the log until a leader says how far it is committed
	// (raft applies the log's tail only then), so it may not yet know that
	// it is the primary (fence.go).
	restarted bool
	lease     lease // the primary's right to be writable (lease.go)
	// acted: the reconcile loop has caught up with the Raft log and taken
	// its first step on PostgreSQL since Run began (Observation.StartingUp).
	acted          atomic.Bool
	rolesPID       int          // the postmaster whose roles were last ensured (reconcile loop only)
	rewindFailures int          // consecutive failed pg_rewind runs (reconcile loop only)
	syncedAt       time.Time    // when the FSM last had all the leader had committed (reconcile loop only)
	reinit         atomic.Bool  // an operator asked to re-clone this standby
	lastRejoin     atomic.Value // "rewind", "clone" or "follow": how this node last rejoined as a standby
	// forked says why this standby's WAL went past the fork of the
	// primary's timeline, from when the reconcile loop saw it until it is
	// rewound or re-cloned; "" otherwise (reconcile.go).
	forked atomic.Value
	// replay follows this standby's replay position (replaywatch.go).
	replay replayWatch
	// history caches this primary's timeline history (observe.go).
	history timelineHistory
	// stoppedWAL caches where the stopped data directory's WAL ends (adopt.go).
	stoppedWAL stoppedWALCache
	// lags and events are the status page's memory, fed by the observe
	// loop (laghistory.go, events.go).
	lags   lagHistory
	events eventLog

	callbacks *callbacks // the operator's hooks (callbacks.go)
	// configNoted is the cluster-wide configuration version whose
	// differences from this node's file were last logged.
	configNoted atomic.Uint64
	// scheduledRunning: the leader is starting a scheduled switchover.
	scheduledRunning atomic.Bool
	// restartsRunning: the leader is running scheduled restarts.
	restartsRunning atomic.Bool

	// backupReq hands a backup to backupLoop; backups is its status
	// (backup.go).
	backupReq chan backupRequest
	backups   backupState

	mu       sync.Mutex
	activity string // what the reconcile loop is busy with (initdb, cloning)
	problem  string // what stops it converging, in words
}

// New checks the configuration against the machine and prepares the agent.
func New(cfg *Config, log *slog.Logger) (*Agent, error) {
	if log == nil {
		log = slog.Default()
	}
	log = log.With("node", cfg.Name)
	pc := cfg.Postgres
	inst, err := postgres.New(postgres.Config{
		BinDir:          pc.BinDir,
		DataDir:         pc.DataDir,
		ListenAddresses: pc.Listen,
		Port:            pc.Port,
		SocketDir:       pc.SocketDir,
		Superuser:       pc.Superuser,
		Replication:     postgres.Role{Name: pc.Replication.User, Password: pc.Replication.Password()},
		Monitor:         postgres.Role{Name: pc.Monitor.User, Password: pc.Monitor.Password()},
		Rewind:          postgres.Role{Name: pc.Rewind.User, Password: pc.Rewind.Password()},
		Parameters:      pc.Parameters,
		HBA:             pc.HBA,
		Archive:         cfg.Archive.postgres(),
		AllowedNetworks: pc.AllowedNetworks,
		RunAs:           pc.RunAs,
		Logger:          log,
	})
	if err != nil {
		return nil, err // "postgres config: ..." already says whose
	}
	var vipm vip.Manager
	if cfg.VIP.Enabled() {
		if vipm, err = vip.New(cfg.VIP, log.With("component", "vip")); err != nil {
			return nil, fmt.Errorf("vip: %w", err)
		}
	}
	return &Agent{
		vip:  vipm,
		cfg:  cfg,
		log:  log,
		inst: inst,
		obs:  newObservations(),
		http: newAPIClient(cfg, 5*time.Second),

		removalHint: make(chan struct{}, 1),
		backupReq:   make(chan backupRequest),
		wakeLeader:  make(chan struct{}, 1),
		callbacks:   newCallbacks(cfg.Callbacks, cfg.Cluster.Name, cfg.Name, log.With("component", "callbacks")),
	}, nil
}

// Run starts the agent and blocks until ctx ends or the node is removed.
func (a *Agent) Run(ctx context.Context) error {
	a.started = time.Now()
	// Owned by postgres.run_as when the agent runs as root: the passfile in
	// it must be readable by PostgreSQL's tools (pg_basebackup, pg_rewind).
	if err := postgres.MkdirAs(a.cfg.DataDir, 0o700, a.cfg.Postgres.RunAs); err != nil {
		return fmt.Errorf("create data_dir: %w", err)
	}
	if err := a.writePassfile(); err != nil {
		return err
	}
	a.killFrozenAtStart()
	a.loadLease()
	ln, err := net.Listen("tcp", a.cfg.API.Listen)
	if err != nil {
		return fmt.Errorf("api.listen %s: %w", a.cfg.API.Listen, err)
	}
	node, err := consensus.Open(consensus.Config{
		ID:                 a.cfg.Name,
		BindAddr:           a.cfg.Raft.Listen,
		AdvertiseAddr:      a.cfg.Raft.Advertise,
		Dir:                filepath.Join(a.cfg.DataDir, "raft"),
		Logger:             a.log,
		HeartbeatTimeout:   a.cfg.Raft.HeartbeatTimeout,
		ElectionTimeout:    a.cfg.Raft.ElectionTimeout,
		LeaderLeaseTimeout: a.cfg.Raft.LeaderLeaseTimeout,
		// nil without tls: plain TCP, as the consensus package defaults.
		ServerTLS: a.cfg.TLS.server,
		ClientTLS: a.cfg.TLS.client,
	})
	if err != nil {
		ln.Close()
		return fmt.Errorf("raft: %w", err)
	}
	a.node = node
	a.nodeRef.Store(node)
	a.restarted = node.HasState()
	defer node.Close()

	srv := a.apiServer()
	go func() {
		var err error
		if srv.TLSConfig != nil {
			err = srv.ServeTLS(ln, "", "") // the certificate is in TLSConfig
		} else {
			err = srv.Serve(ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("REST API stopped", "err", err)
		}
	}()
	defer srv.Close()
	a.log.Info("agent started", "api", a.cfg.API.Advertise, "raft", a.cfg.Raft.Advertise, "pgdata", a.cfg.Postgres.DataDir)
	a.logAPISecurity()

	if err := a.bootstrapIfNew(ctx); err != nil {
		return err
	}

	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, loop := range []func(context.Context){a.reconcileLoop, a.observeLoop, a.leadLoop, a.registerLoop, a.leaseLoop, a.fenceLoop, a.frontLoop, a.callbacks.run, a.backupLoop} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loop(runCtx)
		}()
	}
	removed := a.waitRemoved(runCtx)
	stop()
	wg.Wait()

	if removed {
		a.log.Warn("removed from the cluster: stopping PostgreSQL", "reason", "the Raft leader removed this member")
		a.stopPostgres()
		return ErrRemoved
	}
	if *a.cfg.Postgres.StopOnShutdown {
		a.stopPostgres()
	}
	a.log.Info("agent stopped")
	return nil
}

// waitRemoved blocks until ctx ends (false) or Raft shut itself down because
// this node was removed from the configuration (true).
func (a *Agent) waitRemoved(ctx context.Context) bool {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			if a.node.RaftState() == "shutdown" || a.removed.Load() {
				return true
			}
		}
	}
}

func (a *Agent) stopPostgres() {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a.dbMu.Lock()
	defer a.dbMu.Unlock()
	a.inst.Close()
	if err := a.inst.Stop(ctx, postgres.StopFast); err != nil {
		a.log.Error("stop PostgreSQL on shutdown", "err", err)
	}
}

// writePassfile writes the .pgpass the standby's walreceiver, pg_basebackup
// and pg_rewind use, so passwords never appear in primary_conninfo or argv.
func (a *Agent) writePassfile() error {
	var entries []postgres.PassEntry
	for _, r := range []RoleConfig{a.cfg.Postgres.Replication, a.cfg.Postgres.Rewind, a.cfg.Postgres.Monitor} {
		entries = append(entries, postgres.PassEntry{User: r.User, Password: r.Password()})
	}
	return postgres.WritePassFile(a.passfile(), a.cfg.Postgres.RunAs, entries...)
}

func (a *Agent) passfile() string { return filepath.Join(a.cfg.DataDir, "pgpass") }

func (a *Agent) setActivity(s string) {
	a.mu.Lock()
	a.activity = s
	a.mu.Unlock()
}

// setProblem records why the agent cannot converge; it logs only when the
// problem changes, so a stuck agent writes one line, not one per loop.
func (a *Agent) setProblem(s string) {
	a.mu.Lock()
	changed := a.problem != s
	a.problem = s
	a.mu.Unlock()
	if changed && s != "" {
		a.log.Error("cannot converge", "reason", s)
	} else if changed {
		a.log.Info("problem resolved")
	}
}

func (a *Agent) status() (activity, problem string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.activity, a.problem
}

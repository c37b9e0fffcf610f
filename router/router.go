// Package router is pgha's PostgreSQL wire-protocol proxy: it authenticates
// clients, pools server connections, sends writes to the primary and
// read-only statements to standbys, and follows the cluster topology
// through failover.
//
// The agent builds one Router with New (a Config and a Topology), then runs
// Serve on each listener it owns — the read/write one with ReadWrite, the
// read-only one with ReadOnly — and calls Close when it stops being the
// router of the cluster. Hold and Resume bracket a planned switchover.
//
// Protocol: PostgreSQL v3.0 (a 3.2 client is answered with
// NegotiateProtocolVersion). With Config.TLS set, an SSLRequest is answered
// 'S' and the session runs over TLS (hba rules of type hostssl can require
// it); without it, 'N' and the client continues in clear text. GSS
// encryption requests are always refused ('N').
//
// Metrics: Collector returns a prometheus.Collector over the router's
// counters (Snapshot), for the agent's /metrics registry.
package router

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgha/pgha/router/poller"
)

// PoolMode says when a server connection returns to the pool.
type PoolMode string

// Pool modes.
const (
	// PoolTransaction returns the server connection at ReadyForQuery 'I'
	// (outside a transaction, nothing in flight). Session state (SET,
	// temporary tables, LISTEN, SQL-level PREPARE, advisory locks) does
	// not survive between transactions. Protocol-level named prepared
	// statements do: the router re-prepares them where needed.
	PoolTransaction PoolMode = "transaction"
	// PoolSession keeps one server connection per client session and
	// resets it with DISCARD ALL when the client leaves.
	PoolSession PoolMode = "session"
)

// Role is what a listener is for.
type Role int

const (
	// ReadWrite sends writes and transactions to the primary, reads outside
	// transactions to a standby (when load balancing is on).
	ReadWrite Role = iota
	// ReadOnly sends everything to standbys, the primary as fallback.
	ReadOnly
)

func (r Role) String() string {
	if r == ReadOnly {
		return "read-only"
	}
	return "read-write"
}

// Config is the router's configuration. Zero fields get the defaults
// noted; Validate names the first bad key.
type Config struct {
	PoolMode         PoolMode      // default transaction
	PoolSize         int           // server connections per (backend, database, user); default 20
	MaxClientConn    int           // client connections over all listeners; default 1000
	QueryWaitTimeout time.Duration // how long a client waits for a server connection; default 120s
	// PrimaryWait: when the topology has no healthy primary (a failover is
	// under way), a transaction that needs one waits this long for one to
	// appear before it gets an error. 0: fail at once.
	PrimaryWait          time.Duration
	ServerConnectTimeout time.Duration // dial and login to PostgreSQL; default 5s
	ServerIdleTimeout    time.Duration // close server connections idle this long; default 10m; <0 never
	ServerLifetime       time.Duration // close server connections this old when released; default 1h; <0 never
	MaxMessageSize       int           // largest client or server message body in bytes; default 64 MiB
	ApplicationName      string        // application_name of server connections; default "pgha-router"
	// ClientLoginTimeout bounds a client's startup: encryption
	// negotiation, TLS handshake, startup packet and authentication
	// (pgbouncer's client_login_timeout, PostgreSQL's
	// authentication_timeout). A client still not logged in is dropped.
	// Default 60s.
	ClientLoginTimeout time.Duration

	// TLS, when set, lets clients encrypt: an SSLRequest is answered 'S'
	// and the TLS handshake runs with this configuration (it needs a
	// certificate). nil refuses SSLRequest with 'N', as a PostgreSQL
	// server with ssl=off does.
	TLS *tls.Config

	// DisableLoadBalance sends every statement of the read/write listener to
	// the primary.
	DisableLoadBalance bool
	// DisableFastPath keeps every socket in the Go runtime's poller and
	// every transaction on a client goroutine (see fast.go and package
	// poller); for comparison and as a way out.
	DisableFastPath bool
	// MaxLag: standbys whose replay lag (Backend.LagBytes) exceeds it get no
	// reads; 0 means no limit.
	MaxLag int64
	// DisableReadYourWrites turns off read-your-writes: normally, after a
	// session's write transaction the router notes the primary's WAL insert
	// position and sends that session's reads only to standbys whose
	// ReplayLSN has passed it (else to the primary).
	DisableReadYourWrites bool
	// WriteFunctions: calling one of these makes a statement a write.
	// nil means DefaultWriteFunctions.
	WriteFunctions []string

	// HBA decides how clients authenticate, first match wins; no match is
	// refused as PostgreSQL does. nil means one rule: everyone with
	// scram-sha-256.
	HBA []HBARule
	// Users maps user name to the stored secret clients authenticate
	// against: a SCRAM-SHA-256 verifier, an md5 hash or a clear-text
	// password (see ParseUserList, LoadUserList for pgbouncer's userlist.txt
	// and pgpool's pool_passwd).
	Users map[string]string
	// ServerPasswords maps user name to the clear-text password the router
	// logs into PostgreSQL with (SCRAM or md5 or password, as the server
	// asks). A verifier cannot log in, so a user whose Users entry is a
	// verifier needs one here unless the servers trust the router or the
	// server holds the same verifier (SCRAM pass-through, see AuthUser).
	// When absent, a clear-text (or, for md5 servers, md5) Users entry is
	// used.
	ServerPasswords map[string]string

	// AuthUser turns on pgbouncer's auth_query: the secret of a user who
	// is not in Users is looked up on the cluster (the primary, else a
	// standby) by running AuthQuery, with the user name as $1, on a server
	// connection logged in as AuthUser (its password from ServerPasswords,
	// like any user's). The query returns one row (name, secret); no row
	// or a NULL secret means no such user.
	//
	// The router then logs into PostgreSQL as that user without knowing
	// the password: with an md5 secret it answers md5 challenges from the
	// hash; with a SCRAM verifier it reuses the ClientKey the client proved
	// during its own SCRAM login (pass-through; the server must hold the
	// same verifier, which it does when the verifier came from it). The
	// same pass-through serves a Users entry that is a verifier without a
	// ServerPasswords entry.
	AuthUser string
	// AuthQuery: default "SELECT usename, passwd FROM pg_catalog.pg_shadow
	// WHERE usename = $1" (which needs a superuser AuthUser; grant a
	// SECURITY DEFINER function instead and query it otherwise).
	AuthQuery string
	// AuthDatabase is the database AuthQuery runs in; default: the one the
	// client asked for.
	AuthDatabase string

	Logger *slog.Logger // default: discard
}

func (c Config) withDefaults() Config {
	if c.PoolMode == "" {
		c.PoolMode = PoolTransaction
	}
	if c.PoolSize == 0 {
		c.PoolSize = 20
	}
	if c.MaxClientConn == 0 {
		c.MaxClientConn = 1000
	}
	if c.QueryWaitTimeout == 0 {
		c.QueryWaitTimeout = 120 * time.Second
	}
	if c.ServerConnectTimeout == 0 {
		c.ServerConnectTimeout = 5 * time.Second
	}
	if c.ServerIdleTimeout == 0 {
		c.ServerIdleTimeout = 10 * time.Minute
	}
	if c.ServerLifetime == 0 {
		c.ServerLifetime = time.Hour
	}
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = 64 << 20
	}
	if c.ApplicationName == "" {
		c.ApplicationName = "pgha-router"
	}
	if c.ClientLoginTimeout == 0 {
		c.ClientLoginTimeout = 60 * time.Second
	}
	if c.AuthUser != "" && c.AuthQuery == "" {
		c.AuthQuery = DefaultAuthQuery
	}
	if c.WriteFunctions == nil {
		c.WriteFunctions = DefaultWriteFunctions
	}
	if c.HBA == nil {
		c.HBA = []HBARule{{Method: AuthSCRAM}}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports the first invalid setting, naming its key.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.PoolMode != PoolTransaction && c.PoolMode != PoolSession:
		return fmt.Errorf("router config: PoolMode %q: want %q or %q", c.PoolMode, PoolTransaction, PoolSession)
	case c.PoolSize < 1:
		return fmt.Errorf("router config: PoolSize %d: want at least 1", c.PoolSize)
	case c.MaxClientConn < 1:
		return fmt.Errorf("router config: MaxClientConn %d: want at least 1", c.MaxClientConn)
	case c.QueryWaitTimeout < 0:
		return fmt.Errorf("router config: QueryWaitTimeout %v: want a positive duration", c.QueryWaitTimeout)
	case c.MaxMessageSize < 1024:
		return fmt.Errorf("router config: MaxMessageSize %d: want at least 1024", c.MaxMessageSize)
	case c.PrimaryWait < 0:
		return fmt.Errorf("router config: PrimaryWait %v: want 0 or a positive duration", c.PrimaryWait)
	case c.MaxLag < 0:
		return fmt.Errorf("router config: MaxLag %d: want 0 (no limit) or a byte count", c.MaxLag)
	case c.ClientLoginTimeout < 0:
		return fmt.Errorf("router config: ClientLoginTimeout %v: want a positive duration", c.ClientLoginTimeout)
	case c.TLS != nil && len(c.TLS.Certificates) == 0 && c.TLS.GetCertificate == nil && c.TLS.GetConfigForClient == nil:
		return errors.New("router config: TLS has no certificate: set Certificates or GetCertificate")
	case c.AuthUser == "" && (c.AuthQuery != "" || c.AuthDatabase != ""):
		return errors.New("router config: AuthQuery and AuthDatabase need AuthUser: set AuthUser to the role that runs the query")
	}
	for i, r := range c.HBA {
		switch r.Method {
		case AuthTrust, AuthReject, AuthMD5, AuthSCRAM:
		default:
			return fmt.Errorf("router config: HBA[%d].Method %q: want trust, reject, md5 or scram-sha-256", i, r.Method)
		}
		switch r.Type {
		case "", HBAHost, HBAHostNoSSL:
		case HBAHostSSL:
			if c.TLS == nil {
				// PostgreSQL refuses such a pg_hba.conf line too.
				return fmt.Errorf("router config: HBA[%d].Type %q cannot match because TLS is off: set Config.TLS", i, r.Type)
			}
		default:
			return fmt.Errorf("router config: HBA[%d].Type %q: want host, hostssl or hostnossl", i, r.Type)
		}
	}
	for u, s := range c.Users {
		if len(s) > 14 && s[:14] == "SCRAM-SHA-256$" {
			if _, err := parseSCRAMVerifier(s); err != nil {
				return fmt.Errorf("router config: Users[%q]: %w", u, err)
			}
		}
	}
	return nil
}

// Router is the proxy. All methods are safe for concurrent use.
type Router struct {
	cfg  Config
	log  *slog.Logger
	topo Topology
	// live holds the settings Reconfigure may change while the router
	// serves; read them through settings(), never from cfg.
	live atomic.Pointer[settings]

	view atomic.Pointer[view]
	// viewCh is closed and replaced each time view changes, waking
	// transactions that wait for a primary.
	viewMu sync.Mutex
	viewCh chan struct{}

	mu      sync.Mutex
	pools   map[poolKey]*pool
	clients map[uint32]*client // by the BackendKeyData process id the router gave out
	nextPID uint32
	nClient int
	closed  bool

	// holdCh is non-nil while held, closed by Resume; holdMu serialises
	// Hold and Resume. Read without the lock (holdChan): every read and
	// every write asks. Atomics are sequentially consistent, as the lock
	// was, for the toPrimary handshake below.
	holdMu sync.Mutex
	holdCh atomic.Pointer[chan struct{}]
	// toPrimary counts transactions on their way to the primary: past the
	// hold check, not yet holding a server connection (queued in the
	// pool included). Hold waits for them too: a transaction that passed
	// the check a moment before Hold would otherwise start on the old
	// primary after Hold returned.
	toPrimary atomic.Int64

	selectCnt sync.Map // backend name -> *atomic.Int64
	stats     Stats
	poolWait  waitHistogram // every server-connection acquisition (metrics)
	learned   learnedSecrets

	poller *poller.Poller // nil with DisableFastPath
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // goroutines the router started, sessions apart
	// sessions counts client sessions from accept to client.end: a
	// session has no goroutine while the fast path holds it.
	sessions sync.WaitGroup
}

// Stats are the router's counters since New (SHOW STATS).
type Stats struct {
	ClientsAccepted  atomic.Int64
	ClientsRejected  atomic.Int64 // not logged in: over MaxClientConn, hba, authentication, ClientLoginTimeout, bad startup
	ProtocolErrors   atomic.Int64 // malformed or unexpected client messages, startup packets included
	ReadsToStandby   atomic.Int64 // routed batches
	ReadsToPrimary   atomic.Int64
	WritesToPrimary  atomic.Int64
	ServerErrors     atomic.Int64 // server connections lost while in use
	PoolWaitTimeouts atomic.Int64
	PoolWaits        atomic.Int64 // acquisitions that queued because their pool was full
	ServerConnects   atomic.Int64 // server connections opened and logged in
	ConnectErrors    atomic.Int64 // server connections that failed to open or log in
	FastPath         atomic.Int64 // transactions served on the poller (fast.go)
	FastHandBacks    atomic.Int64 // sessions the fast path handed back to their goroutine
	LoopLogins       atomic.Int64 // logins done on the event loop, no goroutine (login.go)
}

// StatsSnapshot is a copy of Stats plus per-pool figures.
type StatsSnapshot struct {
	ClientsActive    int
	ClientsAccepted  int64
	ClientsRejected  int64
	ProtocolErrors   int64
	ReadsToStandby   int64
	ReadsToPrimary   int64
	WritesToPrimary  int64
	ServerErrors     int64
	PoolWaitTimeouts int64
	PoolWaits        int64
	ServerConnects   int64
	ConnectErrors    int64
	FastPath         int64
	FastHandBacks    int64
	LoopLogins       int64
	Pools            []PoolStats
}

// PoolStats describes one pool (SHOW POOLS).
type PoolStats struct {
	Backend, Database, User string
	Active, Idle, Total     int
	Waiting                 int64
	Transactions, Queries   int64
	Waits                   int64
	MaxWait                 time.Duration
	Connects                int64
}

// New makes a Router; it watches topo until Close.
func New(cfg Config, topo Topology) (*Router, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if topo == nil {
		return nil, errors.New("router: a Topology is required")
	}
	cfg = cfg.withDefaults()
	r := &Router{
		cfg:     cfg,
		log:     cfg.Logger,
		topo:    topo,
		pools:   map[poolKey]*pool{},
		clients: map[uint32]*client{},
		nextPID: uint32(time.Now().UnixNano()&0xffff) << 8,
	}
	r.live.Store(&settings{Config: cfg, writeFuncs: funcSet(cfg.WriteFunctions)})
	r.ctx, r.cancel = context.WithCancel(context.Background())
	if !cfg.DisableFastPath {
		p, err := poller.New()
		if err != nil {
			return nil, fmt.Errorf("router: %w", err)
		}
		r.poller = p
	}
	r.applyTopology()
	r.wg.Add(1)
	go r.watch()
	return r, nil
}

// settings are the routing and pooling settings in force: Config as New
// or the last Reconfigure gave it, of which only the fields Reconfigure
// copies are read from here.
type settings struct {
	Config
	writeFuncs map[string]bool
}

func (r *Router) settings() *settings { return r.live.Load() }

// Reconfigure changes, while the router serves, the settings a cluster-wide
// configuration change may carry: pool_mode (for clients that log in
// afterwards), pool_size (a smaller pool shrinks as its connections are
// released), max_client_conn, query_wait_timeout, primary_wait,
// server_idle_timeout, server_lifetime, load balancing, max_lag,
// read-your-writes, write functions and the client hba rules (for logins
// afterwards). Everything else in cfg (TLS, users, auth_query, timeouts of
// a login) is ignored: it is this node's own. An invalid cfg changes
// nothing.
func (r *Router) Reconfigure(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg = cfg.withDefaults()
	next := &settings{Config: r.settings().Config, writeFuncs: funcSet(cfg.WriteFunctions)}
	n := &next.Config
	n.PoolMode, n.PoolSize, n.MaxClientConn = cfg.PoolMode, cfg.PoolSize, cfg.MaxClientConn
	n.QueryWaitTimeout, n.PrimaryWait = cfg.QueryWaitTimeout, cfg.PrimaryWait
	n.ServerIdleTimeout, n.ServerLifetime = cfg.ServerIdleTimeout, cfg.ServerLifetime
	n.DisableLoadBalance, n.MaxLag, n.DisableReadYourWrites = cfg.DisableLoadBalance, cfg.MaxLag, cfg.DisableReadYourWrites
	n.WriteFunctions, n.HBA = cfg.WriteFunctions, cfg.HBA
	r.live.Store(next)
	return nil
}

// watch follows the topology and reaps idle connections until Close.
func (r *Router) watch() {
	defer r.wg.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-r.topo.Changes():
			r.applyTopology()
		case now := <-tick.C:
			r.mu.Lock()
			pools := make([]*pool, 0, len(r.pools))
			for _, p := range r.pools {
				pools = append(pools, p)
			}
			r.mu.Unlock()
			for _, p := range pools {
				p.reap(now)
			}
		}
	}
}

// applyTopology installs the current set. Pools of a backend that left,
// became unhealthy or changed role (or address) are retired: every
// connection closed, in use or not, so that no transaction keeps running on
// a former primary (DESIGN.md "One writer": a router stops sending writes to
// a primary as soon as the committed state says it is no longer one).
func (r *Router) applyTopology() {
	bs := r.topo.Backends()
	prev := r.view.Load()
	v := newView(bs, prev, time.Now())
	r.view.Store(v)
	r.viewMu.Lock()
	if r.viewCh != nil {
		close(r.viewCh)
	}
	r.viewCh = make(chan struct{})
	r.viewMu.Unlock()
	keep := map[string]bool{}
	for _, b := range bs {
		if !b.Healthy {
			continue
		}
		same := prev == nil
		if prev != nil {
			for _, p := range prev.backends {
				if p.Addr() == b.Addr() && p.Primary == b.Primary && p.Healthy {
					same = true
				}
			}
		}
		if same {
			keep[b.Addr()] = true
		}
	}
	r.mu.Lock()
	var retire []*pool
	for k, p := range r.pools {
		if !keep[k.addr] {
			retire = append(retire, p)
			delete(r.pools, k)
		}
		p.draining.Store(v.draining(k.addr))
	}
	r.mu.Unlock()
	for _, p := range retire {
		p.retire()
	}
	// Lag and replay positions change with every poll; only a change of
	// roles or health is worth a log line.
	if prev != nil && sameRoles(prev.backends, bs) {
		return
	}
	if pb, ok := v.primaryBackend(); ok {
		r.log.Info("router topology", "primary", pb.Name, "backends", len(bs), "retired_pools", len(retire))
	} else {
		r.log.Warn("router topology has no healthy primary", "backends", len(bs))
	}
}

// sameRoles reports whether a and b name the same backends at the same
// addresses with the same role and health.
func sameRoles(a, b []Backend) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Name != b[i].Name || a[i].Addr() != b[i].Addr() || a[i].Primary != b[i].Primary || a[i].Healthy != b[i].Healthy || a[i].Draining != b[i].Draining {
			return false
		}
	}
	return true
}

func (r *Router) pool(addr, db, user string) *pool {
	k := poolKey{addr, db, user}
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.pools[k]
	if p == nil {
		p = &pool{r: r, key: k, all: map[*serverConn]bool{}}
		p.ctx, p.cancel = context.WithCancel(r.ctx)
		if v := r.view.Load(); v != nil {
			p.draining.Store(v.draining(addr))
		}
		r.pools[k] = p
	}
	return p
}

// Drain waits until nothing runs on the backend at addr, which the
// topology marks Draining (Backend.Draining: no new reads go to it), and
// then closes its idle server connections: a standby can then restart
// without failing a read, and no connection its restart ends is handed
// out after it. It returns how many server connections to it were still
// in use when ctx ended (a session-mode client holds one for its whole
// session), with ctx's error.
func (r *Router) Drain(ctx context.Context, addr string) (int64, error) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		// The topology is applied by the watch goroutine: until the
		// router's view has the backend draining, reads may still go there.
		inUse := int64(0)
		applied := false
		if v := r.view.Load(); v != nil {
			applied = v.draining(addr)
		}
		var pools []*pool
		r.mu.Lock()
		for k, p := range r.pools {
			if k.addr == addr {
				pools = append(pools, p)
				inUse += p.active.Load()
			}
		}
		r.mu.Unlock()
		if applied && inUse == 0 {
			for _, p := range pools {
				p.closeIdle()
			}
			return 0, nil
		}
		select {
		case <-ctx.Done():
			return inUse, ctx.Err()
		case <-t.C:
		}
	}
}

// Serve accepts clients on ln until ctx ends, ln fails or Close; it closes
// ln on return. End it by ctx or Close, not by closing ln: with the fast
// path it accepts on a duplicate of ln's socket, which goes on listening. Clients already connected keep their sessions until they
// leave or Close.
func (r *Router) Serve(ctx context.Context, ln net.Listener, role Role) error {
	if tl, ok := ln.(*net.TCPListener); ok && r.poller != nil {
		// Straight onto the fast path's poller, which accepts on a
		// duplicate of ln's socket (poller.Listener), on its own goroutine.
		pl, err := r.poller.Listen(tl)
		if err == nil {
			return r.serveOnLoop(ctx, ln, pl, role)
		}
		r.log.Warn("router: clients are accepted through the Go poller", "err", err)
	}
	closeAll := func() { ln.Close() }
	stop := context.AfterFunc(ctx, closeAll)
	defer stop()
	stop2 := context.AfterFunc(r.ctx, closeAll)
	defer stop2()
	defer closeAll()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || r.ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("router %s accept: %w", role, err)
		}
		r.sessions.Add(1) // Done when the session ends (client.end)
		go r.serveClient(conn, role)
	}
}

// serveOnLoop is Serve on the poller goroutine: each connection is
// accepted there and its login begins there (login.go).
func (r *Router) serveOnLoop(ctx context.Context, ln net.Listener, pl *poller.Listener, role Role) error {
	defer ln.Close()
	defer pl.Close()
	failed, err := pl.ServeOnLoop(func(pc *poller.Conn) {
		// Counted under mu, where Close marks the router closed before it
		// waits for the sessions: none is added to a finished wait.
		r.mu.Lock()
		closed := r.closed
		if !closed {
			r.sessions.Add(1) // Done when the session ends (client.end)
		}
		r.mu.Unlock()
		if closed {
			pc.Close()
			return
		}
		startLogin(r.newClient(pc, role), pc)
	})
	if err != nil {
		return fmt.Errorf("router %s accept: %w", role, err)
	}
	select {
	case <-ctx.Done():
		return nil
	case <-r.ctx.Done():
		return nil
	case err := <-failed:
		return fmt.Errorf("router %s accept: %w", role, err)
	}
}

// Close stops the router: listeners passed to Serve, every client and
// every server connection. It waits for the goroutines it started.
func (r *Router) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	clients := make([]*client, 0, len(r.clients))
	for _, c := range r.clients {
		clients = append(clients, c)
	}
	pools := make([]*pool, 0, len(r.pools))
	for _, p := range r.pools {
		pools = append(pools, p)
	}
	r.mu.Unlock()
	r.cancel()
	for _, c := range clients {
		c.conn.Close()
	}
	for _, p := range pools {
		p.retire()
	}
	r.Resume()
	r.sessions.Wait()
	r.wg.Wait()
	if r.poller != nil {
		r.poller.Close() // last: closing a fast-path session's socket needs it
	}
	return nil
}

// Hold stops handing primary connections to new transactions (they queue,
// up to QueryWaitTimeout) and waits until no client is attached to the
// primary any more, or ctx ends. Call it before a planned switchover, then
// change the topology and call Resume: queued transactions go to the new
// primary.
func (r *Router) Hold(ctx context.Context) error {
	r.holdMu.Lock()
	if r.holdCh.Load() == nil {
		ch := make(chan struct{})
		r.holdCh.Store(&ch)
	}
	r.holdMu.Unlock()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		// toPrimary first: a transaction leaves it only once it holds a
		// connection that primaryActive counts.
		if r.toPrimary.Load() == 0 && r.primaryActive() == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("hold: %d server connections to the primary still in use, %d transactions on their way to it: %w",
				r.primaryActive(), r.toPrimary.Load(), ctx.Err())
		case <-tick.C:
		}
	}
}

// Resume releases transactions queued by Hold.
func (r *Router) Resume() {
	r.holdMu.Lock()
	defer r.holdMu.Unlock()
	if ch := r.holdCh.Load(); ch != nil {
		close(*ch)
		r.holdCh.Store(nil)
	}
}

// waitPrimary waits up to PrimaryWait for the topology to name a healthy
// primary.
func (r *Router) waitPrimary() (Backend, bool) {
	t := time.NewTimer(r.settings().PrimaryWait)
	defer t.Stop()
	for {
		r.viewMu.Lock()
		ch := r.viewCh
		r.viewMu.Unlock()
		if b, ok := r.view.Load().primaryBackend(); ok {
			return b, true
		}
		select {
		case <-ch:
		case <-t.C:
			return Backend{}, false
		case <-r.ctx.Done():
			return Backend{}, false
		}
	}
}

// waitViewChange waits for the next topology change, at most 100ms and
// never past deadline, so a caller retrying an unreachable server neither
// spins nor misses the change that replaces it.
func (r *Router) waitViewChange(deadline time.Time) {
	r.viewMu.Lock()
	ch := r.viewCh
	r.viewMu.Unlock()
	t := time.NewTimer(min(100*time.Millisecond, time.Until(deadline)))
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	case <-r.ctx.Done():
	}
}

// waitResume waits until the hold ch ends (Resume), at most until deadline.
func (r *Router) waitResume(ch chan struct{}, deadline time.Time) error {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-ch:
		return nil
	case <-t.C:
		return &authError{code: "57P03", msg: "the router held new transactions for a switchover longer than query_wait_timeout"}
	case <-r.ctx.Done():
		return errShuttingDown
	}
}

// errShuttingDown ends a session that wants a server connection after
// Close (PostgreSQL's code for an administrator's shutdown).
var errShuttingDown = &authError{code: "57P01", msg: "the router is shutting down"}

func (r *Router) holdChan() chan struct{} {
	if ch := r.holdCh.Load(); ch != nil {
		return *ch
	}
	return nil
}

// primaryActive counts server connections in use on the backend the
// topology names primary, healthy or not: a primary that looks unhealthy for
// a moment still runs the transactions a switchover must let finish.
func (r *Router) primaryActive() int64 {
	addrs := map[string]bool{}
	for _, b := range r.view.Load().backends {
		if b.Primary {
			addrs[b.Addr()] = true
		}
	}
	var n int64
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, p := range r.pools {
		if addrs[k.addr] {
			n += p.active.Load()
		}
	}
	return n
}

func (r *Router) countSelect(name string) {
	v, ok := r.selectCnt.Load(name)
	if !ok {
		// Only the first count of a backend allocates: LoadOrStore would
		// box name and allocate a counter on every call.
		v, _ = r.selectCnt.LoadOrStore(name, new(atomic.Int64))
	}
	v.(*atomic.Int64).Add(1)
}

func (r *Router) selectCount(name string) int64 {
	if v, ok := r.selectCnt.Load(name); ok {
		return v.(*atomic.Int64).Load()
	}
	return 0
}

// Snapshot returns the counters.
func (r *Router) Snapshot() StatsSnapshot {
	s := StatsSnapshot{
		ClientsAccepted:  r.stats.ClientsAccepted.Load(),
		ClientsRejected:  r.stats.ClientsRejected.Load(),
		ProtocolErrors:   r.stats.ProtocolErrors.Load(),
		ReadsToStandby:   r.stats.ReadsToStandby.Load(),
		ReadsToPrimary:   r.stats.ReadsToPrimary.Load(),
		WritesToPrimary:  r.stats.WritesToPrimary.Load(),
		ServerErrors:     r.stats.ServerErrors.Load(),
		PoolWaitTimeouts: r.stats.PoolWaitTimeouts.Load(),
		PoolWaits:        r.stats.PoolWaits.Load(),
		ServerConnects:   r.stats.ServerConnects.Load(),
		ConnectErrors:    r.stats.ConnectErrors.Load(),
		FastPath:         r.stats.FastPath.Load(),
		FastHandBacks:    r.stats.FastHandBacks.Load(),
		LoopLogins:       r.stats.LoopLogins.Load(),
	}
	r.mu.Lock()
	s.ClientsActive = r.nClient
	pools := make([]*pool, 0, len(r.pools))
	for _, p := range r.pools {
		pools = append(pools, p)
	}
	r.mu.Unlock()
	for _, p := range pools {
		idle, total := p.counts()
		s.Pools = append(s.Pools, PoolStats{
			Backend: p.key.addr, Database: p.key.db, User: p.key.user,
			Active: int(p.active.Load()), Idle: idle, Total: total, Waiting: p.waiting.Load(),
			Transactions: p.xacts.Load(), Queries: p.queries.Load(), Waits: p.waitsTotal.Load(),
			MaxWait: time.Duration(p.maxWait.Load()), Connects: p.connects.Load(),
		})
	}
	return s
}

// SelectCount is SHOW POOL_NODES' select_cnt of the backend called name:
// batches of read statements routed to it.
func (r *Router) SelectCount(name string) int64 { return r.selectCount(name) }

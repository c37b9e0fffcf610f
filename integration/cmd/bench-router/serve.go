package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgha/pgha/postgres"
	"github.com/pgha/pgha/router"
)

// serveRouterFlag, as the first argument, makes this binary the router
// process instead of the benchmark (see startRouter).
const serveRouterFlag = "-serve-router"

// serveRouter runs the router on one read/write listener until SIGTERM or
// SIGINT, refreshing the standbys' replay positions as the agent's health
// loop does. With -cpuprofile it profiles the whole process.
func serveRouter(args []string) error {
	fs := flag.NewFlagSet("bench-router "+serveRouterFlag, flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address of the read/write listener")
	backendList := fs.String("backends", "", "name=host:port,... of the servers; the first is the primary")
	poolSize := fs.Int("pool-size", 20, "server connections per (server, database, user)")
	maxClients := fs.Int("max-client-conn", 1000, "client connections at most")
	auth := fs.String("auth", "trust", "client authentication: trust, md5 or scram-sha-256")
	userList := fs.String("userlist", "", "PgBouncer-style auth file (needed with md5)")
	monUser := fs.String("monitor-user", "postgres", "role that reads replay positions")
	monDB := fs.String("monitor-db", "postgres", "database it connects to")
	monPass := fs.String("monitor-password", "", "its password (md5 servers)")
	ryw := fs.Bool("read-your-writes", true, "read-your-writes (the agent's default)")
	lb := fs.Bool("load-balance", true, "reads outside transactions to the standbys (the agent's default)")
	fast := fs.Bool("fast-path", true, "serve lone read-only simple queries on the router's event loop (the agent's default)")
	refresh := fs.Duration("refresh", time.Second, "how often replay positions are read (0: never)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of this process here at exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	backends, err := parseBackends(*backendList)
	if err != nil {
		return err
	}
	cfg := router.Config{
		PoolMode:              router.PoolTransaction,
		PoolSize:              *poolSize,
		MaxClientConn:         *maxClients,
		MaxLag:                1 << 20, // the agent's default router.max_lag
		DisableReadYourWrites: !*ryw,
		DisableLoadBalance:    !*lb,
		DisableFastPath:       !*fast,
		HBA:                   []router.HBARule{{Address: "127.0.0.0/8", Method: router.AuthMethod(*auth)}},
	}
	if *userList != "" {
		if cfg.Users, err = router.LoadUserList(*userList); err != nil {
			return err
		}
	}
	topo := router.NewBackendSet(backends...)
	r, err := router.New(cfg, topo)
	if err != nil {
		return err
	}
	defer r.Close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
			fmt.Println("wrote CPU profile", *cpuProfile)
		}()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if *refresh > 0 {
		m := &lsnMonitor{topo: topo, backends: backends, user: *monUser, db: *monDB, password: *monPass}
		go m.run(ctx, *refresh)
	}
	fmt.Printf("router serving on %s (pool size %d, auth %s)\n", ln.Addr(), *poolSize, *auth)
	err = r.Serve(ctx, ln, router.ReadWrite)
	s := r.Snapshot()
	fmt.Printf("router stats: accepted %d rejected %d reads to standbys %d reads to primary %d writes %d server errors %d pool wait timeouts %d\n",
		s.ClientsAccepted, s.ClientsRejected, s.ReadsToStandby, s.ReadsToPrimary, s.WritesToPrimary, s.ServerErrors, s.PoolWaitTimeouts)
	return err
}

// parseBackends reads "name=host:port,..."; the first is the primary.
func parseBackends(s string) ([]router.Backend, error) {
	var out []router.Backend
	for i, item := range stringList(s) {
		name, addr, ok := strings.Cut(item, "=")
		if !ok {
			return nil, fmt.Errorf("-backends %q: want name=host:port", item)
		}
		host, portStr, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("-backends %q: %w", item, err)
		}
		port, err := strconv.Atoi(portStr)
		if err != nil {
			return nil, fmt.Errorf("-backends %q: port: %w", item, err)
		}
		out = append(out, router.Backend{Name: name, Host: host, Port: port, Primary: i == 0, Healthy: true, Weight: 1,
			ReplicationState: "streaming", ReplicationSyncState: "async"})
	}
	if len(out) == 0 {
		return nil, errors.New("-backends is empty")
	}
	return out, nil
}

// lsnMonitor copies the primary's WAL position and the standbys' replay
// positions into the topology (Backend.ReplayLSN, LagBytes), as the agent
// does, so read-your-writes and max lag work as in production. It owns its
// connections; run returns when ctx ends.
type lsnMonitor struct {
	topo                 *router.BackendSet
	backends             []router.Backend
	user, db, password   string
	conns                map[string]*pgx.Conn
	lastReplay, lastLags map[string]int64
}

func (m *lsnMonitor) run(ctx context.Context, every time.Duration) {
	m.conns = map[string]*pgx.Conn{}
	m.lastReplay, m.lastLags = map[string]int64{}, map[string]int64{}
	defer func() {
		for _, c := range m.conns {
			c.Close(context.Background())
		}
	}()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		primaryLSN, err := m.lsn(ctx, m.backends[0], "SELECT pg_current_wal_lsn()::text")
		if err != nil {
			continue
		}
		for _, b := range m.backends[1:] {
			replay, err := m.lsn(ctx, b, "SELECT coalesce(pg_last_wal_replay_lsn(), '0/0')::text")
			if err != nil {
				continue
			}
			lag := int64(0)
			if primaryLSN > replay {
				lag = int64(primaryLSN - replay)
			}
			if m.lastReplay[b.Name] == int64(replay) && m.lastLags[b.Name] == lag {
				continue
			}
			m.lastReplay[b.Name], m.lastLags[b.Name] = int64(replay), lag
			m.topo.Update(b.Name, func(x *router.Backend) { x.ReplayLSN, x.LagBytes = uint64(replay), lag })
		}
	}
}

// lsn runs sql on b (connecting when needed) and parses the LSN it returns.
func (m *lsnMonitor) lsn(ctx context.Context, b router.Backend, sql string) (postgres.LSN, error) {
	qctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c := m.conns[b.Name]
	if c == nil {
		cs := fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable connect_timeout=2 application_name=bench-router-monitor", b.Host, b.Port, m.user, m.db)
		if m.password != "" {
			cs += " password=" + m.password
		}
		var err error
		if c, err = pgx.Connect(qctx, cs); err != nil {
			return 0, err
		}
		m.conns[b.Name] = c
	}
	var s string
	if err := c.QueryRow(qctx, sql, pgx.QueryExecModeSimpleProtocol).Scan(&s); err != nil {
		c.Close(context.Background())
		delete(m.conns, b.Name)
		return 0, err
	}
	return postgres.ParseLSN(s)
}

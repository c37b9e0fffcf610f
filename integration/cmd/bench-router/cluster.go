package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgha/pgha/postgres"
	"github.com/pgha/pgha/recovery"
)

// The database and role pgbench uses, directly and through every proxy.
const (
	benchDB       = "bench"
	benchUser     = "bench"
	benchPassword = "bench-secret" // only with -auth md5 or scram-sha-256

	replUser     = "replicator"
	replPassword = "rep-secret"
)

// node is one PostgreSQL server of the cluster.
type node struct {
	name string
	port int
	inst *postgres.Instance
}

// cluster is a primary (nodes[0]) and two asynchronous streaming standbys.
type cluster struct {
	nodes []*node
}

// startCluster initdbs the primary, clones the standbys from it with
// pg_basebackup and waits until both stream. Each server is stopped by td.
func startCluster(ctx context.Context, td *teardown, dir, binDir string, o *options) (*cluster, error) {
	logger := slog.New(slog.DiscardHandler)
	if o.verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	cl := &cluster{}
	for _, name := range []string{"primary", "standby1", "standby2"} {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		inst, err := postgres.New(instanceConfig(dir, name, port, binDir, o, logger))
		if err != nil {
			return nil, err
		}
		td.add("stop "+name, func() error {
			sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			defer inst.Close()
			return inst.Stop(sctx, postgres.StopImmediate)
		})
		cl.nodes = append(cl.nodes, &node{name: name, port: port, inst: inst})
	}

	primary := cl.nodes[0].inst
	if err := primary.Initdb(ctx); err != nil {
		return nil, err
	}
	if _, err := primary.Configure(nil, nil); err != nil {
		return nil, err
	}
	if err := primary.Start(ctx); err != nil {
		return nil, err
	}
	if err := primary.EnsureRoles(ctx); err != nil {
		return nil, err
	}
	slots := []string{cl.nodes[1].name, cl.nodes[2].name}
	if err := primary.EnsureSlots(ctx, slots); err != nil {
		return nil, err
	}
	role := fmt.Sprintf("CREATE ROLE %s LOGIN", benchUser)
	switch o.auth {
	case "md5":
		role += fmt.Sprintf(" PASSWORD '%s'", benchPassword) // stored as md5: password_encryption
	case "scram-sha-256":
		// The verifier itself, which PgBouncer and the router hold too:
		// both verify a client with its stored keys and log in to the
		// servers with the keys the client's proof gave them.
		role += fmt.Sprintf(" PASSWORD '%s'", o.scramSecret)
	}
	stmts := []string{role, fmt.Sprintf("CREATE DATABASE %s OWNER %s", benchDB, benchUser), "CREATE EXTENSION pg_stat_statements"}
	for _, sql := range stmts {
		if err := primary.Exec(ctx, sql); err != nil {
			return nil, fmt.Errorf("primary: %s: %w", sql, err)
		}
	}

	passFile := filepath.Join(dir, "pgpass")
	err := postgres.WritePassFile(passFile, runAs(), postgres.PassEntry{Host: "*", User: replUser, Password: replPassword})
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	errs := make([]error, len(cl.nodes))
	for i, n := range cl.nodes[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = startStandby(ctx, n, cl.nodes[0].port, passFile)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	for _, n := range cl.nodes[1:] {
		err := poll(ctx, time.Minute, n.name+" streams from the primary", func() (bool, string) {
			s := n.inst.Status(ctx)
			return s.Running && s.InRecovery && s.Streaming, s.Error
		})
		if err != nil {
			return nil, err
		}
	}
	return cl, nil
}

func instanceConfig(dir, name string, port int, binDir string, o *options, logger *slog.Logger) postgres.Config {
	base := filepath.Join(dir, name)
	// Every proxy keeps its server connections: pgpool-II one per child and
	// server, PgBouncer and each router process up to pool-size, plus the
	// direct clients.
	pools := 0
	for _, t := range o.targets {
		if t == "pgbouncer" || strings.HasPrefix(t, "router") {
			pools++
		}
	}
	maxConn := pgpoolChildren(o) + pools*o.poolSize + o.maxClients() + 30
	params := map[string]string{
		"max_connections":    strconv.Itoa(max(100, maxConn)),
		"shared_buffers":     "128MB",
		"fsync":              "off", // measure the proxies, not this machine's disk
		"checkpoint_timeout": "30min",
		"max_wal_size":       "4GB",
		"wal_keep_size":      "256MB",
		"log_line_prefix":    "%m [%p] " + name + " ",
		// Which server ran what: the same small per-statement cost for
		// every target.
		"shared_preload_libraries": "pg_stat_statements",
	}
	if o.auth == "md5" {
		params["password_encryption"] = "md5"
	}
	return postgres.Config{
		BinDir:          binDir,
		DataDir:         filepath.Join(base, "data"),
		ListenAddresses: "127.0.0.1",
		Port:            port,
		SocketDir:       filepath.Join(base, "sock"),
		Superuser:       "postgres",
		Replication:     postgres.Role{Name: replUser, Password: replPassword},
		Parameters:      params,
		HBA:             []string{"host all all 127.0.0.1/32 " + o.auth},
		AllowedNetworks: []string{"127.0.0.1/32"},
		RunAs:           runAs(),
		Logger:          logger.With("instance", name),
		StartTimeout:    2 * time.Minute,
		StopTimeout:     time.Minute,
	}
}

func startStandby(ctx context.Context, n *node, primaryPort int, passFile string) error {
	cfg := n.inst.Config()
	if err := postgres.MkdirAs(filepath.Dir(cfg.DataDir), 0o755, runAs()); err != nil {
		return err
	}
	err := recovery.Clone(ctx, cfg.BinDir, cfg.DataDir, recovery.Source{
		Host: "127.0.0.1", Port: primaryPort, User: replUser, PassFile: passFile, SlotName: n.name,
	}, runAs(), nil)
	if err != nil {
		return fmt.Errorf("%s: %w", n.name, err)
	}
	_, err = n.inst.Configure(&postgres.Standby{
		PrimaryHost: "127.0.0.1", PrimaryPort: primaryPort, User: replUser,
		PassFile: passFile, SlotName: n.name, ApplicationName: n.name,
	}, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", n.name, err)
	}
	if err := n.inst.Start(ctx); err != nil {
		return fmt.Errorf("%s: %w", n.name, err)
	}
	return nil
}

// initPgbench creates the pgbench tables on the primary and waits until
// both standbys replayed them.
func (cl *cluster) initPgbench(ctx context.Context, o *options) error {
	start := time.Now()
	fmt.Printf("pgbench -i -s %d ...", o.scale)
	args := append(connArgs(cl.nodes[0].port), "-i", "-q", "-s", strconv.Itoa(o.scale), benchDB)
	cmd := exec.CommandContext(ctx, filepath.Join(cl.nodes[0].inst.Config().BinDir, "pgbench"), args...)
	cmd.Env = pgbenchEnv(o)
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Println()
		return fmt.Errorf("pgbench -i: %w\n%s", err, out)
	}
	if err := cl.nodes[0].inst.Exec(ctx, "CHECKPOINT"); err != nil {
		return fmt.Errorf("checkpoint after pgbench -i: %w", err)
	}
	if err := cl.awaitReplay(ctx); err != nil {
		return err
	}
	fmt.Printf(" done in %.0fs; both standbys replayed it\n", time.Since(start).Seconds())
	return nil
}

// awaitReplay waits until every standby has replayed the primary's current
// WAL position.
func (cl *cluster) awaitReplay(ctx context.Context) error {
	p := cl.nodes[0].inst.Status(ctx)
	if !p.Running {
		return fmt.Errorf("primary status: %s", p.Error)
	}
	for _, n := range cl.nodes[1:] {
		err := poll(ctx, 2*time.Minute, n.name+" replays the primary's WAL", func() (bool, string) {
			s := n.inst.Status(ctx)
			return s.Running && s.ReplayedLSN >= p.CurrentLSN, fmt.Sprintf("replayed %s of %s %s", s.ReplayedLSN, p.CurrentLSN, s.Error)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// statements returns how many statements each server has executed in the
// bench database (pg_stat_statements, which counts as each statement ends;
// pg_stat_database's counts reach the view up to 10 s late from an idle
// pooled connection, i.e. in the next target's run).
func (cl *cluster) statements(ctx context.Context) ([]int64, error) {
	out := make([]int64, len(cl.nodes))
	for i, n := range cl.nodes {
		err := n.inst.Query(ctx, func(c *pgx.Conn) error {
			return c.QueryRow(ctx, `SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements
				WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1)`, benchDB).Scan(&out[i])
		})
		if err != nil {
			return nil, fmt.Errorf("%s: read pg_stat_statements: %w", n.name, err)
		}
	}
	return out, nil
}

// connArgs are pgbench's connection options for 127.0.0.1:port.
func connArgs(port int) []string {
	return []string{"-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", benchUser}
}

// pgbenchEnv is the environment of pgbench: ours without PG* variables,
// plus the password with -auth md5.
func pgbenchEnv(o *options) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	if o.auth != "trust" {
		env = append(env, "PGPASSWORD="+benchPassword)
	}
	return append(env, "PGCONNECT_TIMEOUT=10")
}

// poll calls cond every 100 ms until it holds, timeout passes or ctx ends.
func poll(ctx context.Context, timeout time.Duration, what string, cond func() (bool, string)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, msg := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waiting until %s: not within %v: %s", what, timeout, msg)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// loadAvg is the first field of /proc/loadavg ("?" when unreadable).
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	fields := strings.Fields(string(b))
	if len(fields) == 0 {
		return "?"
	}
	return fields[0]
}

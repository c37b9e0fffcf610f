// Command bench-router compares pgha's router with PgBouncer and pgpool-II
// (task bench:router).
//
// It starts a primary and two asynchronous streaming standbys (PostgreSQL
// as the OS user postgres when run as root), initialises pgbench tables,
// then starts PgBouncer (transaction pooling, to the primary), pgpool-II
// (streaming-replication mode, load balancing and connection caching, over
// all three servers) and the router (transaction pooling, load balancing
// over the standbys) in a process of its own: this binary re-executed with
// -serve-router. Everything listens on 127.0.0.1, on free ports, with its
// files in one temporary directory.
//
// pgbench then runs against the servers directly and through each proxy,
// the four targets back to back for every cell of the matrix: select-only
// (-S) and the default TPC-B-like mix, -M simple and -M prepared, 1, 16 and
// 64 clients, plus a cell with a new connection per transaction (-C). It
// prints TPS, average latency, the CPU time each proxy spent per
// transaction, the servers that ran the statements (pg_stat_statements) and
// the router's ratios to the others, then checks the targets of the issue.
// PgBouncer and pgpool-II are installed from Debian's packages when missing
// (as root). -cpuprofile profiles the router process.
//
// Everything started is stopped at exit, also on error and on Ctrl-C; the
// temporary directory is removed unless -keep.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/pgha/pgha/router"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options is the benchmark's configuration; defaults come from flags and
// validate names the first bad one.
type options struct {
	duration       time.Duration // per pgbench run
	warmup         time.Duration // per target, before the first cell
	rounds         int           // repetitions of the matrix; the report takes medians
	scale          int           // pgbench -i -s
	clients        []int
	workloads      []string // "select", "tpcb"
	protocols      []string // "simple", "prepared"
	targets        []string // allTargets, or some of them
	connectClients int      // clients of the -C cell; 0 skips it
	poolSize       int      // pgbouncer default_pool_size and router PoolSize
	auth           string   // "trust", "md5" or "scram-sha-256", for every proxy and the servers
	scramSecret    string   // with scram-sha-256: the bench user's verifier, everywhere
	install        bool     // apt-get install missing packages (root only)
	keep           bool
	verbose        bool
	cpuProfile     string // router CPU profile, written when the router process stops
	routerProcs    int    // GOMAXPROCS of the router process; 0: Go's default (the cores)
	readYourWrites bool   // the router's read-your-writes (the agent's default: on)
	loadBalance    bool   // the router sends reads to the standbys (the agent's default: on)
	fastPath       bool   // the router's event-loop fast path (the agent's default: on)
	// hostCPU: each server in a CPU-quota cgroup of this many cores (0:
	// off); standby2CPU overrides standby2's (unequal servers).
	hostCPU, standby2CPU float64
	cpuPeriod            time.Duration
	idleClients          int // -idle-clients: the idle-footprint run (0: skip)
}

func (o *options) validate() error {
	switch {
	case o.duration < time.Second:
		return fmt.Errorf("-duration %v: want at least 1s", o.duration)
	case o.rounds < 1:
		return fmt.Errorf("-rounds %d: want at least 1", o.rounds)
	case o.scale < 1:
		return fmt.Errorf("-scale %d: want at least 1", o.scale)
	case o.poolSize < 1:
		return fmt.Errorf("-pool-size %d: want at least 1", o.poolSize)
	case o.connectClients < 0:
		return fmt.Errorf("-connect-clients %d: want 0 (skip the -C cell) or more", o.connectClients)
	case o.routerProcs < 0:
		return fmt.Errorf("-router-gomaxprocs %d: want 0 (Go's default) or more", o.routerProcs)
	case o.hostCPU < 0 || o.standby2CPU < 0:
		return errors.New("-host-cpu and -standby2-cpu: want a fraction of a core, or 0 (off)")
	case o.standby2CPU > 0 && o.hostCPU == 0:
		return errors.New("-standby2-cpu needs -host-cpu")
	case o.auth != "trust" && o.auth != "md5" && o.auth != "scram-sha-256":
		return fmt.Errorf("-auth %q: want trust, md5 or scram-sha-256", o.auth)
	case o.idleClients < 0:
		return errors.New("-idle-clients: want 0 (skip) or more")
	case len(o.clients) == 0 && o.connectClients == 0 && o.idleClients == 0:
		return errors.New("-clients is empty, -connect-clients and -idle-clients are 0: nothing to run")
	}
	for _, c := range o.clients {
		if c < 1 || c > 500 {
			return fmt.Errorf("-clients %d: want 1 to 500", c)
		}
	}
	for _, w := range o.workloads {
		if w != "select" && w != "tpcb" {
			return fmt.Errorf("-workloads %q: want select or tpcb", w)
		}
	}
	for _, p := range o.protocols {
		if p != "simple" && p != "prepared" {
			return fmt.Errorf("-protocols %q: want simple or prepared", p)
		}
	}
	if len(o.targets) == 0 {
		return errors.New("-targets is empty")
	}
	for _, t := range o.targets {
		if !isTarget(t) {
			return fmt.Errorf("-targets %q: want some of %s", t, strings.Join(allTargets, ", "))
		}
	}
	return nil
}

// maxClients is the most clients any cell connects at once.
func (o *options) maxClients() int {
	m := o.connectClients
	for _, c := range o.clients {
		m = max(m, c)
	}
	return m
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == serveRouterFlag {
		if err := serveRouter(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "bench-router -serve-router:", err)
			os.Exit(1)
		}
		return
	}
	o := options{}
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "length of each pgbench run")
	flag.DurationVar(&o.warmup, "warmup", 3*time.Second, "pgbench warm-up per target and workload before the first cell (fills the pools)")
	flag.IntVar(&o.rounds, "rounds", 1, "repeat the matrix N times and report medians")
	flag.IntVar(&o.scale, "scale", 10, "pgbench -i scale factor")
	clients := flag.String("clients", "1,16,64", "client counts (threads = min(clients, 2))")
	workloads := flag.String("workloads", "select,tpcb", "select (pgbench -S) and/or tpcb (the default mix)")
	protocols := flag.String("protocols", "simple,prepared", "pgbench -M modes")
	targets := flag.String("targets", strings.Join(allTargets, ","), "what pgbench connects to")
	flag.IntVar(&o.connectClients, "connect-clients", 16, "clients of the connection-cost cell (-C -S -M simple); 0 skips it")
	flag.IntVar(&o.poolSize, "pool-size", 20, "PgBouncer default_pool_size and router pool size (per server)")
	flag.StringVar(&o.auth, "auth", "trust", "client authentication for the servers and every proxy on 127.0.0.1: trust, md5 or scram-sha-256")
	flag.BoolVar(&o.install, "install", true, "apt-get install pgbouncer and pgpool2 when missing (as root)")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (data, configuration, logs)")
	flag.BoolVar(&o.verbose, "v", false, "log PostgreSQL control and print each pgbench command")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the router process to this file (go tool pprof FILE)")
	flag.IntVar(&o.routerProcs, "router-gomaxprocs", 0, "GOMAXPROCS of the router process (0: Go's default, one per core)")
	flag.BoolVar(&o.readYourWrites, "router-read-your-writes", true, "the router's read-your-writes (on by default, as in the agent)")
	flag.BoolVar(&o.fastPath, "router-fast-path", true, "the router serves lone read-only simple queries on its event loop (on by default, as in the agent); off: every transaction on a goroutine")
	flag.BoolVar(&o.loadBalance, "router-load-balance", true, "the router sends reads outside transactions to the standbys (on by default, as in the agent); off: everything to the primary, as PgBouncer")
	flag.Float64Var(&o.hostCPU, "host-cpu", 0, "put each PostgreSQL server in a CPU-quota cgroup of this many cores, as if on a small VM of its own (0: off; root)")
	flag.Float64Var(&o.standby2CPU, "standby2-cpu", 0, "standby2's quota instead of -host-cpu's (unequal servers; 0: the same)")
	flag.DurationVar(&o.cpuPeriod, "host-cpu-period", 20*time.Millisecond, "the CPU quota's period (cfs_period_us / cpu.max)")
	flag.IntVar(&o.idleClients, "idle-clients", 0, "also open this many idle clients through PgBouncer and the router, in turn, and print each one's memory per client and CPU while idle (0: skip)")
	quick := flag.Bool("quick", false, "smoke run: -duration 2s -warmup 1s -scale 1 -rounds 1 unless given")
	flag.Parse()
	if o.auth == "scram-sha-256" {
		o.scramSecret = router.SCRAMVerifier(benchPassword)
	}
	if *quick {
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for name, value := range map[string]string{"duration": "2s", "warmup": "1s", "scale": "1", "rounds": "1"} {
			if !set[name] {
				flag.Set(name, value)
			}
		}
	}
	var err error
	if o.clients, err = intList(*clients); err != nil {
		fatal(fmt.Errorf("-clients: %w", err))
	}
	o.workloads, o.protocols, o.targets = stringList(*workloads), stringList(*protocols), stringList(*targets)
	if o.cpuProfile != "" {
		if o.cpuProfile, err = absPath(o.cpuProfile); err != nil {
			fatal(err)
		}
	}
	if err := o.validate(); err != nil {
		fatal(err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C ends the process without waiting for teardown
	}()
	if err := run(ctx, &o); err != nil {
		if ctx.Err() != nil {
			fatal(errors.New("interrupted; everything started was stopped"))
		}
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench-router:", err)
	os.Exit(1)
}

// run sets everything up, runs the matrix and prints the report. Whatever
// it starts is stopped before it returns (teardown), whatever happened.
func run(ctx context.Context, o *options) (err error) {
	tools, err := findTools(ctx, o.install)
	if err != nil {
		return err
	}
	var td teardown
	defer func() {
		if cerr := td.run(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	dir, err := makeWorkDir()
	if err != nil {
		return err
	}
	td.add("remove "+dir, func() error {
		if o.keep {
			fmt.Println("kept", dir)
			return nil
		}
		return os.RemoveAll(dir)
	})
	fmt.Printf("work dir %s; %s, %s, %s, pgbench from %s\n", dir, tools.pgVersion, tools.bouncerVersion, tools.pgpoolVersion, tools.binDir)

	start := time.Now()
	cl, err := startCluster(ctx, &td, dir, tools.binDir, o)
	if err != nil {
		return err
	}
	fmt.Printf("cluster ready in %.0fs: primary :%d, standby1 :%d, standby2 :%d (asynchronous streaming replication; fsync=off: the proxies, not the disk, are measured)\n",
		time.Since(start).Seconds(), cl.nodes[0].port, cl.nodes[1].port, cl.nodes[2].port)
	if err := cl.initPgbench(ctx, o); err != nil {
		return err
	}

	if o.hostCPU > 0 {
		quotas := []float64{o.hostCPU, o.hostCPU, o.hostCPU}
		if o.standby2CPU > 0 {
			quotas[2] = o.standby2CPU
		}
		if err := confineServers(cl, quotas, o.cpuPeriod, &td); err != nil {
			return err
		}
		fmt.Printf("servers confined to CPU quotas (cores, period %v): primary %.2f, standby1 %.2f, standby2 %.2f; pgbench and the proxies unconfined\n",
			o.cpuPeriod, quotas[0], quotas[1], quotas[2])
	}
	if o.idleClients > 0 {
		// Before the proxies start: they inherit the limit.
		if err := raiseFileLimit(o.idleClients + 1000); err != nil {
			return err
		}
	}
	ts, err := startTargets(ctx, &td, dir, tools, cl, o)
	if err != nil {
		return err
	}
	printSetup(ts, cl, o)
	if len(cells(o)) > 0 {
		res, err := runMatrix(ctx, ts, cl, tools, o)
		if err != nil {
			return err
		}
		printReport(res, ts, o)
		printProxyCounters(ctx, ts, o)
	}
	if o.idleClients > 0 {
		return idleFootprint(ctx, ts, o)
	}
	return nil
}

// teardown stops what run started, last first.
type teardown struct {
	steps []teardownStep
}

type teardownStep struct {
	what string
	f    func() error
}

func (t *teardown) add(what string, f func() error) {
	t.steps = append(t.steps, teardownStep{what, f})
}

// run performs every step, even after failures, and returns the first
// error.
func (t *teardown) run() error {
	var first error
	for i := len(t.steps) - 1; i >= 0; i-- {
		s := t.steps[i]
		if err := s.f(); err != nil {
			fmt.Fprintf(os.Stderr, "teardown: %s: %v\n", s.what, err)
			if first == nil {
				first = fmt.Errorf("%s: %w", s.what, err)
			}
		}
	}
	t.steps = nil
	return first
}

func intList(s string) ([]int, error) {
	var out []int
	for _, f := range stringList(s) {
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not a number", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func stringList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

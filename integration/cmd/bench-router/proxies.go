package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgha/pgha/router"
)

// Target names, in the order the report lists them. Four are there to
// explain the others on this one machine, where the standbys add no CPU:
// direct-standbys against direct-standby1 is what spreading reads over two
// servers costs without a proxy (the same clients and pgbench processes,
// two servers instead of one), router against router-standby1 (a router
// that knows only the primary and standby1) what it costs through the
// router, and router-nolb is the router with load balancing off,
// everything to the primary as PgBouncer does. router-noryw is the router
// without read-your-writes: what that guarantee costs a session that
// writes and reads (the tpcb mix).
var allTargets = []string{"direct", "direct-standby1", "direct-standbys", "direct-spread", "pgbouncer", "pgpool", "router-nolb", "router-standby1", "router-noryw", "router"}

func isTarget(name string) bool { return slices.Contains(allTargets, name) }

// isDirect: pgbench reaches the servers with no proxy in between.
func isDirect(name string) bool { return strings.HasPrefix(name, "direct") }

// target is what pgbench connects to: the primary itself or a proxy.
type target struct {
	name  string
	port  int
	split []int // direct-standby1, direct-standbys: the ports the clients are split over
	// readOnly: only the select-only cells run (standbys refuse writes).
	readOnly bool
	proc     *proc  // nil for direct
	setup    string // how it is configured, for the report
}

// ports are where pgbench connects: one pgbench per port.
func (tg *target) ports() []int {
	if len(tg.split) > 0 {
		return tg.split
	}
	return []int{tg.port}
}

// runs says whether tg takes part in cell c.
func (tg *target) runs(c cell) bool { return !tg.readOnly || c.workload == "select" }

// startTargets starts the proxies o.targets names (each stopped by td) and
// waits until each answers a query.
func startTargets(ctx context.Context, td *teardown, dir string, t *tools, cl *cluster, o *options) ([]*target, error) {
	var ts []*target
	for _, name := range allTargets {
		if !slices.Contains(o.targets, name) {
			continue
		}
		var tg *target
		var err error
		switch name {
		case "direct":
			tg = &target{name: name, port: cl.nodes[0].port,
				setup: "the primary itself: one server process per client connection"}
		case "direct-standby1":
			tg = &target{name: name, port: cl.nodes[1].port, split: []int{cl.nodes[1].port, cl.nodes[1].port}, readOnly: true,
				setup: "standby1 itself, the clients split as for direct-standbys (two pgbench side by side, both to standby1); select-only cells only"}
		case "direct-standbys":
			tg = &target{name: name, port: cl.nodes[1].port, split: []int{cl.nodes[1].port, cl.nodes[2].port}, readOnly: true,
				setup: "the two standbys themselves, half the clients each (one pgbench per standby, side by side); select-only cells only"}
		case "direct-spread":
			tg = &target{name: name, port: cl.nodes[0].port, split: []int{cl.nodes[0].port, cl.nodes[1].port, cl.nodes[2].port}, readOnly: true,
				setup: "all three servers themselves, a third of the clients each (one pgbench per server, side by side): the physical limit for reads; select-only cells only"}
		case "pgbouncer":
			tg, err = startPgbouncer(dir, t, cl, o)
		case "pgpool":
			tg, err = startPgpool(dir, t, cl, o)
		case "router":
			tg, err = startRouter(dir, cl.nodes, o, name, o.loadBalance, o.readYourWrites)
		case "router-standby1":
			tg, err = startRouter(dir, cl.nodes[:2], o, name, o.loadBalance, o.readYourWrites)
		case "router-nolb":
			tg, err = startRouter(dir, cl.nodes, o, name, false, o.readYourWrites)
		case "router-noryw":
			tg, err = startRouter(dir, cl.nodes, o, name, o.loadBalance, false)
		}
		if err != nil {
			return nil, err
		}
		if p := tg.proc; p != nil {
			sig := syscall.SIGTERM // PgBouncer: immediate shutdown; router: close and write the profile
			if name == "pgpool" {
				sig = syscall.SIGINT // fast shutdown
			}
			td.add("stop "+name, func() error { return p.stop(sig, 15*time.Second) })
		}
		ts = append(ts, tg)
	}
	for _, tg := range ts {
		if err := waitReady(ctx, tg, o); err != nil {
			return nil, err
		}
	}
	return ts, nil
}

// userList is PgBouncer's auth_file, which the router reads too: the bench
// user with an md5 hash (-auth md5) or no secret (trust; PgBouncer still
// wants the user listed).
func userList(o *options) string {
	secret := ""
	switch o.auth {
	case "md5":
		secret = router.MD5Hash(benchUser, benchPassword)
	case "scram-sha-256":
		secret = o.scramSecret
	}
	return fmt.Sprintf("%q %q\n", benchUser, secret)
}

// poolPasswd is pgpool-II's secret for the bench user: an md5 hash, or
// with SCRAM the password itself (TEXT prefix), from which pgpool-II
// answers the servers' SCRAM challenges.
func poolPasswd(o *options) string {
	if o.auth == "scram-sha-256" {
		return "TEXT" + benchPassword
	}
	return router.MD5Hash(benchUser, benchPassword)
}

// startPgbouncer runs PgBouncer in transaction pooling mode in front of the
// primary.
func startPgbouncer(dir string, t *tools, cl *cluster, o *options) (*target, error) {
	d := filepath.Join(dir, "pgbouncer")
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	if err := mkdirs(d); err != nil {
		return nil, err
	}
	users := filepath.Join(d, "userlist.txt")
	if err := writeFile(users, userList(o)); err != nil {
		return nil, err
	}
	ini := fmt.Sprintf(`[databases]
%[1]s = host=127.0.0.1 port=%[2]d dbname=%[1]s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %[3]d
unix_socket_dir = %[4]s
pidfile = %[4]s/pgbouncer.pid
auth_type = %[5]s
auth_file = %[6]s
pool_mode = transaction
default_pool_size = %[7]d
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = %[8]d
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
stats_period = 60
`, benchDB, cl.nodes[0].port, port, d, o.auth, users, o.poolSize, max(o.maxClients(), o.idleClients)+100)
	conf := filepath.Join(d, "pgbouncer.ini")
	if err := writeFile(conf, ini); err != nil {
		return nil, err
	}
	p, err := startProc("pgbouncer", filepath.Join(d, "pgbouncer.log"), runAs(), nil, t.pgbouncer, conf)
	if err != nil {
		return nil, err
	}
	return &target{name: "pgbouncer", port: port, proc: p,
		setup: fmt.Sprintf("pool_mode=transaction, default_pool_size=%d to the primary, auth_type=%s", o.poolSize, o.auth)}, nil
}

// pgpoolChildren is pgpool-II's num_init_children: one child serves one
// client at a time, so the most clients of any cell plus some.
func pgpoolChildren(o *options) int { return o.maxClients() + 8 }

// startPgpool runs pgpool-II in streaming-replication mode over the three
// servers with load balancing and connection caching.
func startPgpool(dir string, t *tools, cl *cluster, o *options) (*target, error) {
	d := filepath.Join(dir, "pgpool")
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	pcpPort, err := freePort() // names the pcp socket only: pcp does not listen on TCP
	if err != nil {
		return nil, err
	}
	if err := mkdirs(d); err != nil {
		return nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, `backend_clustering_mode = 'streaming_replication'
listen_addresses = '127.0.0.1'
port = %[1]d
socket_dir = '%[2]s'
pcp_listen_addresses = ''
pcp_port = %[3]d
pcp_socket_dir = '%[2]s'
wd_ipc_socket_dir = '%[2]s'
logdir = '%[2]s'
pid_file_name = '%[2]s/pgpool.pid'
num_init_children = %[4]d
max_pool = 1
child_life_time = 0
connection_life_time = 0
connection_cache = on
reserved_connections = 0
load_balance_mode = on
statement_level_load_balance = off
sr_check_period = 10
sr_check_user = '%[5]s'
sr_check_database = 'postgres'
health_check_period = 0
failover_on_backend_error = off
failover_command = ''
use_watchdog = off
memory_cache_enabled = off
ssl = off
log_destination = 'stderr'
log_min_messages = warning
log_connections = off
log_statement = off
log_per_node_statement = off
`, port, d, pcpPort, pgpoolChildren(o), benchUser)
	if o.auth != "trust" {
		fmt.Fprintf(&b, "enable_pool_hba = on\npool_passwd = 'pool_passwd'\nsr_check_password = '%s'\n", benchPassword)
	} else {
		b.WriteString("enable_pool_hba = off\npool_passwd = ''\nsr_check_password = ''\n")
	}
	// Reads go to the standbys only, as with the router (weight 0: the
	// primary is never the load-balance node).
	for i, n := range cl.nodes {
		weight := 1
		if i == 0 {
			weight = 0
		}
		fmt.Fprintf(&b, "backend_hostname%[1]d = '127.0.0.1'\nbackend_port%[1]d = %[2]d\nbackend_weight%[1]d = %[3]d\nbackend_flag%[1]d = 'DISALLOW_TO_FAILOVER'\nbackend_application_name%[1]d = '%[4]s'\n",
			i, n.port, weight, n.name)
	}
	files := map[string]string{
		"pgpool.conf":   b.String(),
		"pcp.conf":      "# no pcp users\n",
		"pool_hba.conf": "local all all trust\nhost all all 127.0.0.1/32 " + o.auth + "\n",
		"pool_passwd":   benchUser + ":" + poolPasswd(o) + "\n",
	}
	for name, content := range files {
		if err := writeFile(filepath.Join(d, name), content); err != nil {
			return nil, err
		}
	}
	p, err := startProc("pgpool", filepath.Join(d, "pgpool.log"), runAs(), nil, t.pgpool,
		"-n", "-D", "-f", filepath.Join(d, "pgpool.conf"), "-F", filepath.Join(d, "pcp.conf"), "-a", filepath.Join(d, "pool_hba.conf"))
	if err != nil {
		return nil, err
	}
	return &target{name: "pgpool", port: port, proc: p,
		setup: fmt.Sprintf("streaming_replication mode, num_init_children=%d (one client per child), max_pool=1 connection cache, load_balance_mode=on (per session; weights primary 0, standbys 1), health check off, sr_check every 10s, auth %s",
			pgpoolChildren(o), o.auth)}, nil
}

// startRouter runs the router in a process of its own: this binary,
// re-executed with -serve-router, in front of nodes.
func startRouter(dir string, nodes []*node, o *options, name string, loadBalance, readYourWrites bool) (*target, error) {
	d := filepath.Join(dir, name)
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		return nil, fmt.Errorf("router dir: %w", err)
	}
	users := filepath.Join(d, "userlist.txt")
	if err := os.WriteFile(users, []byte(userList(o)), 0o600); err != nil {
		return nil, fmt.Errorf("router auth file: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this binary to run the router: %w", err)
	}
	var backends []string
	for _, n := range nodes {
		backends = append(backends, fmt.Sprintf("%s=127.0.0.1:%d", n.name, n.port))
	}
	args := []string{serveRouterFlag,
		"-listen", "127.0.0.1:" + strconv.Itoa(port),
		"-backends", strings.Join(backends, ","),
		"-pool-size", strconv.Itoa(o.poolSize),
		"-auth", o.auth,
		"-userlist", users,
		"-monitor-user", benchUser, "-monitor-db", "postgres",
		"-max-client-conn", strconv.Itoa(max(o.maxClients(), o.idleClients) + 100),
	}
	if o.auth != "trust" {
		args = append(args, "-monitor-password", benchPassword)
	}
	if o.cpuProfile != "" && name == "router" {
		args = append(args, "-cpuprofile", o.cpuProfile)
	}
	ryw := "read-your-writes"
	if !readYourWrites {
		args = append(args, "-read-your-writes=false")
		ryw = "read-your-writes OFF"
	}
	var standbys []string
	for _, n := range nodes[1:] {
		standbys = append(standbys, n.name)
	}
	reads := "reads outside transactions to " + strings.Join(standbys, " and ")
	if !o.fastPath {
		args = append(args, "-fast-path=false")
	}
	if !loadBalance {
		args = append(args, "-load-balance=false")
		reads = "load balancing OFF (everything to the primary)"
	}
	var env []string
	procs := "GOMAXPROCS default"
	if o.routerProcs > 0 {
		env = append(env, "GOMAXPROCS="+strconv.Itoa(o.routerProcs))
		procs = "GOMAXPROCS=" + strconv.Itoa(o.routerProcs)
	}
	p, err := startProc(name, filepath.Join(d, "router.log"), "", env, self, args...)
	if err != nil {
		return nil, err
	}
	return &target{name: name, port: port, proc: p,
		setup: fmt.Sprintf("separate process (%s); pool_mode=transaction, pool size %d per server, %s, %s, max lag 1MB, auth %s",
			procs, o.poolSize, reads, ryw, o.auth)}, nil
}

// connString reaches port as the bench user with the simple protocol
// (which PgBouncer in transaction mode and the router's SHOW commands need).
func connString(port int, o *options) string {
	s := fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s sslmode=disable connect_timeout=5 default_query_exec_mode=simple_protocol", port, benchUser, benchDB)
	if o.auth != "trust" {
		s += " password=" + benchPassword
	}
	return s
}

// waitReady polls until a query through tg succeeds.
func waitReady(ctx context.Context, tg *target, o *options) error {
	var last error
	err := poll(ctx, time.Minute, tg.name+" answers", func() (bool, string) {
		if tg.proc != nil && tg.proc.exited() {
			return false, "exited"
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		c, err := pgx.Connect(cctx, connString(tg.port, o))
		if err == nil {
			_, err = c.Exec(cctx, "SELECT 1")
			c.Close(cctx)
		}
		last = err
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	if err != nil || (tg.proc != nil && tg.proc.exited()) {
		msg := fmt.Sprintf("%s on port %d did not come up (last error: %v)", tg.name, tg.port, last)
		if tg.proc != nil {
			msg += fmt.Sprintf("; its log %s ends:\n%s", tg.proc.log, tg.proc.logTail(20))
		}
		return fmt.Errorf("%s", msg)
	}
	return nil
}

// showRows runs a SHOW command through port and returns the header and rows.
func showRows(ctx context.Context, port int, o *options, sql string) ([]string, [][]string, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(cctx, connString(port, o))
	if err != nil {
		return nil, nil, err
	}
	defer c.Close(cctx)
	rows, err := c.Query(cctx, sql)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	var cols []string
	for _, f := range rows.FieldDescriptions() {
		cols = append(cols, f.Name)
	}
	var out [][]string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return nil, nil, err
		}
		row := make([]string, len(vals))
		for i, v := range vals {
			row[i] = fmt.Sprint(v)
		}
		out = append(out, row)
	}
	return cols, out, rows.Err()
}

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// idleFootprint (-idle-clients N): what idle clients cost each pooling
// proxy. For PgBouncer and the router in turn, it opens N client
// connections that log in and then do nothing, and prints the memory the
// proxy's processes gained per client (resident set, /proc) and the CPU
// they used over idleFor while the clients idled.
func idleFootprint(ctx context.Context, ts []*target, o *options) error {
	const idleFor = 10 * time.Second
	// run raised the open-file limit before the proxies started.
	fmt.Printf("\n== %d idle clients per proxy (logged in, then nothing; memory per client = resident set gained / clients; CPU over %v of idling)\n", o.idleClients, idleFor)
	for _, tg := range ts {
		if tg.name != "pgbouncer" && tg.name != "router" || tg.proc == nil {
			continue
		}
		pgid := tg.proc.cmd.Process.Pid
		rss0 := groupRSS(pgid)
		conns := make([]*pgconn.PgConn, 0, o.idleClients)
		connStr := fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s sslmode=disable connect_timeout=10", tg.port, benchUser, benchDB)
		if o.auth != "trust" {
			connStr += " password=" + benchPassword
		}
		var err error
		start := time.Now()
		for len(conns) < o.idleClients && err == nil {
			var c *pgconn.PgConn
			if c, err = pgconn.Connect(ctx, connStr); err == nil {
				conns = append(conns, c)
			}
		}
		connected := time.Since(start)
		// Let the proxy settle (a GC, stacks shrunk) before measuring.
		time.Sleep(2 * time.Second)
		rss1 := groupRSS(pgid)
		cpu0 := groupCPU(pgid)
		time.Sleep(idleFor)
		cpu1 := groupCPU(pgid)
		for _, c := range conns {
			c.Close(context.Background())
		}
		if err != nil {
			return fmt.Errorf("%s: client %d of %d: %w", tg.name, len(conns)+1, o.idleClients, err)
		}
		fmt.Printf("  %-10s %6.1f kB per client (resident %d -> %d kB)  CPU while idle %.2f%% of a core  (connected in %.1fs)\n",
			tg.name, float64(rss1-rss0)/float64(len(conns)), rss0, rss1, 100*(cpu1-cpu0).Seconds()/idleFor.Seconds(), connected.Seconds())
	}
	return nil
}

// groupRSS is the resident set of the processes in group pgid, in kB.
func groupRSS(pgid int) int64 {
	var kb int64
	for _, p := range groupProcs(pgid) {
		status, err := os.ReadFile(filepath.Join(p.dir, "status"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				kb += n
			}
		}
	}
	return kb
}

// raiseFileLimit raises this process's open-file limit (inherited by the
// proxies it starts afterwards) to at least n, up to the hard limit.
func raiseFileLimit(n int) error {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return err
	}
	if l.Cur >= uint64(n) {
		return nil
	}
	if l.Max < uint64(n) {
		return fmt.Errorf("-idle-clients: the open-file hard limit is %d; want at least %d (ulimit -Hn)", l.Max, n)
	}
	l.Cur = uint64(n)
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
}

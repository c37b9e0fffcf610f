package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
)

// The targets. The throughput ones hold only with -host-cpu (each
// server its own CPU quota, as on hosts of their own): on one shared
// machine the standbys bring no cores, and those rows are printed but not
// judged.
const (
	targetVsBouncer   = 2.6  // router TPS ≥ this × PgBouncer's (primary only) on -S at 16 and 64 clients
	targetVsPgpool    = 3.0  // router TPS ≥ this × pgpool-II's (load balancing on)
	targetVsSpread    = 0.9  // router TPS ≥ this × direct-spread's (pgbench to all three servers)
	targetVsSpreadOdd = 0.85 // the same with unequal servers (-standby2-cpu)
	targetLatency1    = 1.0  // router latency ≤ this × PgBouncer's at 1 client
	targetBusyClients = 16   // "at 16 and 64 clients": cells with at least this many
)

func printSetup(ts []*target, cl *cluster, o *options) {
	fmt.Println()
	fmt.Println("targets (everything on 127.0.0.1 of this machine, pgbench too):")
	for _, tg := range ts {
		fmt.Printf("  %-15s :%-5d %s\n", tg.name, tg.port, tg.setup)
	}
	fmt.Printf("servers: %s :%d, %s :%d, %s :%d; asynchronous streaming replication; pgbench -s %d; client auth %s everywhere\n",
		cl.nodes[0].name, cl.nodes[0].port, cl.nodes[1].name, cl.nodes[1].port, cl.nodes[2].name, cl.nodes[2].port, o.scale, o.auth)
	fmt.Println("each cell runs every target back to back, the order rotating from cell to cell. \"servers\": each server's share")
	fmt.Println("of the statements run in the bench database (pg_stat_statements). \"proxy CPU\": user+system CPU time of the")
	fmt.Println("proxy's processes per transaction. \"machine busy\": all cores, all processes (this machine may be shared)")
}

// printCell prints one round of one cell as it completes.
func printCell(c cell, round int, order []*target, runs map[string][]result, cl *cluster, load string, o *options) {
	fmt.Println()
	r := ""
	if o.rounds > 1 {
		r = fmt.Sprintf(" [round %d/%d]", round+1, o.rounds)
	}
	var names []string
	for _, tg := range order {
		names = append(names, tg.name)
	}
	fmt.Printf("== %s, %v%s  (order %s; load average %s)\n", c.title(), o.duration, r, strings.Join(names, ", "), load)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	conn := ""
	if c.connect {
		conn = "conn ms\t"
	}
	fmt.Fprintf(tw, "target\ttps\tlatency ms\t%sfailed\tproxy CPU µs/tx\tmachine busy\t  servers\t\n", conn)
	var errs []string
	for _, name := range allTargets {
		rs, ok := runs[name]
		if !ok {
			continue
		}
		x := rs[len(rs)-1]
		if c.connect {
			conn = fmt.Sprintf("%.3f\t", x.connMs)
		}
		tps, lat, failed, cpu := fmt.Sprintf("%.1f", x.tps), fmt.Sprintf("%.3f", x.latencyMs), fmt.Sprint(x.failed), "-"
		if !isDirect(name) {
			cpu = fmt.Sprintf("%.1f", x.cpuPerXact())
		}
		if !x.ok() {
			tps, lat, failed, cpu = "ERR", "ERR", "ERR", "-"
			if c.connect {
				conn = "ERR\t"
			}
			errs = append(errs, fmt.Sprintf("   %s: %s", name, x.err))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s%s\t%s\t%.0f%%\t  %s\t\n", name, tps, lat, conn, failed, cpu, 100*x.busy, shares(x.shares, cl))
	}
	tw.Flush()
	for _, e := range errs {
		fmt.Println(e)
	}
	last := func(name string) (result, bool) {
		rs, ok := runs[name]
		if !ok {
			return result{}, false
		}
		return rs[len(rs)-1], true
	}
	var parts []string
	for _, q := range ratioPairs {
		a, okA := last(q[0])
		b, okB := last(q[1])
		if okA && okB {
			parts = append(parts, fmt.Sprintf("%s/%s %s", q[0], q[1], ratio(a, b)))
		}
	}
	if len(parts) > 0 {
		fmt.Println("   tps " + strings.Join(parts, "   "))
	}
}

// ratioPairs are the quotients the report prints, where both targets ran:
// the router against each other target, and the like-for-like pairs.
var ratioPairs = [][2]string{
	{"router", "pgbouncer"}, {"router", "pgpool"}, {"router", "direct"},
	{"router", "direct-standbys"}, {"router-nolb", "pgbouncer"}, {"router-nolb", "direct"},
}

// shares names the servers that ran at least 1% of the statements.
func shares(s []float64, cl *cluster) string {
	var parts []string
	for i, v := range s {
		if v >= 0.01 {
			parts = append(parts, fmt.Sprintf("%s %.0f%%", cl.nodes[i].name, 100*v))
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

func ratio(a, b result) string {
	if !a.ok() || !b.ok() || b.tps == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", a.tps/b.tps)
}

// summary is the median of a cell's valid runs for one target.
type summary struct {
	tps, latencyMs float64
	cpuPerXact     float64 // proxy CPU µs per transaction
	ok             bool
	err            string
	runs           int
}

func summarize(rs []result) summary {
	var tps, lat, cpu []float64
	s := summary{runs: len(rs)}
	for _, r := range rs {
		if !r.ok() {
			if s.err == "" {
				s.err = r.err
			}
			continue
		}
		tps, lat, cpu = append(tps, r.tps), append(lat, r.latencyMs), append(cpu, r.cpuPerXact())
	}
	// A cell counts only when every round of it worked.
	if len(tps) == 0 || len(tps) < len(rs) {
		return s
	}
	s.tps, s.latencyMs, s.cpuPerXact, s.ok = median(tps), median(lat), median(cpu), true
	return s
}

// pairedRatio is the median over rounds of a's tps over b's in the same
// round. The two ran within a minute of each other, so drift of the machine
// over a long run (it may be shared) cancels out of each quotient, which it
// does not from a quotient of the two medians. ok is false unless every
// round of both worked.
func pairedRatio(as, bs []result) (float64, bool) {
	if len(as) == 0 || len(as) != len(bs) {
		return 0, false
	}
	q := make([]float64, 0, len(as))
	for k := range as {
		if !as[k].ok() || !bs[k].ok() || bs[k].tps == 0 {
			return 0, false
		}
		q = append(q, as[k].tps/bs[k].tps)
	}
	return median(q), true
}

func median(v []float64) float64 {
	v = slices.Clone(v)
	sort.Float64s(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// printReport prints the summary tables (medians over rounds) and checks
// the targets.
func printReport(m *matrix, ts []*target, o *options) {
	var names []string
	for _, tg := range ts {
		names = append(names, tg.name)
	}
	sum := make([]map[string]summary, len(m.cells))
	for i := range m.cells {
		sum[i] = map[string]summary{}
		for _, n := range names {
			sum[i][n] = summarize(m.runs[i][n])
		}
	}
	med := ""
	if o.rounds > 1 {
		med = fmt.Sprintf(", medians of %d rounds", o.rounds)
	}
	var pairs [][2]string
	for _, q := range ratioPairs {
		if slices.Contains(names, q[0]) && slices.Contains(names, q[1]) {
			pairs = append(pairs, q)
		}
	}

	tables := []struct {
		title  string
		format string
		value  func(summary) float64
		only   func(name string) bool
	}{
		{fmt.Sprintf("TPS (%v per run%s)", o.duration, med), "%.0f", func(s summary) float64 { return s.tps }, nil},
		{"average latency, ms", "%.3f", func(s summary) float64 { return s.latencyMs }, nil},
		{"proxy CPU per transaction, µs (user+system of the proxy's processes)", "%.1f",
			func(s summary) float64 { return s.cpuPerXact }, func(n string) bool { return !isDirect(n) }},
	}
	for _, t := range tables {
		fmt.Printf("\n== summary: %s\n", t.title)
		tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprint(tw, "cell\t")
		for _, n := range names {
			fmt.Fprintf(tw, "%s\t", n)
		}
		for _, q := range pairs {
			if t.only == nil || (t.only(q[0]) && t.only(q[1])) {
				fmt.Fprintf(tw, "%s/%s\t", q[0], q[1])
			}
		}
		fmt.Fprintln(tw)
		for i, c := range m.cells {
			fmt.Fprintf(tw, "%s\t", c.label())
			for _, n := range names {
				cell := "-"
				if t.only == nil || t.only(n) {
					cell = num(sum[i][n], t.value(sum[i][n]), t.format)
				}
				fmt.Fprintf(tw, "%s\t", cell)
			}
			for _, q := range pairs {
				if t.only == nil || (t.only(q[0]) && t.only(q[1])) {
					fmt.Fprintf(tw, "%s\t", quotient(sum[i][q[0]], sum[i][q[1]], t.value))
				}
			}
			fmt.Fprintln(tw)
		}
		tw.Flush()
	}
	if anyFailed(sum) {
		fmt.Println("(ERR: pgbench failed, stalled or some of its clients aborted; see that cell's output above)")
	}
	printTargets(m, sum, o)
}

func anyFailed(sum []map[string]summary) bool {
	for _, byTarget := range sum {
		for _, s := range byTarget {
			if !s.ok && s.runs > 0 {
				return true
			}
		}
	}
	return false
}

func num(s summary, v float64, format string) string {
	if !s.ok {
		if s.runs == 0 {
			return "-"
		}
		return "ERR"
	}
	return fmt.Sprintf(format, v)
}

func quotient(a, b summary, f func(summary) float64) string {
	if !a.ok || !b.ok || f(b) == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", f(a)/f(b))
}

// printTargets checks the targets on the select-only cells
// without -C: with -host-cpu, router ≥ 2.6× PgBouncer's, ≥ 3× pgpool-II's
// and ≥ 0.9× direct-spread's TPS (0.85× with unequal servers) at 16 and
// more clients; always, at 1 client a latency ≤ 1.0× PgBouncer's. A cell where
// the comparison target failed (PgBouncer 1.18 with -M prepared: it does not
// keep protocol-level prepared statements in transaction mode) is reported
// but not judged.
func printTargets(m *matrix, sum []map[string]summary, o *options) {
	ownCPU := o.hostCPU > 0
	spread := targetVsSpread
	if o.standby2CPU > 0 && o.standby2CPU != o.hostCPU {
		spread = targetVsSpreadOdd
	}
	fmt.Println("\n== targets (select-only cells)")
	met, judged := 0, 0
	for i, c := range m.cells {
		if c.workload != "select" || c.connect {
			continue
		}
		rt := sum[i]["router"]
		type check struct {
			what    string
			other   string
			ok      func(r, o summary) bool
			value   func(r, o summary) string
			applies bool
		}
		checks := []check{
			{fmt.Sprintf("router tps >= %.1fx pgbouncer", targetVsBouncer), "pgbouncer",
				func(r, o summary) bool { return r.tps >= targetVsBouncer*o.tps },
				func(r, o summary) string {
					return fmt.Sprintf("%.2fx (%.0f vs %.0f tps)", r.tps/o.tps, r.tps, o.tps)
				}, ownCPU && c.clients >= targetBusyClients},
			{fmt.Sprintf("router tps >= %.1fx pgpool", targetVsPgpool), "pgpool",
				func(r, o summary) bool { return r.tps >= targetVsPgpool*o.tps },
				func(r, o summary) string {
					return fmt.Sprintf("%.2fx (%.0f vs %.0f tps)", r.tps/o.tps, r.tps, o.tps)
				}, ownCPU && c.clients >= targetBusyClients},
			{fmt.Sprintf("router tps >= %.2fx direct-spread", spread), "direct-spread",
				func(r, o summary) bool { return r.tps >= spread*o.tps },
				func(r, o summary) string {
					return fmt.Sprintf("%.2fx (%.0f vs %.0f tps)", r.tps/o.tps, r.tps, o.tps)
				}, ownCPU && c.clients >= targetBusyClients},
			{fmt.Sprintf("router latency <= %.1fx pgbouncer", targetLatency1), "pgbouncer",
				func(r, o summary) bool { return r.latencyMs <= targetLatency1*o.latencyMs },
				func(r, o summary) string {
					return fmt.Sprintf("%.2fx (%.3f vs %.3f ms)", r.latencyMs/o.latencyMs, r.latencyMs, o.latencyMs)
				}, c.clients == 1},
		}
		for _, ch := range checks {
			if !ch.applies {
				continue
			}
			ot, present := sum[i][ch.other]
			verdict := ""
			switch {
			case !present || rt.runs == 0:
				verdict = "not measured"
			case !rt.ok:
				verdict, judged = "FAIL  router failed: "+rt.err, judged+1
			case !ot.ok:
				verdict = "n/a   " + ch.other + " failed: " + ot.err
			case ch.ok(rt, ot):
				verdict, met, judged = "PASS  "+ch.value(rt, ot), met+1, judged+1
			default:
				verdict, judged = "FAIL  "+ch.value(rt, ot), judged+1
			}
			fmt.Printf("  %-34s %-28s %s\n", ch.what, c.label(), verdict)
		}
	}
	fmt.Printf("targets met: %d of %d judged\n", met, judged)
	printLikeForLike(m, sum)
	printReadYourWritesCost(m, sum)
}

// printLikeForLike compares the proxies where they do the same work, which
// the targets do not: PgBouncer sends everything to the primary,
// the router reads from the two standbys, and on this one machine the
// standbys add no cores, only a second server's caches to keep warm (see
// direct-standbys against direct-standby1). Not the targets: they explain
// them.
func printLikeForLike(m *matrix, sum []map[string]summary) {
	type check struct {
		what       string
		a, b, c, d string // a/b >= c/d; c, d empty: a/b >= 1
		info       bool   // only print a/b
	}
	checks := []check{
		{"router-nolb tps >= 1.0x pgbouncer (both: all to the primary)", "router-nolb", "pgbouncer", "", "", false},
		{"router/direct-standbys >= pgbouncer/direct (share of the servers' own tps)", "router", "direct-standbys", "pgbouncer", "direct", false},
		{"direct-standbys tps vs direct-standby1 (spreading reads over 2 servers)", "direct-standbys", "direct-standby1", "", "", true},
		{"router tps vs router-standby1 (the same, through the router)", "router", "router-standby1", "", "", true},
	}
	var lines []string
	met, judged := 0, 0
	for i, c := range m.cells {
		if c.workload != "select" || c.connect || c.clients < targetBusyClients {
			continue
		}
		s := sum[i]
		for _, ch := range checks {
			names := []string{ch.a, ch.b, ch.c, ch.d}
			okAll := true
			for _, n := range names {
				if n != "" && !s[n].ok {
					okAll = false
				}
			}
			if !okAll {
				continue
			}
			q := s[ch.a].tps / s[ch.b].tps
			if ch.c == "" {
				paired := ""
				if p, ok := pairedRatio(m.runs[i][ch.a], m.runs[i][ch.b]); ok && len(m.runs[i][ch.a]) > 1 {
					paired = fmt.Sprintf("; per-round median %.2fx", p)
				}
				if ch.info {
					lines = append(lines, fmt.Sprintf("  %-72s %-28s       %.2fx (%.0f vs %.0f tps%s)", ch.what, c.label(), q, s[ch.a].tps, s[ch.b].tps, paired))
					continue
				}
				v := "FAIL"
				if q >= 1 {
					v, met = "PASS", met+1
				}
				judged++
				lines = append(lines, fmt.Sprintf("  %-72s %-28s %s  %.2fx (%.0f vs %.0f tps%s)", ch.what, c.label(), v, q, s[ch.a].tps, s[ch.b].tps, paired))
				continue
			}
			r := s[ch.c].tps / s[ch.d].tps
			v := "FAIL"
			if q >= r {
				v, met = "PASS", met+1
			}
			judged++
			lines = append(lines, fmt.Sprintf("  %-72s %-28s %s  %.2f vs %.2f", ch.what, c.label(), v, q, r))
		}
	}
	if len(lines) == 0 {
		return
	}
	fmt.Println("\n== like for like (explains the targets above; not the issue's targets)")
	for _, l := range lines {
		fmt.Println(l)
	}
	fmt.Printf("like-for-like checks met: %d of %d\n", met, judged)
}

// printReadYourWritesCost compares the router with and without
// read-your-writes where sessions write and then read (the tpcb mix): with
// it, a session's reads after its write go to a standby only once that
// standby has replayed the write (else to the primary), and each write
// transaction costs the router a question for the primary's WAL position.
func printReadYourWritesCost(m *matrix, sum []map[string]summary) {
	var lines []string
	for i, c := range m.cells {
		a, b := sum[i]["router"], sum[i]["router-noryw"]
		if c.workload != "tpcb" || !a.ok || !b.ok {
			continue
		}
		paired := ""
		if p, ok := pairedRatio(m.runs[i]["router"], m.runs[i]["router-noryw"]); ok && len(m.runs[i]["router"]) > 1 {
			paired = fmt.Sprintf("; per-round median %.2fx", p)
		}
		lines = append(lines, fmt.Sprintf("  %-28s router %.0f tps, router-noryw %.0f tps: %.2fx%s; router CPU per transaction %.0f vs %.0f µs",
			c.label(), a.tps, b.tps, a.tps/b.tps, paired, a.cpuPerXact, b.cpuPerXact))
	}
	if len(lines) == 0 {
		return
	}
	fmt.Println("\n== what read-your-writes costs (the default mix: each session writes, then reads)")
	for _, l := range lines {
		fmt.Println(l)
	}
}

// printProxyCounters shows what the router and pgpool-II counted: the
// statements each sent to each server (SHOW POOL_NODES, select_cnt).
func printProxyCounters(ctx context.Context, ts []*target, o *options) {
	for _, tg := range ts {
		if tg.name != "router" && tg.name != "pgpool" {
			continue
		}
		cols, rows, err := showRows(ctx, tg.port, o, "SHOW POOL_NODES")
		if err != nil {
			fmt.Printf("\n%s SHOW POOL_NODES: %v\n", tg.name, err)
			continue
		}
		want := []string{"node_id", "port", "role", "lb_weight", "select_cnt", "load_balance_node"}
		fmt.Printf("\n%s SHOW POOL_NODES since it started (warm-up included):\n", tg.name)
		tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		var idx []int
		for _, w := range want {
			if i := slices.Index(cols, w); i >= 0 {
				idx = append(idx, i)
				fmt.Fprintf(tw, "  %s\t", w)
			}
		}
		fmt.Fprintln(tw)
		for _, r := range rows {
			for _, i := range idx {
				fmt.Fprintf(tw, "  %s\t", r[i])
			}
			fmt.Fprintln(tw)
		}
		tw.Flush()
		if tg.name != "router" {
			continue
		}
		// The router's own totals: the last row of SHOW STATS.
		if _, rows, err := showRows(ctx, tg.port, o, "SHOW STATS"); err == nil && len(rows) > 0 {
			fmt.Printf("router SHOW STATS totals: %s\n", strings.Join(rows[len(rows)-1][3:], " | "))
		}
	}
}

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// cell is one point of the matrix; every target runs it back to back.
type cell struct {
	workload string // "select" (pgbench -S) or "tpcb" (the default script)
	protocol string // pgbench -M
	clients  int
	connect  bool // -C: a new connection per transaction
	// threadsOverride: pgbench -j of one of several pgbench processes
	// that share the cell (splitCell); 0: threads().
	threadsOverride int
}

func (c cell) threads() int {
	if c.threadsOverride > 0 {
		return c.threadsOverride
	}
	return min(c.clients, 2)
}

// label is the cell's pgbench options in short.
func (c cell) label() string {
	w := "-S"
	if c.workload == "tpcb" {
		w = "tpcb"
	}
	if c.connect {
		w += " -C"
	}
	return fmt.Sprintf("%-7s -M %-8s -c %2d", w, c.protocol, c.clients)
}

// title describes the cell in words.
func (c cell) title() string {
	w := "select-only (-S)"
	if c.workload == "tpcb" {
		w = "TPC-B-like default mix"
	}
	if c.connect {
		w += ", a new connection per transaction (-C)"
	}
	return fmt.Sprintf("%s, -M %s, %d clients / %d threads", w, c.protocol, c.clients, c.threads())
}

func (c cell) args(d time.Duration) []string {
	a := []string{"-n", "-T", strconv.Itoa(max(1, int(d.Round(time.Second).Seconds()))),
		"-c", strconv.Itoa(c.clients), "-j", strconv.Itoa(c.threads()), "-M", c.protocol}
	if c.workload == "select" {
		a = append(a, "-S")
	}
	if c.connect {
		a = append(a, "-C")
	}
	return a
}

// cells is the matrix o asks for: workloads × protocols × clients, then
// the connection-cost cell.
func cells(o *options) []cell {
	var out []cell
	for _, w := range o.workloads {
		for _, p := range o.protocols {
			for _, c := range o.clients {
				out = append(out, cell{workload: w, protocol: p, clients: c})
			}
		}
	}
	if o.connectClients > 0 {
		out = append(out, cell{workload: "select", protocol: "simple", clients: o.connectClients, connect: true})
	}
	return out
}

// result is one pgbench run.
type result struct {
	tps       float64       // without initial connection time; with -C including the connections
	latencyMs float64       // "latency average"
	connMs    float64       // average connection time (-C) or initial connection time
	xacts     int64         // transactions processed
	failed    int64         // failed transactions pgbench reports (serialization, deadlock)
	err       string        // the run is invalid: pgbench failed or clients aborted
	shares    []float64     // each server's share of the statements
	proxyCPU  time.Duration // CPU time of the proxy's processes during the run (0: direct)
	busy      float64       // fraction of the machine's CPU time in use during the run
}

// cpuPerXact is the proxy's CPU time per transaction in microseconds.
func (r result) cpuPerXact() float64 {
	if r.xacts == 0 {
		return 0
	}
	return float64(r.proxyCPU.Microseconds()) / float64(r.xacts)
}

func (r result) ok() bool { return r.err == "" }

var (
	tpsRe     = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \((without initial connection time|including reconnection times|excluding connections establishing|including connections establishing)\)`)
	latencyRe = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)
	failedRe  = regexp.MustCompile(`(?m)^number of failed transactions: ([0-9]+)`)
	xactsRe   = regexp.MustCompile(`(?m)^number of transactions actually processed: ([0-9]+)`)
	connRe    = regexp.MustCompile(`(?m)^(?:average connection time|initial connection time) = ([0-9.]+) ms`)
)

// parsePgbench reads pgbench's summary.
func parsePgbench(out string) (result, error) {
	var r result
	m := tpsRe.FindStringSubmatch(out)
	if m == nil {
		return r, errors.New("no tps line in pgbench's output")
	}
	r.tps, _ = strconv.ParseFloat(m[1], 64)
	if m := latencyRe.FindStringSubmatch(out); m != nil {
		r.latencyMs, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := failedRe.FindStringSubmatch(out); m != nil {
		r.failed, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := xactsRe.FindStringSubmatch(out); m != nil {
		r.xacts, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := connRe.FindStringSubmatch(out); m != nil {
		r.connMs, _ = strconv.ParseFloat(m[1], 64)
	}
	return r, nil
}

// stallGrace is how long a pgbench run may last beyond its -T. A pooler
// can stall pgbench for good: with -M prepared pgbench prepares each
// statement with a synchronous PQprepare that blocks its whole thread, so
// when clients of that thread hold every pooled server connection inside
// a transaction (TPC-B mix, more clients than the pool size), the prepare
// waits for a connection that only that thread could release.
const stallGrace = 30 * time.Second

// runPgbench runs cell c against tg for d and reads pgbench's summary and
// each server's share of the statements. Errors of pgbench itself make
// an invalid result, not an error: the matrix goes on. A target with
// several ports (direct-standbys) gets one pgbench per port, the clients
// and threads split between them, run at the same time and added up.
func runPgbench(ctx context.Context, t *tools, cl *cluster, tg *target, c cell, d time.Duration, o *options) (result, error) {
	before, err := cl.statements(ctx)
	if err != nil {
		return result{}, err
	}
	parts := splitCell(c, len(tg.ports()))
	var cpu0 time.Duration
	if tg.proc != nil {
		cpu0 = groupCPU(tg.proc.cmd.Process.Pid)
	}
	busy0, total0 := machineCPU()
	rs := make([]result, len(parts))
	var wg sync.WaitGroup
	for i, part := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rs[i] = pgbenchOnce(ctx, t, tg.ports()[i], part, d, o)
		}()
	}
	wg.Wait()
	busy1, total1 := machineCPU()
	var cpu1 time.Duration
	if tg.proc != nil {
		cpu1 = groupCPU(tg.proc.cmd.Process.Pid)
	}
	if ctx.Err() != nil {
		return result{}, ctx.Err()
	}
	r := addUp(rs)
	r.proxyCPU = cpu1 - cpu0
	if total1 > total0 {
		r.busy = float64(busy1-busy0) / float64(total1-total0)
	}
	after, err := cl.statements(ctx)
	if err != nil {
		return result{}, err
	}
	var total int64
	for i := range after {
		total += after[i] - before[i]
	}
	for i := range after {
		share := 0.0
		if total > 0 {
			share = float64(after[i]-before[i]) / float64(total)
		}
		r.shares = append(r.shares, share)
	}
	return r, nil
}

// pgbenchOnce runs one pgbench process against port.
func pgbenchOnce(ctx context.Context, t *tools, port int, c cell, d time.Duration, o *options) result {
	args := append(connArgs(port), c.args(d)...)
	args = append(args, benchDB)
	if o.verbose {
		fmt.Printf("  + pgbench %s\n", strings.Join(args, " "))
	}
	// pgbench stops at -T; a run still going well after that is stuck
	// (see stallGrace) and is ended.
	rctx, cancel := context.WithTimeout(ctx, d+stallGrace)
	defer cancel()
	cmd := exec.CommandContext(rctx, t.pgbench, args...)
	cmd.Env = pgbenchEnv(o)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // Ctrl-C is the benchmark's to handle
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	r, perr := parsePgbench(stdout.String())
	switch {
	case rctx.Err() != nil && ctx.Err() == nil:
		r.err = fmt.Sprintf("stalled: pgbench still running %v after its -T ended; killed (%s)", stallGrace, firstError(stderr.String()))
	case runErr != nil:
		r.err = fmt.Sprintf("pgbench: %v: %s", runErr, firstError(stderr.String()))
	case perr != nil:
		r.err = fmt.Sprintf("%v (stderr: %s; stdout ends: %q)", perr, firstError(stderr.String()), tail(stdout.String(), 300))
	}
	return r
}

// tail is the last n bytes of s.
func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// splitCell shares c's clients and threads between n pgbench processes;
// fewer than n when c has fewer clients.
func splitCell(c cell, n int) []cell {
	n = max(1, min(n, c.clients))
	parts := make([]cell, n)
	for i := range parts {
		parts[i] = c
		parts[i].clients = c.clients / n
		if i < c.clients%n {
			parts[i].clients++
		}
		parts[i].threadsOverride = max(1, c.threads()/n)
	}
	if n == 1 {
		parts[0].threadsOverride = 0
	}
	return parts
}

// addUp combines the results of pgbench processes that ran side by side:
// throughputs and counts add up, latencies and connection times are
// averaged over the transactions.
func addUp(rs []result) result {
	if len(rs) == 1 {
		return rs[0]
	}
	var out result
	var lat, conn float64
	for _, r := range rs {
		if !r.ok() && out.err == "" {
			out.err = r.err
		}
		out.tps += r.tps
		out.xacts += r.xacts
		out.failed += r.failed
		lat += r.latencyMs * float64(r.xacts)
		conn += r.connMs * float64(r.xacts)
	}
	if out.xacts > 0 {
		out.latencyMs, out.connMs = lat/float64(out.xacts), conn/float64(out.xacts)
	}
	return out
}

// firstError picks the most telling line of pgbench's stderr.
func firstError(stderr string) string {
	stderr = strings.TrimSpace(stderr)
	if stderr == "" {
		return "no error output"
	}
	lines := strings.Split(stderr, "\n")
	for _, l := range lines {
		if strings.Contains(l, "ERROR") || strings.Contains(l, "error:") {
			return strings.TrimSpace(l)
		}
	}
	return lines[0]
}

// matrix holds every run: runs[cell index][target name], one per round.
type matrix struct {
	cells []cell
	runs  []map[string][]result
}

// runMatrix warms each target up, then runs every cell, the targets back to
// back in an order that rotates from cell to cell and round to round, so
// that drift and position effects spread over all of them.
func runMatrix(ctx context.Context, ts []*target, cl *cluster, t *tools, o *options) (*matrix, error) {
	m := &matrix{cells: cells(o)}
	for range m.cells {
		m.runs = append(m.runs, map[string][]result{})
	}
	if o.warmup > 0 {
		start := time.Now()
		fmt.Printf("\nwarm-up: %v of -S and of the default mix at %d clients per target (fills the pools and caches)\n", o.warmup, o.maxClients())
		for _, tg := range ts {
			for _, w := range []string{"select", "tpcb"} {
				if !tg.runs(cell{workload: w}) {
					continue
				}
				r, err := runPgbench(ctx, t, cl, tg, cell{workload: w, protocol: "simple", clients: o.maxClients()}, o.warmup, o)
				if err != nil {
					return nil, err
				}
				if !r.ok() {
					// Not fatal: a slow proxy (pgpool-II connecting 64
					// sessions to three servers of a quarter core each)
					// may not finish a transaction in the warm-up; its
					// cells say whether it works.
					fmt.Printf("  warm-up of %s (%s): %s\n", tg.name, w, r.err)
				}
				if err := checkAlive(ts); err != nil {
					return nil, err
				}
			}
		}
		fmt.Printf("warm-up done in %.0fs\n", time.Since(start).Seconds())
	}
	total := len(m.cells) * len(ts) * o.rounds
	fmt.Printf("\n%d runs of %v: about %.0f minutes\n", total, o.duration, (time.Duration(total) * (o.duration + 700*time.Millisecond)).Minutes())
	for round := 0; round < o.rounds; round++ {
		for ci, c := range m.cells {
			order := rotate(ts, ci+round)
			load := loadAvg()
			for _, tg := range order {
				if !tg.runs(c) {
					continue
				}
				r, err := runPgbench(ctx, t, cl, tg, c, o.duration, o)
				if err != nil {
					return nil, err
				}
				m.runs[ci][tg.name] = append(m.runs[ci][tg.name], r)
				if err := checkAlive(ts); err != nil {
					return nil, err
				}
			}
			printCell(c, round, order, m.runs[ci], cl, load, o)
		}
	}
	return m, nil
}

// checkAlive fails when a proxy process has exited: every later run
// through it would only fail.
func checkAlive(ts []*target) error {
	for _, tg := range ts {
		if tg.proc != nil && tg.proc.exited() {
			return fmt.Errorf("%s exited (%v); its log %s ends:\n%s", tg.name, tg.proc.err, tg.proc.log, tg.proc.logTail(30))
		}
	}
	return nil
}

func rotate(ts []*target, n int) []*target {
	n %= len(ts)
	return append(append([]*target(nil), ts[n:]...), ts[:n]...)
}

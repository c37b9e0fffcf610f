// Command bench-failover measures failover, rejoin and switchover on a
// loopback cluster of real agents and PostgreSQL servers (task bench:failover).
//
// A writer inserts a numbered row every 20 ms into whichever node answers
// GET /primary, recording each acknowledgement. Each trial kills the primary,
// alternately its postgres only (kill -9 of the postmaster) and its whole
// host (agent and postgres; the agent is restarted 10 s later), and records:
// seconds from the kill to the first acknowledged insert on the new primary,
// acknowledged rows missing afterwards, seconds until the old primary streams
// again, and whether it rejoined by rewind or clone. Switchover trials record
// the longest gap between acknowledged inserts.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/internal/itest"
	"github.com/pgha/pgha/internal/localcluster"
	"github.com/pgha/pgha/postgres"
)

type trial struct {
	n        int
	kind     string
	old, new string
	failover time.Duration
	rejoin   time.Duration
	by       string
	missing  int
	errors   int
}

func main() {
	trials := flag.Int("trials", 10, "failover trials (alternating postgres kill and host loss)")
	switchovers := flag.Int("switchovers", 4, "switchover trials")
	hostDown := flag.Duration("host-down", 10*time.Second, "how long a lost host stays down")
	keep := flag.Bool("keep", false, "keep the cluster's directory (agent and PostgreSQL logs) and print its path")
	hang := flag.Bool("hanging-callbacks", false, "give every agent callbacks that never return (the failover must not wait for them)")
	flag.Parse()
	if err := run(*trials, *switchovers, *hostDown, *keep, *hang); err != nil {
		fmt.Fprintln(os.Stderr, "bench-failover:", err)
		os.Exit(1)
	}
}

func run(trials, switchovers int, hostDown time.Duration, keep, hang bool) error {
	bin, cleanup, err := itest.BuildAgent()
	if err != nil {
		return err
	}
	defer cleanup()
	pgBin := postgres.FindBinDir()
	if pgBin == "" {
		return fmt.Errorf("PostgreSQL server binaries not found")
	}
	dir, err := os.MkdirTemp("", "pgha-bench-")
	if err != nil {
		return err
	}
	if keep {
		defer fmt.Printf("kept %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	var api, raft, pg []int
	for i := 0; i < 9; i++ {
		p, err := itest.FreePort()
		if err != nil {
			return err
		}
		switch i % 3 {
		case 0:
			api = append(api, p)
		case 1:
			raft = append(raft, p)
		default:
			pg = append(pg, p)
		}
	}
	opts := localcluster.Options{Dir: dir, Binary: bin, BinDir: pgBin, Name: "bench", APIPorts: api, RaftPorts: raft, PGPorts: pg}
	if hang {
		script, err := hangingScript()
		if err != nil {
			return err
		}
		defer os.Remove(script)
		defer killHanging(script + ".pids")
		opts.ExtraConfig = func(string) string {
			return fmt.Sprintf("callbacks:\n  on_start: %[1]s\n  on_stop: %[1]s\n  on_restart: %[1]s\n  on_reload: %[1]s\n  on_role_change: %[1]s\n  timeout: 30m\n", script)
		}
		fmt.Println("every callback hangs (sleep 1000)")
	}
	lc, err := localcluster.New(opts)
	if err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_ = lc.StopAll(ctx)
	}()
	if err := lc.StartAll(); err != nil {
		return err
	}
	if _, err := itest.AwaitHealthy(context.Background(), lc, 3, 2*time.Minute); err != nil {
		return err
	}
	fmt.Printf("cluster ready; the agents' default settings (loop_interval %s, health_interval %s, fence_timeout %s, raft heartbeat/election %s/%s, synchronous mode)\n",
		agent.DefaultLoopInterval, agent.DefaultHealthInterval, agent.DefaultFenceTimeout, agent.DefaultHeartbeatTimeout, agent.DefaultElectionTimeout)
	w, err := itest.StartWriter(context.Background(), itest.LoopbackTargets(lc), itest.WriterOptions{
		Table: "bench_acks", Conns: 1, Interval: 20 * time.Millisecond, Timeout: 2 * time.Second,
	})
	if err != nil {
		return err
	}
	defer w.Stop()
	time.Sleep(time.Second) // a second of steady writes before the first fault

	var results []trial
	for i := 0; i < trials; i++ {
		kind := "postgres kill"
		if i%2 == 1 {
			kind = "host loss"
		}
		t, err := failoverTrial(lc, w, i+1, kind, hostDown, keep)
		if err != nil {
			return fmt.Errorf("trial %d (%s): %w", i+1, kind, err)
		}
		results = append(results, t)
		fmt.Printf("trial %2d %-13s %s -> %s  failover %5.2fs  rejoin %5.2fs by %-6s  missing %d\n", t.n, t.kind, t.old, t.new, t.failover.Seconds(), t.rejoin.Seconds(), t.by, t.missing)
	}
	var gaps []time.Duration
	for i := 0; i < switchovers; i++ {
		gap, err := switchoverTrial(lc, w, bin)
		if err != nil {
			return fmt.Errorf("switchover %d: %w", i+1, err)
		}
		gaps = append(gaps, gap)
		fmt.Printf("switchover %d: writes unavailable %.2fs\n", i+1, gap.Seconds())
	}
	report(results, gaps, w)
	return nil
}

// failoverTrial kills the primary's postgres or its host; with keep it
// prints when, to find the fault in the kept agents' logs.
func failoverTrial(lc *localcluster.Cluster, w *itest.Writer, n int, kind string, hostDown time.Duration, keep bool) (trial, error) {
	v, err := itest.AwaitHealthy(context.Background(), lc, 3, 2*time.Minute)
	if err != nil {
		return trial{}, err
	}
	old := itest.Primary(v)
	node := lc.Node(old)
	errorsBefore, _ := w.Errors()
	killed := time.Now()
	if keep {
		fmt.Printf("trial %2d: %s of %s at %s\n", n, kind, old, killed.UTC().Format("15:04:05.000"))
	}
	switch kind {
	case "postgres kill":
		if err := lc.KillPostgres(node); err != nil {
			return trial{}, err
		}
	default:
		lc.KillHost(node)
	}
	t := trial{n: n, kind: kind, old: old}
	ack, err := waitAck(w, killed, old, 60*time.Second)
	if err != nil {
		return t, err
	}
	t.failover, t.new = ack.At.Sub(killed), ack.Host
	rejoinFrom := killed
	if kind == "host loss" {
		time.Sleep(time.Until(killed.Add(hostDown)))
		rejoinFrom = time.Now()
		if err := lc.Start(node); err != nil {
			return t, err
		}
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		v, err := lc.View(context.Background())
		if err == nil {
			for _, m := range v.Members {
				if m.Name == old && m.State == "streaming" {
					t.rejoin, t.by = time.Since(rejoinFrom), m.RejoinedBy
				}
			}
		}
		if t.by != "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if t.by == "" {
		return t, fmt.Errorf("%s did not stream again within 2 minutes", old)
	}
	v, err = itest.AwaitHealthy(context.Background(), lc, 3, 2*time.Minute)
	if err != nil {
		return t, err
	}
	missing, err := w.Missing(context.Background(), itest.Primary(v))
	if err != nil {
		return t, err
	}
	errorsAfter, _ := w.Errors()
	t.missing, t.errors = len(missing), errorsAfter-errorsBefore
	return t, nil
}

func switchoverTrial(lc *localcluster.Cluster, w *itest.Writer, bin string) (time.Duration, error) {
	v, err := itest.AwaitHealthy(context.Background(), lc, 3, 2*time.Minute)
	if err != nil {
		return 0, err
	}
	var cand string
	for _, m := range v.Members {
		if m.Role != "leader" {
			cand = m.Name
		}
	}
	start := time.Now()
	var apis []string
	for _, n := range lc.Nodes() {
		apis = append(apis, n.APIURL)
	}
	// Right after a failover trial the leader may not yet see the new
	// primary as healthy and refuses; that is not what is measured here.
	for attempt := 1; ; attempt++ {
		out, err := exec.Command(bin, "switchover", "--candidate", cand, "--api", strings.Join(apis, ","), "--token-file", lc.TokenFile()).CombinedOutput()
		if err == nil {
			break
		}
		if attempt == 5 {
			return 0, fmt.Errorf("%v: %s", err, out)
		}
		time.Sleep(time.Second)
		start = time.Now()
	}
	if _, err := waitAck(w, time.Now(), itest.Primary(v), 30*time.Second); err != nil {
		return 0, err
	}
	// The longest gap between acknowledgements around the switchover.
	var gap time.Duration
	var prev time.Time
	for _, a := range w.Acks() {
		if a.At.Before(start.Add(-time.Second)) {
			prev = a.At
			continue
		}
		if !prev.IsZero() && a.At.Sub(prev) > gap {
			gap = a.At.Sub(prev)
		}
		prev = a.At
	}
	return gap, nil
}

func report(results []trial, gaps []time.Duration, w *itest.Writer) {
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "trial\tkind\told -> new\tfailover (s)\tlost acked rows\trejoin (s)\trejoined by\tclient errors")
	for _, t := range results {
		fmt.Fprintf(tw, "%d\t%s\t%s -> %s\t%.2f\t%d\t%.2f\t%s\t%d\n", t.n, t.kind, t.old, t.new, t.failover.Seconds(), t.missing, t.rejoin.Seconds(), t.by, t.errors)
	}
	tw.Flush()
	fmt.Println()
	for _, kind := range []string{"postgres kill", "host loss"} {
		var f, r []time.Duration
		lost := 0
		for _, t := range results {
			if t.kind == kind {
				f, r, lost = append(f, t.failover), append(r, t.rejoin), lost+t.missing
			}
		}
		if len(f) == 0 {
			continue
		}
		fmt.Printf("%-13s failover p50 %.2fs p99 %.2fs | rejoin p50 %.2fs p99 %.2fs | acknowledged rows lost %d\n", kind, pct(f, 50), pct(f, 99), pct(r, 50), pct(r, 99), lost)
	}
	if len(gaps) > 0 {
		fmt.Printf("switchover    writes unavailable p50 %.2fs max %.2fs\n", pct(gaps, 50), pct(gaps, 100))
	}
	errs, _ := w.Errors()
	fmt.Printf("writer: %d acknowledged inserts, %d failed attempts\n", len(w.Acks()), errs)
}

// pct is the p-th percentile (nearest rank).
func pct(ds []time.Duration, p int) float64 {
	s := append([]time.Duration{}, ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (p*len(s)+99)/100 - 1
	if i < 0 {
		i = 0
	}
	if i >= len(s) {
		i = len(s) - 1
	}
	return s[i].Seconds()
}

func waitAck(w *itest.Writer, after time.Time, notOn string, timeout time.Duration) (itest.Ack, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, a := range w.Acks() {
			if a.At.After(after) && a.Host != notOn {
				return a, nil
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	return itest.Ack{}, fmt.Errorf("no write acknowledged by a new primary within %s", timeout)
}

// hangingScript writes a callback that never returns, executable by the
// agents' user.
func hangingScript() (string, error) {
	f, err := os.CreateTemp("", "pgha-hang-*.sh")
	if err != nil {
		return "", err
	}
	if _, err := f.WriteString("#!/bin/sh\necho $$ >> " + f.Name() + ".pids\nexec sleep 1000\n"); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return f.Name(), os.Chmod(f.Name(), 0o755)
}

// killHanging ends the callbacks still running: an agent killed with its
// host in this harness leaves them behind (their own process group).
func killHanging(pidFile string) {
	b, _ := os.ReadFile(pidFile)
	for _, line := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(line); err == nil && pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	_ = os.Remove(pidFile)
}

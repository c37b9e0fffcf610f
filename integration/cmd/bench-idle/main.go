// Command bench-idle measures what an agent costs when nothing happens
// (task bench:idle): a loopback cluster of three agents, each its own
// process with its own PostgreSQL, left alone after it is healthy; then,
// per agent over a window, the CPU it used (user + system, its own and its
// reaped children's, from /proc/PID/stat) as a percentage of one core, and
// its context switches per second (every thread's, from
// /proc/PID/task/*/status): how often it wakes, which is what an idle
// process's CPU follows.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/internal/itest"
	"github.com/pgha/pgha/internal/localcluster"
	"github.com/pgha/pgha/postgres"
)

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on every
// Linux architecture Go runs on.
const clockTicks = 100

func main() {
	window := flag.Duration("window", 30*time.Second, "how long each measurement lasts")
	settle := flag.Duration("settle", 15*time.Second, "how long the healthy cluster is left alone before measuring")
	rounds := flag.Int("rounds", 2, "measurements, one after the other")
	flag.Parse()
	if err := run(*window, *settle, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "bench-idle:", err)
		os.Exit(1)
	}
}

func run(window, settle time.Duration, rounds int) error {
	bin, cleanup, err := itest.BuildAgent()
	if err != nil {
		return err
	}
	defer cleanup()
	pgBin := postgres.FindBinDir()
	if pgBin == "" {
		return fmt.Errorf("PostgreSQL server binaries not found")
	}
	dir, err := os.MkdirTemp("", "pgha-idle-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var ports [9]int
	for i := range ports {
		if ports[i], err = itest.FreePort(); err != nil {
			return err
		}
	}
	lc, err := localcluster.New(localcluster.Options{Dir: dir, Binary: bin, BinDir: pgBin, Name: "idle",
		APIPorts: ports[0:3], RaftPorts: ports[3:6], PGPorts: ports[6:9]})
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
	fmt.Printf("cluster healthy; idle for %s, then %d windows of %s (health_interval %s, loop_interval %s, fence_timeout %s)\n",
		settle, rounds, window, agent.DefaultHealthInterval, agent.DefaultLoopInterval, agent.DefaultFenceTimeout)
	time.Sleep(settle) // the measurement's subject: the cluster left alone
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "round\tnode\trole\tCPU (% of a core)\tcontext switches/s")
	for r := 1; r <= rounds; r++ {
		before := map[string]sample{}
		for _, n := range lc.Nodes() {
			if before[n.Name], err = measure(n.AgentPID()); err != nil {
				return fmt.Errorf("%s: %w", n.Name, err)
			}
		}
		start := time.Now()
		time.Sleep(window)
		took := time.Since(start).Seconds()
		v, err := lc.View(context.Background())
		if err != nil {
			return err
		}
		for _, n := range lc.Nodes() {
			after, err := measure(n.AgentPID())
			if err != nil {
				return fmt.Errorf("%s: %w", n.Name, err)
			}
			cpu := float64(after.ticks-before[n.Name].ticks) / clockTicks / took * 100
			cs := float64(after.switches-before[n.Name].switches) / took
			fmt.Fprintf(tw, "%d\t%s\t%s\t%.2f\t%.0f\n", r, n.Name, roleOf(v, n.Name), cpu, cs)
		}
	}
	return tw.Flush()
}

func roleOf(v agent.ClusterView, name string) string {
	role := "?"
	for _, m := range v.Members {
		if m.Name == name {
			role = m.Role
		}
	}
	if v.RaftLeader == name {
		role += ", Raft leader"
	}
	return role
}

type sample struct{ ticks, switches int64 }

// measure reads the process's CPU ticks (utime, stime, cutime, cstime) and
// its threads' voluntary and involuntary context switches.
func measure(pid int) (sample, error) {
	if pid == 0 {
		return sample{}, fmt.Errorf("agent not running")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return sample{}, err
	}
	// The command name, in parentheses, may hold spaces: fields count
	// from after its closing parenthesis (field 3 is the first there).
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	var s sample
	for _, i := range []int{14, 15, 16, 17} {
		v, err := strconv.ParseInt(f[i-3], 10, 64)
		if err != nil {
			return sample{}, fmt.Errorf("/proc/%d/stat field %d: %w", pid, i, err)
		}
		s.ticks += v
	}
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil {
		return sample{}, err
	}
	for _, t := range tasks {
		fh, err := os.Open(t)
		if err != nil {
			continue // a thread that ended meanwhile
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			if ok && (k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches") {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				s.switches += n
			}
		}
		fh.Close()
	}
	return s, nil
}

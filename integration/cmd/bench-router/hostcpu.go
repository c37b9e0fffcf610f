package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pgha/pgha/postgres"
)

// Hosts with their own CPU on one machine (-host-cpu): each PostgreSQL
// server, its postmaster and every process it has forked or will fork, goes
// into a CPU-quota cgroup of its own, as if each ran on a small VM; pgbench
// and the proxies stay outside the quotas. Without it the standbys bring
// backends but no cores, and spreading reads can only cost. cgroup v2
// (cpu.max) when the unified hierarchy has the cpu controller, else v1
// (cpu.cfs_quota_us), whichever the machine mounts.

// cpuGroup is one server's cgroup.
type cpuGroup struct {
	dir   string
	procs string // the file a PID is written to, to move its process
}

// confineServers puts node i of cl in a cgroup of quotas[i] cores, with
// the scheduler's period. Every process the server has now is moved; the
// ones it forks later are born inside. td removes the groups once the
// servers have stopped.
func confineServers(cl *cluster, quotas []float64, period time.Duration, td *teardown) error {
	for i, n := range cl.nodes {
		g, err := newCPUGroup("pgha-bench-"+n.name, quotas[i], period)
		if err != nil {
			return err
		}
		// Teardown runs last first: this runs before the servers stop,
		// so remove moves their processes back to the root group.
		td.add("remove cgroup "+g.dir, g.remove)
		pm, err := n.inst.PostmasterPID()
		if err != nil || pm == 0 {
			return fmt.Errorf("%s: no postmaster to confine (%v)", n.name, err)
		}
		for _, pid := range append([]int{pm}, postgres.Descendants(pm)...) {
			if err := os.WriteFile(g.procs, []byte(strconv.Itoa(pid)), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("move %s's process %d into %s: %w", n.name, pid, g.dir, err)
			}
		}
	}
	return nil
}

// newCPUGroup makes (or reuses) the cgroup name with a quota of cores.
func newCPUGroup(name string, cores float64, period time.Duration) (*cpuGroup, error) {
	quota := int64(cores * float64(period/time.Microsecond))
	if quota < 1000 {
		return nil, fmt.Errorf("-host-cpu %.3f with period %v is a quota of %d µs: the kernel wants at least 1000", cores, period, quota)
	}
	periodUs := int64(period / time.Microsecond)
	if ctl, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers"); err == nil && strings.Contains(" "+string(ctl)+" ", " cpu ") {
		dir := filepath.Join("/sys/fs/cgroup", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, "cpu.max"), []byte(fmt.Sprintf("%d %d", quota, periodUs)), 0o644); err != nil {
			return nil, fmt.Errorf("cgroup v2 %s: cpu.max: %w", dir, err)
		}
		return &cpuGroup{dir: dir, procs: filepath.Join(dir, "cgroup.procs")}, nil
	}
	root := "/sys/fs/cgroup/cpu"
	if _, err := os.Stat(filepath.Join(root, "cpu.cfs_quota_us")); err != nil {
		return nil, errors.New("-host-cpu: no cgroup cpu controller mounted (neither v2's cpu.max nor v1's /sys/fs/cgroup/cpu); run as root on a machine with cgroups")
	}
	dir := filepath.Join(root, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// The period first: a quota is checked against the current period.
	for _, f := range []struct {
		file  string
		value int64
	}{{"cpu.cfs_period_us", periodUs}, {"cpu.cfs_quota_us", quota}} {
		if err := os.WriteFile(filepath.Join(dir, f.file), []byte(strconv.FormatInt(f.value, 10)), 0o644); err != nil {
			return nil, fmt.Errorf("cgroup v1 %s: %s: %w", dir, f.file, err)
		}
	}
	return &cpuGroup{dir: dir, procs: filepath.Join(dir, "cgroup.procs")}, nil
}

// remove moves what is left in the group to the root group and removes it.
func (g *cpuGroup) remove() error {
	rootProcs := filepath.Join(filepath.Dir(g.dir), "cgroup.procs")
	if b, err := os.ReadFile(g.procs); err == nil {
		for _, f := range strings.Fields(string(b)) {
			_ = os.WriteFile(rootProcs, []byte(f), 0o644)
		}
	}
	if err := os.Remove(g.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove cgroup %s: %w", g.dir, err)
	}
	return nil
}

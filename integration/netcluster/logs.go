package netcluster

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
)

// LogTails returns the last agentLines of every agent's log and the last
// pgLines of every PostgreSQL server log, for a failure report.
func (c *Cluster) LogTails(agentLines, pgLines int) string {
	var b strings.Builder
	for _, h := range c.Hosts {
		raw, _ := os.ReadFile(h.Log)
		fmt.Fprintf(&b, "---- %s agent log %s (tail) ----\n%s\n", h.Name, h.Log, Tail(string(raw), agentLines))
		raw, _ = os.ReadFile(h.PGLog)
		fmt.Fprintf(&b, "---- %s PostgreSQL log %s (tail) ----\n%s\n", h.Name, h.PGLog, Tail(string(raw), pgLines))
	}
	return b.String()
}

// GrepLog returns the lines of h's agent log containing every one of words.
func (c *Cluster) GrepLog(h *Host, words ...string) []string {
	raw, _ := os.ReadFile(h.Log)
	var out []string
	for _, l := range strings.Split(string(raw), "\n") {
		ok := true
		for _, w := range words {
			if !strings.Contains(l, w) {
				ok = false
				break
			}
		}
		if ok && l != "" {
			out = append(out, l)
		}
	}
	return out
}

// Tail returns the last n lines of s.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Clusters not yet closed, for CloseOnSignal.
var live struct {
	sync.Mutex
	clusters map[*Cluster]struct{}
}

func register(c *Cluster) (unregister func()) {
	live.Lock()
	defer live.Unlock()
	if live.clusters == nil {
		live.clusters = map[*Cluster]struct{}{}
	}
	live.clusters[c] = struct{}{}
	return func() {
		live.Lock()
		defer live.Unlock()
		delete(live.clusters, c)
	}
}

// CloseOnSignal makes SIGINT and SIGTERM close every cluster of this process
// (agents, PostgreSQL, namespaces) before it exits with status 130, so an
// interrupted test run or campaign leaves nothing behind. Call it once from
// TestMain or main; stop undoes it.
func CloseOnSignal() (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-ch:
			fmt.Fprintf(os.Stderr, "netcluster: %v: closing the clusters\n", sig)
			live.Lock()
			var cs []*Cluster
			for c := range live.clusters {
				cs = append(cs, c)
			}
			live.Unlock()
			for _, c := range cs {
				if err := c.Close(); err != nil {
					fmt.Fprintf(os.Stderr, "netcluster: close: %v\n", err)
				}
			}
			os.Exit(130)
		case <-done:
		}
	}()
	return func() {
		signal.Stop(ch)
		close(done)
	}
}

// FenceDelays returns, for every freeze of a primary by its agent's fence
// (agent/fence.go), how long after the end of its lease the server was
// frozen, as the agent measured it (after_lease_end in its log). The
// leader promotes no earlier than 250 ms after the lease's end; a delay
// beyond that is a fence that relied on the leader being slower still,
// unless the agent itself could not run (frozen, stalled), when the leader
// kept the primary.
func (c *Cluster) FenceDelays() map[string][]time.Duration {
	out := map[string][]time.Duration{}
	for _, h := range c.Hosts {
		for _, l := range c.GrepLog(h, "PostgreSQL frozen (SIGSTOP)", "after_lease_end=") {
			v, _, _ := strings.Cut(l[strings.Index(l, "after_lease_end=")+len("after_lease_end="):], " ")
			if d, err := time.ParseDuration(v); err == nil {
				out[h.Name] = append(out[h.Name], d)
			}
		}
	}
	return out
}

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

// FenceDelay is one freeze of a primary by its agent's fence
// (agent/fence.go), as the agent measured it: how long after the end of
// its lease the server was frozen, and how long the fence loop had not run
// before the pass that froze it (a gap longer than its 25 ms tick: the
// agent itself stood still, frozen or starved).
type FenceDelay struct {
	AfterLeaseEnd, LoopGap time.Duration
}

// FenceDelays returns every host's freezes, oldest first. The leader
// promotes no earlier than 250 ms after the lease's end; a freeze later
// than that relied on the leader being slower still, unless the agent
// could not run (the leader then kept that primary: its PostgreSQL
// answered).
func (c *Cluster) FenceDelays() map[string][]FenceDelay {
	out := map[string][]FenceDelay{}
	for _, h := range c.Hosts {
		for _, l := range c.GrepLog(h, "PostgreSQL frozen (SIGSTOP)", "after_lease_end=") {
			var d FenceDelay
			var err error
			if d.AfterLeaseEnd, err = time.ParseDuration(logField(l, "after_lease_end")); err != nil {
				continue
			}
			d.LoopGap, _ = time.ParseDuration(logField(l, "loop_gap"))
			out[h.Name] = append(out[h.Name], d)
		}
	}
	return out
}

// logField is the value of key=value in an agent's log line ("" if none).
func logField(line, key string) string {
	i := strings.Index(line, " "+key+"=")
	if i < 0 {
		return ""
	}
	v, _, _ := strings.Cut(line[i+len(key)+2:], " ")
	return v
}

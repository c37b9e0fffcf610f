package netcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Processes that hang instead of dying: SIGSTOP and SIGCONT. A stopped
// process keeps its sockets, its locks and (for an agent) the VIP, and
// answers nothing, which is what a hung process, a swapping machine or a
// stalled disk look like from outside; "Dead means gone" (DESIGN) must not
// take it for dead.

// FreezeAgent stops the host's agent process (SIGSTOP): it holds whatever
// it held (the VIP, its Raft term) and does nothing, fencing included.
func (c *Cluster) FreezeAgent(h *Host) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h.cmd == nil || exited(h.done) {
		return fmt.Errorf("%s: no agent running", h.Name)
	}
	if err := syscall.Kill(h.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
		return err
	}
	h.agentFrozen = true
	return nil
}

// AgentFrozen reports whether FreezeAgent stopped h's agent and it has not
// been resumed.
func (c *Cluster) AgentFrozen(h *Host) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return h.agentFrozen
}

// WakeGrace is how long after ThawAgent a VIP still held by the woken
// agent is counted with the frozen ones: its first act on waking is to drop
// it, but SIGCONT does not run it at once (0.1 s measured). Held longer, it
// is a second holder.
const WakeGrace = 500 * time.Millisecond

// AgentCannotServe tells whether h's agent can neither serve through a VIP
// left on its host nor drop it: frozen, or resumed or started less than
// WakeGrace ago (dropping a stale VIP is its first act), or not running at
// all (killed: the address stays on the interface, with no router behind
// it, until the agent is started again). The Raft leader takes such a VIP
// over with gratuitous ARP.
func (c *Cluster) AgentCannotServe(h *Host) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return h.agentFrozen || time.Since(h.thawedAt) < WakeGrace || time.Since(h.startedAt) < WakeGrace ||
		h.cmd == nil || exited(h.done)
}

// ThawAgent resumes an agent FreezeAgent stopped.
func (c *Cluster) ThawAgent(h *Host) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h.agentFrozen {
		h.thawedAt = time.Now()
	}
	h.agentFrozen = false
	if h.cmd == nil || exited(h.done) {
		return nil
	}
	return syscall.Kill(h.cmd.Process.Pid, syscall.SIGCONT)
}

// FreezePostgres stops the host's whole PostgreSQL (SIGSTOP to the
// postmaster, then to every process it started): the server hangs, with
// its connections open, as under a stalled disk. Stopping the postmaster
// alone would leave its backends committing and the agent's cached session
// answering, which is no fault at all. The pids are kept for ThawPostgres.
func (c *Cluster) FreezePostgres(h *Host) error {
	pid := postmasterPID(h)
	if pid == 0 || !alive(pid) {
		return fmt.Errorf("%s: no running postmaster", h.Name)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// The postmaster first, so that it forks nothing new meanwhile.
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return fmt.Errorf("%s: stop the postmaster: %w", h.Name, err)
	}
	h.frozen = append(h.frozen, pid)
	for _, child := range childrenOf(pid) {
		if syscall.Kill(child, syscall.SIGSTOP) == nil {
			h.frozen = append(h.frozen, child)
		}
	}
	return nil
}

// ThawPostgres resumes what FreezePostgres (or StallAgentSessions) stopped,
// children first.
func (c *Cluster) ThawPostgres(h *Host) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return thaw(h)
}

// thaw resumes h.frozen; the caller holds c.mu.
func thaw(h *Host) error {
	var errs []error
	for i := len(h.frozen) - 1; i >= 0; i-- {
		if err := syscall.Kill(h.frozen[i], syscall.SIGCONT); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, err)
		}
	}
	h.frozen = nil
	return errors.Join(errs...)
}

// childrenOf lists the processes whose parent is pid (from /proc).
func childrenOf(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// "pid (comm) state ppid ...": comm may hold spaces, so split
		// after its closing parenthesis.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, p)
		}
	}
	return out
}

// AgentApplicationName is the application_name of the agent's own sessions
// (postgres/conn.go): its status queries, its IDENTIFY_SYSTEM.
const AgentApplicationName = "pgha-agent"

// StallAgentSessions makes the agent's sessions with its PostgreSQL hang:
// until the returned stop is called, every backend whose application_name
// is pgha-agent is stopped (SIGSTOP) as soon as it appears (checked every
// 50ms), so the agent's status queries time out while the server itself
// serves everyone else. The agent drops a session that timed out and opens
// a new one, which is stopped in turn. stop resumes every stopped backend
// (they then find their client gone and exit) and reports what it did.
func (c *Cluster) StallAgentSessions(h *Host) (stop func() (stalled int, err error)) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	stalled := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		var conn *pgx.Conn
		defer func() {
			if conn != nil {
				conn.Close(context.Background())
			}
		}()
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if conn == nil {
				conn, _ = c.SocketConn(ctx, h, time.Second)
				if conn == nil {
					continue
				}
			}
			qctx, qcancel := context.WithTimeout(ctx, time.Second)
			rows, err := conn.Query(qctx, "SELECT pid FROM pg_stat_activity WHERE application_name = $1", AgentApplicationName)
			var pids []int32
			if err == nil {
				pids, err = pgx.CollectRows(rows, pgx.RowTo[int32])
			}
			qcancel()
			if err != nil {
				conn.Close(context.Background())
				conn = nil
				continue
			}
			c.mu.Lock()
			for _, pid := range pids {
				if !slices.Contains(h.frozen, int(pid)) && syscall.Kill(int(pid), syscall.SIGSTOP) == nil {
					h.frozen = append(h.frozen, int(pid))
					stalled++
				}
			}
			c.mu.Unlock()
		}
	}()
	return func() (int, error) {
		cancel()
		wg.Wait()
		c.mu.Lock()
		defer c.mu.Unlock()
		return stalled, thaw(h)
	}
}

package netcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// StartAll starts every host's agent that is not running.
func (c *Cluster) StartAll() error {
	var errs []error
	for _, h := range c.Hosts {
		errs = append(errs, c.StartHost(h))
	}
	return errors.Join(errs...)
}

// StartHost brings a host back: after KillHost it "reboots" the machine
// (its link is healed, without the VIP, as after a real reboot); then it starts the agent inside the host's namespace if
// it is not running. The agent starts its PostgreSQL itself.
func (c *Cluster) StartHost(h *Host) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h.down {
		if err := c.flushVIP(h); err != nil {
			return err
		}
		if err := c.Topo.Heal(h.Node); err != nil {
			return err
		}
		h.down = false
	}
	return c.startAgentLocked(h)
}

// startAgentLocked runs `ip netns exec <ns> pgha-agent run --config ...` as
// root. ip execs the agent, so the process is the agent itself. It gets its
// own process group, and SIGTERM if this process dies first, so it stops
// its PostgreSQL and leaves nothing running.
func (c *Cluster) startAgentLocked(h *Host) error {
	if h.cmd != nil && !exited(h.done) {
		return nil
	}
	logf, err := os.OpenFile(h.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "==== netcluster: starting the agent at %s ====\n", time.Now().Format(time.RFC3339Nano))
	cmd := h.Node.Command(c.binary, "run", "--config", h.Config)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = h.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start the agent of %s: %w", h.Name, err)
	}
	done := make(chan struct{})
	h.cmd, h.done, h.startedAt = cmd, done, time.Now()
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	return nil
}

// AgentRunning reports whether the host's agent process is alive.
func (c *Cluster) AgentRunning(h *Host) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return h.cmd != nil && !exited(h.done)
}

// Down reports whether KillHost took the host down and StartHost has not
// brought it back yet.
func (c *Cluster) Down(h *Host) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return h.down
}

// StopAgent asks the agent to stop (SIGTERM: it drops the VIP and stops its
// PostgreSQL) and waits; past ctx it kills it.
func (c *Cluster) StopAgent(ctx context.Context, h *Host) error {
	c.mu.Lock()
	cmd, done := h.cmd, h.done
	c.mu.Unlock()
	if cmd == nil || exited(done) {
		return nil
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return fmt.Errorf("the agent of %s did not stop in time: killed", h.Name)
	}
}

// KillAgent kills the agent process only (kill -9): its PostgreSQL, and the
// VIP if it held it, stay, as when the agent crashes on a live machine.
func (c *Cluster) KillAgent(h *Host) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h.cmd != nil && !exited(h.done) {
		_ = h.cmd.Process.Kill()
		<-h.done
	}
}

// KillPostgres kills the host's postmaster (kill -9), as a crash would; its
// backends notice on their own.
func (c *Cluster) KillPostgres(h *Host) error {
	pid := postmasterPID(h)
	if pid == 0 || !alive(pid) {
		return fmt.Errorf("%s: no running postmaster", h.Name)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill the postmaster of %s: %w", h.Name, err)
	}
	return nil
}

// PostmasterPID is the pid in the host's postmaster.pid if that process
// lives, else 0.
func (c *Cluster) PostmasterPID(h *Host) int {
	if pid := postmasterPID(h); pid != 0 && alive(pid) {
		return pid
	}
	return 0
}

// KillHost loses the machine: the host leaves the network at once (a
// powered-off machine answers nothing, not even ARP for a VIP its dead
// agent left configured, and holds no address: the VIP is removed), then the agent's process group, the postmaster's
// (pg_ctl makes it a session leader, so no backend lives on to acknowledge
// a write) and any other process in the namespace get kill -9. StartHost
// brings it back.
func (c *Cluster) KillHost(h *Host) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.Topo.Cut(h.Node); err != nil {
		return err
	}
	h.down = true
	pid := postmasterPID(h)
	if h.cmd != nil && !exited(h.done) {
		_ = syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
	}
	if pid != 0 && alive(pid) {
		killGroupOrPid(pid)
	}
	// Helpers the agent was running (pg_rewind, pg_basebackup, pg_ctl) may
	// have a group of their own.
	if err := killInside(h.Node.NS); err != nil {
		return err
	}
	if h.done != nil {
		<-h.done
	}
	// A machine that is off holds no address: the VIP its dead agent left
	// on eth0 is gone with it.
	return c.flushVIP(h)
}

// Cut isolates the host from every other namespace (its bridge port is
// disabled: a full partition of one host, both ways, ARP included).
func (c *Cluster) Cut(h *Host) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Topo.Cut(h.Node)
}

// Heal undoes Cut. A host that KillHost took down stays down until
// StartHost.
func (c *Cluster) Heal(h *Host) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h.down {
		return nil
	}
	return c.Topo.Heal(h.Node)
}

// HealAll heals every host that is not down, every link between two
// hosts and every slow link.
func (c *Cluster) HealAll() error {
	var errs []error
	for i, h := range c.Hosts {
		errs = append(errs, c.Heal(h), c.HealSlowLink(h))
		for _, o := range c.Hosts[i+1:] {
			errs = append(errs, c.HealLink(h, o))
		}
	}
	return errors.Join(errs...)
}

// killInside kills every process in namespace ns by pid, as netns.Close
// does (ip netns pids).
func killInside(ns string) error {
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		return fmt.Errorf("ip netns pids %s: %w", ns, err)
	}
	for _, f := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(f)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("kill %d in %s: %w", pid, ns, err)
		}
	}
	return nil
}

// killGroupOrPid kills pid's process group if pid leads it, else pid.
func killGroupOrPid(pid int) {
	if pgid, err := syscall.Getpgid(pid); err == nil && pgid == pid {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		return
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

func postmasterPID(h *Host) int {
	b, err := os.ReadFile(filepath.Join(h.PGData, "postmaster.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	return pid
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

func exited(done chan struct{}) bool {
	if done == nil {
		return true
	}
	select {
	case <-done:
		return true
	default:
		return false
	}
}

package postgres

import (
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

// A frozen server: every process of it stopped by SIGSTOP.
//
// The fence's first step (agent/fence.go). A stopped backend makes no
// progress, so nothing it runs can be acknowledged; unlike a shutdown it
// keeps every client connection, every transaction and the shared buffers,
// so SIGCONT resumes the server where it stopped, in microseconds, when the
// lease is renewed after all (a Raft election that took longer than the
// lease). A server that is not to resume is killed with SIGKILL: a stopped
// process cannot act on a shutdown signal, and its children would stay
// stopped beside a dead postmaster, holding its shared memory.

// Freeze stops the postmaster pid (first, so that it forks nothing more),
// then every process it started, and waits until the kernel shows them all
// stopped. Freezing a frozen server again is harmless: it stops whatever
// something else resumed.
//
// A freeze ends by itself: unless Thaw or a kill comes first, a reaper
// process started here kills every process that is still stopped after
// killAfter. It runs in its own session, so it outlives the agent: a
// frozen server accepts TCP connections from its kernel, and the leader's
// direct check takes that for a live server, so a server left frozen by an
// agent that died and cannot restart would never be failed over.
func (i *Instance) Freeze(pid int, killAfter time.Duration) error {
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return fmt.Errorf("freeze postmaster %d: %w", pid, err)
	}
	procs := append([]int{pid}, Descendants(pid)...)
	for _, p := range procs[1:] {
		_ = syscall.Kill(p, syscall.SIGSTOP) // one that exited meanwhile is fine
	}
	if err := i.startReaper(procs, killAfter); err != nil {
		return fmt.Errorf("freeze postmaster %d: %w", pid, err)
	}
	// kill(2) only queues the signal: a process running on another CPU
	// stops at its next entry to the kernel, within a scheduler tick.
	deadline := time.Now().Add(100 * time.Millisecond)
	for _, p := range procs {
		for !stoppedOrGone(p) {
			if time.Now().After(deadline) {
				return fmt.Errorf("freeze postmaster %d: process %d is not stopped after 100ms", pid, p)
			}
			time.Sleep(time.Millisecond)
		}
	}
	return nil
}

// Thaw resumes a frozen server, its children first, once its reaper is
// gone (if the reaper was quicker, the server is dead: a crash, never a
// thaw half killed).
func (i *Instance) Thaw(pid int) error {
	i.stopReaper()
	var errs []error
	for _, p := range Descendants(pid) {
		if err := syscall.Kill(p, syscall.SIGCONT); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, err)
		}
	}
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("thaw postmaster %d: %w", pid, err)
	}
	return nil
}

// Stopped reports whether the process pid is stopped by a signal (SIGSTOP):
// a frozen postmaster, by the fence or by anything else.
func Stopped(pid int) bool {
	s, ok := procState(pid)
	return ok && (s == 'T' || s == 't')
}

func stoppedOrGone(pid int) bool {
	s, ok := procState(pid)
	return !ok || s == 'T' || s == 't' || s == 'Z' || s == 'X'
}

// killFrozen ends a stopped server and every process it started with
// SIGKILL, the children listed before the postmaster dies (they are
// re-parented then), and waits up to a second for the postmaster to go.
func (i *Instance) killFrozen(pid int) error {
	defer i.stopReaper()
	children := Descendants(pid)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill frozen postmaster %d: %w", pid, err)
	}
	for _, p := range children {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	deadline := time.Now().Add(time.Second)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			return fmt.Errorf("frozen postmaster %d is still there after SIGKILL", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
	i.log.Info("frozen postgres killed", "pid", pid, "processes", len(children)+1)
	return nil
}

// reaperScript kills, after $1 seconds, each of the other arguments that is
// still stopped ("T" in /proc/PID/stat; PostgreSQL's processes are named
// "postgres", without spaces): a PID reused meanwhile is left alone.
const reaperScript = `sleep "$1"; shift; for p in "$@"; do s=$(cut -d' ' -f3 /proc/$p/stat 2>/dev/null); [ "$s" = T ] && kill -KILL "$p"; done; exit 0`

// reaper is a running reaper process; done is closed when it has exited.
type reaper struct {
	pid  int
	done chan struct{}
}

// startReaper starts the reaper of a freeze, unless one runs already (a
// freeze renewed on every pass of the fence loop keeps its first deadline).
func (i *Instance) startReaper(procs []int, after time.Duration) error {
	i.reaperMu.Lock()
	defer i.reaperMu.Unlock()
	if i.reaper != nil {
		select {
		case <-i.reaper.done: // it fired (or died): this is a new freeze
		default:
			return nil
		}
	}
	args := []string{"-c", reaperScript, "pgha-freeze-reaper", strconv.FormatFloat(after.Seconds(), 'f', 3, 64)}
	for _, p := range procs {
		args = append(args, strconv.Itoa(p))
	}
	cmd := exec.Command("/bin/sh", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the reaper that ends the freeze: %w", err)
	}
	r := &reaper{pid: cmd.Process.Pid, done: make(chan struct{})}
	i.reaper = r
	go func() {
		_ = cmd.Wait()
		close(r.done)
	}()
	return nil
}

// stopReaper kills the reaper and its sleep (its process group) and waits
// until it is gone.
func (i *Instance) stopReaper() {
	i.reaperMu.Lock()
	defer i.reaperMu.Unlock()
	if i.reaper == nil {
		return
	}
	_ = syscall.Kill(-i.reaper.pid, syscall.SIGKILL)
	select {
	case <-i.reaper.done:
	case <-time.After(time.Second):
	}
	i.reaper = nil
}

// Descendants lists the processes pid started, and theirs, from /proc.
func Descendants(pid int) []int {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f, ok := procStat(p); ok && len(f) > 1 {
			if ppid, err := strconv.Atoi(f[1]); err == nil {
				children[ppid] = append(children[ppid], p)
			}
		}
	}
	var out []int
	for queue := children[pid]; len(queue) > 0; queue = queue[1:] {
		out = append(out, queue[0])
		queue = append(queue, children[queue[0]]...)
	}
	return out
}

// procStat returns the fields of /proc/PID/stat after the command name:
// state, ppid, ... (the name may hold spaces and parentheses).
func procStat(pid int) ([]string, bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return nil, false
	}
	s := string(b)
	j := strings.LastIndexByte(s, ')')
	if j < 0 {
		return nil, false
	}
	f := strings.Fields(s[j+1:])
	return f, len(f) > 0
}

func procState(pid int) (byte, bool) {
	f, ok := procStat(pid)
	if !ok || f[0] == "" {
		return 0, false
	}
	return f[0][0], true
}

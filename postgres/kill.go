package postgres

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"
)

// Kill stops the server with pid by signal, without pg_ctl and without any
// of the agent's locks or connections: the fence's stop, which must not
// wait behind a slow close or a busy connection. SIGQUIT is PostgreSQL's
// immediate shutdown (every backend exits at once, no commit is
// acknowledged after it); if the postmaster is still there after a second,
// SIGKILL, and its children notice their postmaster's death. A frozen
// server (freeze.go) is killed with all its processes at once.
func (i *Instance) Kill(ctx context.Context, pid int) error {
	if pid <= 0 {
		return nil
	}
	if Stopped(pid) {
		return i.killFrozen(pid)
	}
	for _, sig := range []syscall.Signal{syscall.SIGQUIT, syscall.SIGKILL} {
		if err := syscall.Kill(pid, sig); err != nil {
			if errors.Is(err, syscall.ESRCH) {
				return nil
			}
			return fmt.Errorf("signal postmaster %d: %w", pid, err)
		}
		deadline := time.Now().Add(time.Second)
		for time.Now().Before(deadline) {
			if !processAlive(pid) {
				i.log.Info("postgres stopped by signal", "pid", pid, "signal", sig.String())
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	return fmt.Errorf("postmaster %d is still there after SIGKILL", pid)
}

// processAlive reports whether pid exists and is not a zombie.
// Exited reports whether the process pid is gone or a zombie (killed, not
// reaped yet): it runs nothing.
func Exited(pid int) bool { return !processAlive(pid) }

func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	var ws syscall.WaitStatus
	// The postmaster is not our child (pg_ctl starts it detached), so Wait4
	// fails with ECHILD; a zombie of ours would be reaped here.
	if wpid, _ := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); wpid == pid {
		return false
	}
	return !isZombie(pid)
}

// isZombie reads /proc/PID/stat's state field.
func isZombie(pid int) bool {
	s, ok := procState(pid)
	return ok && s == 'Z'
}

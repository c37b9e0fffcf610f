package postgres

import (
	"context"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// A standby's startup process that has failed to get WAL from its upstream
// sleeps wal_retrieve_retry_interval before it tries again. After a failover
// or a switchover every standby fails at least once (its old upstream went
// away, or the new one was still being promoted when it first tried), and
// the first commits on the new primary wait for a synchronous standby to
// stream: that sleep is then part of every failover. PostgreSQL's startup
// process takes a SIGHUP as a reason to look again (it sets its wake-up
// latch), so the agent sends one to it — to it alone: a SIGHUP to the
// postmaster would make every process reread its configuration.

// recoveryState is what the wake needs to know of a standby: the PID of its
// startup process (0 when not in recovery) and whether its WAL receiver
// streams from host:port.
func (i *Instance) recoveryState(ctx context.Context, host string, port int) (startup int, streaming bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	err = i.with(ctx, &i.stat, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, `SELECT coalesce((SELECT pid FROM pg_stat_activity WHERE backend_type = 'startup'), 0),
       coalesce((SELECT status = 'streaming' AND sender_host = $1 AND sender_port = $2 FROM pg_stat_wal_receiver), false)`,
			host, port).Scan(&startup, &streaming)
	})
	return startup, streaming, err
}

// wakeStartup sends SIGHUP to the startup process, or, when it cannot be
// found, to the postmaster (which passes it on).
func (i *Instance) wakeStartup(ctx context.Context) {
	if pid, _, err := i.recoveryState(ctx, "", 0); err == nil && pid > 0 {
		if syscall.Kill(pid, syscall.SIGHUP) == nil {
			return
		}
	}
	if pid, _ := i.PostmasterPID(); pid > 0 {
		_ = syscall.Kill(pid, syscall.SIGHUP)
	}
}

// WakeUntilStreaming wakes the standby's startup process every 50 ms until
// its WAL receiver streams from host:port (its new upstream: the old one may
// still be streaming when this starts), for at most within, and reports
// whether it does. The agent calls it once the standby follows a new
// upstream.
func (i *Instance) WakeUntilStreaming(ctx context.Context, host string, port int, within time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	for {
		startup, streaming, err := i.recoveryState(ctx, host, port)
		if err == nil {
			if streaming {
				return true
			}
			if startup == 0 {
				return false // not a standby (any more)
			}
			_ = syscall.Kill(startup, syscall.SIGHUP)
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
}

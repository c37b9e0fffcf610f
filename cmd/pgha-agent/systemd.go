package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// readiness is what systemd is told about (*agent.Agent).
type readiness interface {
	Ready() bool // joined the cluster, PostgreSQL up
	Alive() bool // loops turning: feed the watchdog
}

// notifySystemd speaks systemd's Type=notify protocol when the agent runs
// under a unit that asks for it (NOTIFY_SOCKET set; otherwise every call is
// a no-op): READY=1 once the agent has joined its cluster and PostgreSQL
// runs (the router-only process: once it listens), WATCHDOG=1 while its loops turn, STOPPING=1 on the way out.
func notifySystemd(ctx context.Context, a readiness, status string, log *slog.Logger) {
	watchdog, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("systemd watchdog settings unreadable; not feeding it", "err", err)
	}
	period := 500 * time.Millisecond
	if watchdog > 0 && watchdog/3 < period {
		period = watchdog / 3
	}
	t := time.NewTicker(period)
	defer t.Stop()
	ready := false
	for {
		if !ready && a.Ready() {
			ready = true
			if sent, err := daemon.SdNotify(false, daemon.SdNotifyReady+"\nSTATUS="+status); sent {
				log.Info("told systemd the process is ready", "status", status)
			} else if err != nil {
				log.Warn("systemd notify failed", "err", err)
			}
		}
		if watchdog > 0 && a.Alive() {
			_, _ = daemon.SdNotify(false, daemon.SdNotifyWatchdog)
		}
		select {
		case <-ctx.Done():
			_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
			return
		case <-t.C:
		}
	}
}

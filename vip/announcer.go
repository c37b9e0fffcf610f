package vip

import (
	"context"
	"log/slog"
	"time"
)

// announcer repeats gratuitous ARPs in the background after Acquire sent the
// first one, so that clients whose first frame was lost, or that were busy,
// still move to this host. It owns its arpConn and closes it when done.
//
// The goroutine is owned by the NetlinkManager: stop (from Release, a later
// Acquire or Close) cancels it and waits for it, so no announcement for an
// address we no longer hold goes out after Release returns.
type announcer struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// startAnnouncer sends count more announcements on conn, one per interval.
func startAnnouncer(conn *arpConn, count int, interval time.Duration, log *slog.Logger) *announcer {
	ctx, cancel := context.WithCancel(context.Background())
	a := &announcer{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(a.done)
		defer conn.Close()
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for range count {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if err := conn.announce(); err != nil {
				// The address is held; only the repeats are lost.
				log.Warn("vip: gratuitous ARP failed; stopping the repeats", "err", err)
				return
			}
		}
	}()
	return a
}

// stop cancels the remaining announcements and waits until the goroutine has
// closed its socket. Safe on a nil announcer.
func (a *announcer) stop() {
	if a == nil {
		return
	}
	a.cancel()
	<-a.done
}

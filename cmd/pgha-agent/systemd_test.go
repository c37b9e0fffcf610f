package main

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

type fakeReadiness struct{ ready, alive atomic.Bool }

func (f *fakeReadiness) Ready() bool { return f.ready.Load() }
func (f *fakeReadiness) Alive() bool { return f.alive.Load() }

// The agent speaks systemd's notify protocol on NOTIFY_SOCKET: READY=1
// only once ready, WATCHDOG=1 only while alive, STOPPING=1 at the end.
func TestNotifySystemd(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "300000") // 300ms: fed every 100ms
	t.Setenv("WATCHDOG_PID", "")

	a := &fakeReadiness{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		notifySystemd(ctx, a, "joined the cluster", slog.New(slog.DiscardHandler))
		close(done)
	}()
	next := func() string {
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 512)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(buf[:n])
	}
	// Not alive, not ready: nothing at all may arrive.
	conn.SetReadDeadline(time.Now().Add(400 * time.Millisecond))
	if n, err := conn.Read(make([]byte, 512)); err == nil {
		t.Fatalf("notified before the agent was ready or alive (%d bytes)", n)
	}
	a.alive.Store(true)
	if got := next(); got != "WATCHDOG=1" {
		t.Fatalf("first message while alive: %q, want WATCHDOG=1", got)
	}
	a.ready.Store(true)
	for {
		got := next()
		if strings.HasPrefix(got, "READY=1") {
			break
		}
		if got != "WATCHDOG=1" {
			t.Fatalf("unexpected %q", got)
		}
	}
	cancel()
	for {
		if got := next(); got == "STOPPING=1" {
			break
		}
	}
	<-done
}

package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/postgres"
)

func TestReplayWatch(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 20, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	standby := func(received, replayed postgres.LSN) postgres.Status {
		return postgres.Status{Running: true, InRecovery: true, Streaming: true, ReceivedLSN: received, ReplayedLSN: replayed}
	}
	var w replayWatch
	steps := []struct {
		at      float64
		pg      postgres.Status
		stalled bool
	}{
		{0, standby(100, 100), false},  // caught up
		{10, standby(100, 100), false}, // idle primary: nothing waits
		{11, standby(200, 100), false}, // WAL waits from here
		{15, standby(300, 100), false}, // 4s
		{16.5, standby(300, 100), true},
		{17, standby(300, 150), false}, // it moved: the clock restarts
		{21, standby(300, 150), false},
		{22.5, standby(300, 150), true},
		{23, standby(300, 300), false},              // caught up
		{40, postgres.Status{Running: true}, false}, // a primary
	}
	for _, s := range steps {
		why := w.stalled(s.pg, at(s.at))
		if (why != "") != s.stalled {
			t.Errorf("at %vs (%+v): stalled %q, want %v", s.at, s.pg, why, s.stalled)
		}
		if why != "" && !strings.Contains(why, "stands still") {
			t.Errorf("reason %q", why)
		}
	}
}

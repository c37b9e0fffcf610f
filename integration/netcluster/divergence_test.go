package netcluster

import (
	"testing"
	"time"

	"github.com/pgha/pgha/postgres"
)

// TestOffHistory checks the harness's own judgement of divergence (no root
// needed).
func TestOffHistory(t *testing.T) {
	// Timeline 3's history: 1 ended at 0/3000000, 2 at 0/5000000.
	hist := []postgres.TimelineSwitch{{Timeline: 1, Switch: 0x3000000}, {Timeline: 2, Switch: 0x5000000}}
	at := func(tli uint32, lsn postgres.LSN) postgres.WALPosition {
		return postgres.WALPosition{Timeline: tli, LSN: lsn}
	}
	for _, tc := range []struct {
		pos  postgres.WALPosition
		off  bool
		name string
	}{
		{at(3, 0x9000000), false, "on the primary's timeline"},
		{at(2, 0x4000000), false, "behind on an ancestor"},
		{at(2, 0x5000000), false, "exactly at the switch point"},
		{at(2, 0x5000001), true, "past the switch point"},
		{at(1, 0x3000100), true, "past an older switch point"},
		{at(4, 0x1000000), true, "a timeline the primary does not know"},
	} {
		if got := offHistory(3, hist, tc.pos) != ""; got != tc.off {
			t.Errorf("%s (%s): off history %v, want %v", tc.name, tc.pos, got, tc.off)
		}
	}
}

// TestDivergedServing checks which served events are proven to come from
// a diverged standby.
func TestDivergedServing(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	sample := func(start int, diverged bool, session int) Position {
		return Position{Start: ms(start), End: ms(start + 10), OK: true, Diverged: diverged, Session: session, Why: "off"}
	}
	failed := func(start int) Position { return Position{Start: ms(start), End: ms(start + 10)} }
	served := func(start, end int) []Served {
		return []Served{{Host: "h2", What: "/replica 200", Start: ms(start), End: ms(end)}}
	}
	for _, tc := range []struct {
		name string
		pos  []Position
		ev   []Served
		want int
	}{
		{"between two diverged samples", []Position{sample(0, true, 1), sample(250, true, 1)}, served(100, 120), 1},
		{"before the first diverged sample", []Position{sample(0, false, 1), sample(250, true, 1)}, served(100, 120), 0},
		{"after the last sample", []Position{sample(0, true, 1)}, served(100, 120), 0},
		{"a failed sample between: it may have restarted", []Position{sample(0, true, 1), failed(250), sample(500, true, 1)}, served(100, 400), 0},
		{"a new session between", []Position{sample(0, true, 1), sample(250, true, 2)}, served(100, 120), 0},
		{"overlapping a sample's questions", []Position{sample(0, true, 1), sample(250, true, 1)}, served(5, 120), 0},
	} {
		if got := len(DivergedServing(map[string][]Position{"h2": tc.pos}, tc.ev)); got != tc.want {
			t.Errorf("%s: %d events, want %d", tc.name, got, tc.want)
		}
	}
}

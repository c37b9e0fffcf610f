package postgres

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseTimelineHistory(t *testing.T) {
	// Timeline 3's history file as PostgreSQL 15 writes it.
	got, err := ParseTimelineHistory("1\t0/3000158\tno recovery target specified\n\n# a comment\n2\t0/50000A0\tno recovery target specified\n")
	if err != nil {
		t.Fatal(err)
	}
	want := []TimelineSwitch{{1, 0x3000158}, {2, 0x50000A0}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if h, err := ParseTimelineHistory(""); err != nil || len(h) != 0 {
		t.Errorf("empty file: %v, %v", h, err)
	}
	for _, bad := range []string{
		"1\n",                     // no switch point
		"x\t0/1\treason\n",        // bad timeline
		"0\t0/1\treason\n",        // timeline 0
		"1\tnot-an-lsn\treason\n", // bad LSN
		"2\t0/5\tr\n1\t0/6\tr\n",  // timelines go back
		"1\t0/6\tr\n2\t0/5\tr\n",  // switch points go back
	} {
		if _, err := ParseTimelineHistory(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestForkedOff(t *testing.T) {
	// The primary is on timeline 3: timeline 1 ended at 0/3000158, timeline 2 at 0/50000A0.
	hist := []TimelineSwitch{{1, 0x3000158}, {2, 0x50000A0}}
	for _, c := range []struct {
		name    string
		tli     uint32
		hist    []TimelineSwitch
		pos     WALPosition
		forked  bool
		mention string
	}{
		{"same timeline", 3, hist, WALPosition{3, 0x9000000}, false, ""},
		{"behind on an ancestor", 3, hist, WALPosition{2, 0x4000000}, false, ""},
		{"exactly at the switch point", 3, hist, WALPosition{2, 0x50000A0}, false, ""},
		{"past the switch point", 3, hist, WALPosition{2, 0x50000A8}, true, "past 0/50000A0 where the primary's timeline 3 left timeline 2"},
		{"past an older switch point", 3, hist, WALPosition{1, 0x4000000}, true, "left timeline 1"},
		{"on a branch the primary never took", 3, []TimelineSwitch{{1, 0x3000158}}, WALPosition{2, 0x3000200}, true, "not in the history"},
		{"on a newer timeline than the primary", 3, hist, WALPosition{4, 0x9000000}, true, "not in the history"},
		{"primary on timeline 1, standby on 2", 1, nil, WALPosition{2, 0x3000200}, true, "not in the history"},
		{"unknown primary history", 3, nil, WALPosition{2, 0x9000000}, false, ""},
		{"unknown position", 3, hist, WALPosition{}, false, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			why := ForkedOff(c.tli, c.hist, c.pos)
			if (why != "") != c.forked || !strings.Contains(why, c.mention) {
				t.Errorf("ForkedOff = %q, want forked=%v mentioning %q", why, c.forked, c.mention)
			}
		})
	}
}

func TestControlWALEnds(t *testing.T) {
	// pg_controldata of a standby shut down in recovery on timeline 1 after
	// replaying past its last restartpoint.
	got, err := controlWALEnds(map[string]string{
		"Latest checkpoint location":         "0/3000060",
		"Latest checkpoint's TimeLineID":     "1",
		"Minimum recovery ending location":   "0/3021A28",
		"Min recovery ending loc's timeline": "1",
	})
	want := []WALPosition{{1, 0x3000060}, {1, 0x3021A28}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, %v; want %v", got, err, want)
	}
	// A primary's: no minimum recovery point.
	got, err = controlWALEnds(map[string]string{
		"Latest checkpoint location":         "0/3000060",
		"Latest checkpoint's TimeLineID":     "2",
		"Minimum recovery ending location":   "0/0",
		"Min recovery ending loc's timeline": "0",
	})
	if want := []WALPosition{{2, 0x3000060}}; err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, %v; want %v", got, err, want)
	}
	if _, err := controlWALEnds(map[string]string{}); err == nil {
		t.Error("missing fields: no error")
	}
}

func TestOnHistory(t *testing.T) {
	// The new primary is on timeline 3: timeline 1 ended at 0/3000158, timeline 2 at 0/50000A0.
	hist := []TimelineSwitch{{1, 0x3000158}, {2, 0x50000A0}}
	for _, c := range []struct {
		name string
		tli  uint32
		hist []TimelineSwitch
		pos  WALPosition
		want bool
	}{
		{"a clean switchover: ends exactly at the switch point", 3, hist, WALPosition{2, 0x50000A0}, true},
		{"behind the switch point", 3, hist, WALPosition{2, 0x4000000}, true},
		{"on an older ancestor, behind its switch", 3, hist, WALPosition{1, 0x3000000}, true},
		{"one record past the switch point", 3, hist, WALPosition{2, 0x50000A8}, false},
		{"past an older switch point", 3, hist, WALPosition{1, 0x4000000}, false},
		{"the same timeline as the primary", 3, hist, WALPosition{3, 0x4000000}, false},
		{"a newer timeline than the primary", 3, hist, WALPosition{4, 0x4000000}, false},
		{"a branch the primary never took", 3, []TimelineSwitch{{1, 0x3000158}}, WALPosition{2, 0x3000200}, false},
		{"unknown primary history", 3, nil, WALPosition{2, 0x4000000}, false},
		{"unknown position", 3, hist, WALPosition{}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := OnHistory(c.tli, c.hist, c.pos); got != c.want {
				t.Errorf("OnHistory(%d, %v, %v) = %v, want %v", c.tli, c.hist, c.pos, got, c.want)
			}
		})
	}
}

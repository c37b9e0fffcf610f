package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
)

// stoppedAt is a member whose PostgreSQL is stopped and whose data
// directory's WAL ends at lsn on timeline tli (history hist).
func stoppedAt(sys uint64, tli uint32, lsn postgres.LSN, hist ...postgres.TimelineSwitch) memberView {
	v := seen("valid", postgres.Status{})
	v.obs.DataDirWAL = &postgres.DataDirWAL{SystemID: sys, End: postgres.WALPosition{Timeline: tli, LSN: lsn}, History: hist}
	return v
}

// runningAt is a member whose PostgreSQL runs, writable or as a standby.
func runningAt(writable bool, sys uint64, tli uint32, lsn postgres.LSN, hist ...postgres.TimelineSwitch) memberView {
	v := stoppedAt(sys, tli, lsn, hist...)
	v.obs.DataDirWAL.Running = true
	v.obs.Postgres = postgres.Status{Running: true, InRecovery: !writable, SystemID: sys, Timeline: tli}
	if writable {
		v.obs.Postgres.CurrentLSN = lsn
	} else {
		v.obs.Postgres.ReceivedLSN = lsn
	}
	return v
}

func left(tli uint32, at postgres.LSN) postgres.TimelineSwitch {
	return postgres.TimelineSwitch{Timeline: tli, Switch: at}
}

// TestChooseFirstPrimaryAdopts: with several members holding data, the one
// whose WAL holds every other's is adopted, whatever the names (the leader
// is n1, and n1 sorts first); when none does, nothing is, and the leader
// says what the operator must do.
func TestChooseFirstPrimaryAdopts(t *testing.T) {
	const sys = 7
	empty := seen("missing", postgres.Status{})
	cases := []struct {
		name       string
		obs        map[string]memberView
		want       string // the adopted member; "" = wait
		wantReason string // in the decision's reason, or in why it waits
	}{
		{
			name: "stopped, one timeline: the most WAL wins, not the first name",
			obs:  map[string]memberView{"n1": stoppedAt(sys, 1, 0x3000100), "n2": stoppedAt(sys, 1, 0x5000000), "n3": stoppedAt(sys, 1, 0x4000000)},
			want: "n2", wantReason: "holds every other member's",
		},
		{
			name: "stopped: a newer timeline wins over more WAL on its ancestor, up to the fork",
			obs:  map[string]memberView{"n1": stoppedAt(sys, 1, 0x5000000), "n2": stoppedAt(sys, 2, 0x3000000, left(1, 0x5000000)), "n3": stoppedAt(sys, 1, 0x4000000)},
			want: "n2",
		},
		{
			name: "timeline 3 holds timeline 2 and 1 up to their forks",
			obs:  map[string]memberView{"n1": stoppedAt(sys, 2, 0x6000000, left(1, 0x5000000)), "n2": stoppedAt(sys, 1, 0x4000000), "n3": stoppedAt(sys, 3, 0x6100000, left(1, 0x5000000), left(2, 0x6000000))},
			want: "n3",
		},
		{
			name: "one member with data among empty ones: adopted, no WAL needed",
			obs:  map[string]memberView{"n1": empty, "n2": empty, "n3": seen("valid", postgres.Status{})},
			want: "n3",
		},
		{
			name: "two with data, one has not reported its WAL yet: wait",
			obs: map[string]memberView{"n1": empty, "n2": stoppedAt(sys, 1, 0x3000000), "n3": func() memberView {
				v := seen("valid", postgres.Status{})
				v.obs.DataDirWALError = "pg_waldump: permission denied"
				return v
			}()},
			wantReason: "waiting for n3 to report where its WAL ends, to adopt the newest: pg_waldump: permission denied",
		},
		{
			name:       "different database systems: refuse",
			obs:        map[string]memberView{"n1": stoppedAt(sys, 1, 0x3000000), "n2": stoppedAt(sys+1, 1, 0x5000000), "n3": empty},
			wantReason: "different database systems",
		},
		{
			name:       "diverged: the old timeline went past the fork of the new one",
			obs:        map[string]memberView{"n1": stoppedAt(sys, 1, 0x5000100), "n2": stoppedAt(sys, 2, 0x6000000, left(1, 0x5000000)), "n3": empty},
			wantReason: "each holds commits the other lacks",
		},
		{
			name:       "diverged: one timeline ID promoted apart on two servers",
			obs:        map[string]memberView{"n1": stoppedAt(sys, 2, 0x5000100, left(1, 0x4000000)), "n2": stoppedAt(sys, 2, 0x6000000, left(1, 0x5000000)), "n3": empty},
			wantReason: "promoted apart",
		},
		{
			name:       "diverged: a timeline not in the other's history",
			obs:        map[string]memberView{"n1": stoppedAt(sys, 2, 0x5000100, left(1, 0x4000000)), "n2": stoppedAt(sys, 3, 0x6000000, left(1, 0x5000000)), "n3": empty},
			wantReason: "not an ancestor",
		},
		{
			name:       "unknown history of a later timeline: cannot be ordered",
			obs:        map[string]memberView{"n1": stoppedAt(sys, 1, 0x3000000), "n2": stoppedAt(sys, 2, 0x6000000), "n3": empty},
			wantReason: "history is unknown",
		},
		{
			name: "a running primary on a newer timeline over stopped members behind its fork",
			obs:  map[string]memberView{"n1": stoppedAt(sys, 1, 0x5000000), "n2": stoppedAt(sys, 1, 0x4000000), "n3": runningAt(true, sys, 2, 0x5000200, left(1, 0x5000000))},
			want: "n3",
		},
		{
			name: "a running standby behind a stopped former primary: the stopped one wins",
			obs:  map[string]memberView{"n1": runningAt(false, sys, 1, 0x3000000), "n2": stoppedAt(sys, 1, 0x4000000), "n3": empty},
			want: "n2",
		},
		{
			name: "a running primary, its standby's observation newer: the primary",
			obs:  map[string]memberView{"n1": runningAt(false, sys, 1, 0x3000200), "n2": runningAt(true, sys, 1, 0x3000100), "n3": runningAt(false, sys, 1, 0x3000000)},
			want: "n2",
		},
		{
			name:       "a running primary behind a stopped member on its timeline: refuse, it keeps writing",
			obs:        map[string]memberView{"n1": runningAt(true, sys, 1, 0x3000000), "n2": stoppedAt(sys, 1, 0x4000000), "n3": empty},
			wantReason: "goes further on timeline 1",
		},
		{
			name:       "two running primaries: refuse",
			obs:        map[string]memberView{"n1": runningAt(true, sys, 2, 0x3000000, left(1, 0x2000000)), "n2": runningAt(true, sys, 3, 0x3000000, left(1, 0x2000000), left(2, 0x2800000)), "n3": empty},
			wantReason: "both run writable",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := Inputs{State: consensus.State{Members: members("n1", "n2", "n3")}, Observations: c.obs, Now: t0, Self: "n1",
				Voters: []string{"n1", "n2", "n3"}, NewClusterID: "cid", Policy: testPolicy}
			plan := decide(in)
			if c.want == "" {
				if len(plan.Decisions) != 0 {
					t.Fatalf("want no decision, got %+v", plan.Decisions)
				}
				if !strings.Contains(plan.Waiting, c.wantReason) {
					t.Errorf("waiting %q; want it to say %q", plan.Waiting, c.wantReason)
				}
				if c.wantReason != "" && !strings.Contains(c.wantReason, "waiting for") && !strings.Contains(plan.Waiting, "move the others' data directories aside") {
					t.Errorf("a refusal must tell the operator what to do: %q", plan.Waiting)
				}
				return
			}
			if len(plan.Decisions) != 1 {
				t.Fatalf("want one decision, got %+v (waiting %q)", plan.Decisions, plan.Waiting)
			}
			d, ok := plan.Decisions[0].Command.Data.(consensus.InitClusterData)
			if !ok || d.Primary != c.want || d.ClusterID != "cid" {
				t.Errorf("decision %+v; want init on %s", plan.Decisions[0].Command, c.want)
			}
			if !strings.Contains(plan.Decisions[0].Reason, c.wantReason) {
				t.Errorf("reason %q; want it to say %q", plan.Decisions[0].Reason, c.wantReason)
			}
		})
	}
}

func TestWALContains(t *testing.T) {
	w := func(tli uint32, lsn postgres.LSN, hist ...postgres.TimelineSwitch) postgres.DataDirWAL {
		return postgres.DataDirWAL{End: postgres.WALPosition{Timeline: tli, LSN: lsn}, History: hist}
	}
	for _, c := range []struct {
		name string
		a, b postgres.DataDirWAL
		ok   bool
	}{
		{"same timeline, behind", w(1, 200), w(1, 100), true},
		{"same timeline, equal", w(1, 200), w(1, 200), true},
		{"same timeline, ahead", w(1, 200), w(1, 300), false},
		{"ancestor, at the fork", w(2, 50, left(1, 100)), w(1, 100), true},
		{"ancestor, past the fork", w(2, 500, left(1, 100)), w(1, 101), false},
		{"grand-ancestor", w(3, 500, left(1, 100), left(2, 200)), w(1, 90), true},
		{"parent, past its fork", w(3, 500, left(1, 100), left(2, 200)), w(2, 201, left(1, 100)), false},
		{"parent with another history", w(3, 500, left(1, 100), left(2, 200)), w(2, 150, left(1, 90)), false},
		{"newer timeline", w(1, 900), w(2, 10, left(1, 5)), false},
	} {
		if got := walContains(c.a, c.b); (got == "") != c.ok {
			t.Errorf("%s: walContains = %q, want ok=%v", c.name, got, c.ok)
		}
	}
}

// The stopped data directory's WAL end (pg_waldump) is read once, and again
// only when pg_control or pg_wal change.
func TestStoppedWALCache(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"global", "pg_wal"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	control := filepath.Join(dir, "global", "pg_control")
	if err := os.WriteFile(control, []byte("a"), 0o600); err != nil {
		t.Fatal(err)
	}
	reads := 0
	read := func(context.Context) (postgres.DataDirWAL, error) {
		reads++
		return postgres.DataDirWAL{SystemID: uint64(reads)}, nil
	}
	var c stoppedWALCache
	for i := 0; i < 3; i++ {
		if w, why := c.get(context.Background(), dir, read); w == nil || w.SystemID != 1 || why != "" {
			t.Fatalf("get = %+v, %q", w, why)
		}
	}
	if err := os.WriteFile(control, []byte("bb"), 0o600); err != nil {
		t.Fatal(err)
	}
	if w, _ := c.get(context.Background(), dir, read); w == nil || w.SystemID != 2 {
		t.Errorf("after pg_control changed: %+v; want a new read", w)
	}
	c.forget()
	if w, _ := c.get(context.Background(), dir, read); w == nil || w.SystemID != 3 {
		t.Errorf("after forget: %+v; want a new read", w)
	}
}

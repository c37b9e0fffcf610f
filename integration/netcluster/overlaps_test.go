package netcluster_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/pgha/pgha/integration/netcluster"
)

// TestOverlaps checks the double-primary / double-VIP analysis on made-up
// samples (no root needed): what counts as two hosts "on" at once, and
// what does not.
func TestOverlaps(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	on := func(ms ...int) []netcluster.Sample {
		var s []netcluster.Sample
		for _, m := range ms {
			s = append(s, netcluster.Sample{At: at(m), OK: true, On: true})
		}
		return s
	}
	off := func(ms int) netcluster.Sample { return netcluster.Sample{At: at(ms), OK: true} }
	silent := func(ms int) netcluster.Sample { return netcluster.Sample{At: at(ms)} }
	cat := func(parts ...[]netcluster.Sample) []netcluster.Sample {
		var s []netcluster.Sample
		for _, p := range parts {
			s = append(s, p...)
		}
		return s
	}
	one := func(s netcluster.Sample) []netcluster.Sample { return []netcluster.Sample{s} }

	for _, tc := range []struct {
		name   string
		series map[string][]netcluster.Sample
		want   []string // "a b startms endms"
	}{
		{"a clean handover", map[string][]netcluster.Sample{
			"h1": cat(on(0, 100, 200), one(off(300))),
			"h2": cat(one(off(250)), on(350, 450)),
		}, nil},
		{"the new primary starts before the old one stops", map[string][]netcluster.Sample{
			"h1": cat(on(0, 100, 200, 300), one(off(400))),
			"h2": cat(one(off(150)), on(250, 350)),
		}, []string{"h1 h2 250 300"}},
		{"a single writable sample inside the other's run", map[string][]netcluster.Sample{
			"h1": on(0, 100, 200, 300),
			"h2": cat(one(off(100)), on(150), one(off(250))),
		}, []string{"h1 h2 150 150"}},
		{"no answer breaks a run: nothing is claimed across it", map[string][]netcluster.Sample{
			"h1": cat(on(0), one(silent(100)), on(200)),
			"h2": cat(one(off(50)), on(100), one(off(150))),
		}, nil},
		{"a gap longer than maxGap breaks a run", map[string][]netcluster.Sample{
			"h1": on(0, 5000),
			"h2": on(2500),
		}, nil},
		{"out-of-order samples are sorted first", map[string][]netcluster.Sample{
			"h1": cat(on(300, 0, 200, 100)),
			"h2": on(150),
		}, []string{"h1 h2 150 150"}},
		{"three hosts, two pairs", map[string][]netcluster.Sample{
			"h1": on(0, 100),
			"h2": on(50, 150),
			"h3": cat(one(off(0)), on(120, 220)),
		}, []string{"h1 h2 50 100", "h2 h3 120 150"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, i := range netcluster.Overlaps(tc.series, time.Second) {
				got = append(got, fmt.Sprintf("%s %s %d %d", i.Hosts[0], i.Hosts[1], i.Start.Sub(t0).Milliseconds(), i.End.Sub(t0).Milliseconds()))
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

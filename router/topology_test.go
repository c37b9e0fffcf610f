package router

import (
	"testing"
	"time"
)

// A standby tagged noloadbalance gets no reads; when it is the only one,
// there is no standby to read from (the caller falls back to the primary).
func TestPickStandbySkipsNoLoadBalance(t *testing.T) {
	bs := []Backend{
		{Name: "p", Host: "10.0.0.1", Port: 5432, Primary: true, Healthy: true},
		{Name: "s1", Host: "10.0.0.2", Port: 5432, Healthy: true, NoLoadBalance: true},
		{Name: "s2", Host: "10.0.0.3", Port: 5432, Healthy: true},
	}
	v := newView(bs, nil, time.Now())
	for range 200 {
		b, ok := v.pickStandby(0, 0)
		if !ok || b.Name != "s2" {
			t.Fatalf("picked %q (%v), want s2 every time", b.Name, ok)
		}
	}
	bs[2].NoLoadBalance = true
	if b, ok := newView(bs, nil, time.Now()).pickStandby(0, 0); ok {
		t.Fatalf("picked %q although every standby is tagged noloadbalance", b.Name)
	}
}

type loads map[string]int64

func (l loads) inFlight(b Backend) int64 { return l[b.Name] }

// Reads go to the least-loaded standby (per unit of weight); the primary
// gets one only when it has spare capacity every standby lacks, by a
// margin of one transaction; lag and read-your-writes rules still exclude.
func TestPickReadByLoad(t *testing.T) {
	bs := []Backend{
		{Name: "p", Host: "10.0.0.1", Port: 5432, Primary: true, Healthy: true},
		{Name: "s1", Host: "10.0.0.2", Port: 5432, Healthy: true, ReplayLSN: 100},
		{Name: "s2", Host: "10.0.0.3", Port: 5432, Healthy: true, ReplayLSN: 200},
	}
	v := newView(bs, nil, time.Now())
	for _, c := range []struct {
		name        string
		loads       loads
		primaryLoad int64
		minLSN      uint64
		weights     [2]int
		want        string
	}{
		{"idle cluster: a standby, never the primary", loads{}, 0, 0, [2]int{}, "s?"},
		{"the less loaded standby", loads{"s1": 3, "s2": 1}, 5, 0, [2]int{}, "s2"},
		{"primary one less than the standbys: still a standby", loads{"s1": 2, "s2": 2}, 1, 0, [2]int{}, "s?"},
		{"primary two less: the primary", loads{"s1": 3, "s2": 3}, 1, 0, [2]int{}, "p"},
		{"primary not offered (busy with writes)", loads{"s1": 9, "s2": 9}, -1, 0, [2]int{}, "s?"},
		{"weights: s1 counts double", loads{"s1": 3, "s2": 2}, 9, 0, [2]int{2, 1}, "s1"},
		{"read-your-writes: only s2 replayed far enough", loads{"s1": 0, "s2": 7}, 9, 150, [2]int{}, "s2"},
		{"no standby qualifies: the primary", loads{}, 4, 300, [2]int{}, "p"},
	} {
		bs[1].Weight, bs[2].Weight = c.weights[0], c.weights[1]
		v = newView(bs, nil, time.Now())
		for range 50 {
			b, toPrimary, ok := v.pickRead(0, c.minLSN, c.loads, c.primaryLoad, "")
			got := b.Name
			if !ok {
				got = "none"
			}
			if toPrimary != (got == "p") {
				t.Fatalf("%s: toPrimary %v for %s", c.name, toPrimary, got)
			}
			if c.want == "s?" && (got == "s1" || got == "s2") {
				continue
			}
			if got != c.want {
				t.Fatalf("%s: picked %s, want %s", c.name, got, c.want)
			}
		}
	}
	// Ties are broken at random: both standbys get reads.
	seen := map[string]bool{}
	bs[1].Weight, bs[2].Weight = 0, 0
	v = newView(bs, nil, time.Now())
	for range 200 {
		b, _, _ := v.pickRead(0, 0, loads{}, -1, "")
		seen[b.Name] = true
	}
	if !seen["s1"] || !seen["s2"] {
		t.Errorf("equal loads: picked only %v", seen)
	}
	// ... unless the session read from one of them last: that one.
	for _, prefer := range []string{"s1", "s2"} {
		for range 50 {
			if b, _, _ := v.pickRead(0, 0, loads{}, -1, prefer); b.Name != prefer {
				t.Fatalf("equal loads, last read on %s: picked %s", prefer, b.Name)
			}
		}
	}
	// A busier preferred standby is not preferred.
	if b, _, _ := v.pickRead(0, 0, loads{"s1": 1}, -1, "s1"); b.Name != "s2" {
		t.Errorf("s1 busier but last read there: picked %s, want s2", b.Name)
	}
	// No standby and the primary not offered: nothing.
	if _, _, ok := v.pickRead(0, 1000, loads{}, -1, ""); ok {
		t.Error("picked something with no standby qualifying and the primary not offered")
	}
}

// Backends whose ValidUntil has passed get nothing: no writes to the
// primary, no reads from a standby, not even the primary as a read's
// fallback; before it they serve as usual. The view is built while they
// are current and asked after they expire, as in a router process frozen
// past its fence (the clock is read where a backend is chosen).
func TestExpiredBackendsGetNothing(t *testing.T) {
	until := time.Now().Add(50 * time.Millisecond)
	bs := []Backend{
		{Name: "p", Host: "10.0.0.1", Port: 5432, Primary: true, Healthy: true, ValidUntil: until},
		{Name: "s1", Host: "10.0.0.2", Port: 5432, Healthy: true, ValidUntil: until},
	}
	v := newView(bs, nil, time.Now())
	if b, ok := v.primaryBackend(); !ok || b.Name != "p" {
		t.Fatalf("before ValidUntil: primary %q (%v), want p", b.Name, ok)
	}
	if b, ok := v.pickStandby(0, 0); !ok || b.Name != "s1" {
		t.Fatalf("before ValidUntil: standby %q (%v), want s1", b.Name, ok)
	}
	for time.Now().Before(until) {
		time.Sleep(until.Sub(time.Now()) + time.Millisecond) // waiting out a clock, not another goroutine
	}
	if b, ok := v.primaryBackend(); ok {
		t.Fatalf("after ValidUntil: primary %q still chosen for writes", b.Name)
	}
	if b, ok := v.pickStandby(0, 0); ok {
		t.Fatalf("after ValidUntil: standby %q still chosen for reads", b.Name)
	}
	if b, toPrimary, ok := v.pickRead(0, 0, loads{}, 0, ""); ok {
		t.Fatalf("after ValidUntil: read sent to %q (to primary: %v)", b.Name, toPrimary)
	}
	// Zero means no expiry.
	bs[0].ValidUntil, bs[1].ValidUntil = time.Time{}, time.Time{}
	if _, ok := newView(bs, nil, time.Now()).primaryBackend(); !ok {
		t.Fatal("a backend without ValidUntil is never expired")
	}
}

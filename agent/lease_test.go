package agent

import (
	"testing"
	"time"
)

func TestContactBound(t *testing.T) {
	since := time.Date(2026, 12, 6, 3, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return since.Add(time.Duration(ms) * time.Millisecond) }
	none := time.Time{}
	for _, c := range []struct {
		name    string
		voters  int
		own     time.Time
		reports []time.Time // sent in this order; fewer than asked: the rest never answer
		asked   int
		want    time.Time
	}{
		{"three: the other survivor heard from the old leader later than this node", 3, at(-900), []time.Time{at(-700)}, 2, at(-700)},
		{"three: this node heard latest", 3, at(-600), []time.Time{at(-800)}, 2, at(-600)},
		{"three: the dead member does not answer, the other does", 3, at(-900), []time.Time{none, at(-650)}, 2, at(-650)},
		{"three: nobody else answers: no quorum, the election counts", 3, at(-900), []time.Time{none, none}, 2, since},
		{"three: nobody answers in time", 3, at(-900), nil, 2, since},
		{"a member that still leads reports now: never later than the election", 3, at(-900), []time.Time{at(50)}, 2, since},
		{"five: two others make a quorum", 5, at(-900), []time.Time{at(-800), none, at(-500)}, 4, at(-500)},
		{"five: one other is no quorum", 5, at(-900), []time.Time{at(-800), none, none, none}, 4, since},
		{"five: the quorum's answer is taken before the last member's", 5, at(-900), []time.Time{at(-800), at(-850), at(-100)}, 4, at(-800)},
		{"no member could be asked", 3, at(-900), nil, 0, since},
	} {
		t.Run(c.name, func(t *testing.T) {
			reports := make(chan time.Time, len(c.reports))
			for _, r := range c.reports {
				reports <- r
			}
			done := make(chan struct{})
			timer := time.AfterFunc(100*time.Millisecond, func() { close(done) })
			defer timer.Stop()
			if got := contactBound(since, c.own, c.voters, c.asked, reports, done); !got.Equal(c.want) {
				t.Errorf("contactBound = %s after the election, want %s", got.Sub(since), c.want.Sub(since))
			}
		})
	}
}

func TestRenewalBudget(t *testing.T) {
	end := time.Date(2026, 12, 6, 3, 0, 0, 0, time.UTC)
	const roundTrip = 250 * time.Millisecond
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	for _, c := range []struct {
		name  string
		since time.Duration // how long ago the lease ended
		want  time.Duration
	}{
		{"noticed at once: a try that ends 100 ms after the lease", 0, ms(100)},
		{"noticed one fence tick late", ms(25), ms(75)},
		{"too little left for a round trip: stop at once", ms(85), 0},
		{"past the try's end, within the margin: stop at once", ms(200), 0},
		{"at the leader's earliest promotion: a freeze, ask once", fenceMargin, roundTrip},
		{"woken long after: ask once before acting on it", 20 * time.Second, roundTrip},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := renewalBudget(end, end.Add(c.since), roundTrip); got != c.want {
				t.Errorf("renewalBudget %v after the lease ended = %v, want %v", c.since, got, c.want)
			}
		})
	}
	// However the budget falls, a try made within the margin ends before
	// the leader may promote, with time left for the stop.
	for since := time.Duration(0); since < fenceMargin; since += ms(5) {
		if b := renewalBudget(end, end.Add(since), roundTrip); b > 0 && since+b > fenceMargin-ms(100) {
			t.Errorf("a try %v after the lease ended may last %v: it ends %v into the %v margin", since, b, since+b, fenceMargin)
		}
	}
}

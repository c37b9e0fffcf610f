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

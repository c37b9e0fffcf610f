package chaos

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// TestSchedule checks that every kind can be drawn and that the short
// campaign injects each exactly once (no root needed).
func TestSchedule(t *testing.T) {
	for _, k := range Kinds {
		if weight[k] <= 0 {
			t.Errorf("kind %s has no weight: the long campaign never injects it", k)
		}
	}
	if len(weight) != len(Kinds) {
		t.Errorf("%d weights for %d kinds", len(weight), len(Kinds))
	}
	opts := Options{Short: true}.withDefaults()
	s := &scheduler{opts: opts, rng: rand.New(rand.NewPCG(1, 2))}
	var got []Kind
	for n := 1; n <= opts.Faults; n++ {
		got = append(got, s.pick(n))
	}
	slices.Sort(got)
	want := slices.Clone(Kinds)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("short campaign injects %v, want every kind once: %v", got, want)
	}
}

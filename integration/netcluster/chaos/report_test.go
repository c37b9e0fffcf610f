package chaos

import (
	"strings"
	"testing"
	"time"
)

func TestFenceSummary(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	got := FenceSummary(map[string][]time.Duration{"h1": {ms(3), ms(400)}, "h2": {ms(5)}})
	for _, want := range []string{"3 freezes", "p50 5ms", "max 400ms (h1)", "1 later than the leader's 250ms margin"} {
		if !strings.Contains(got, want) {
			t.Errorf("FenceSummary = %q, want it to say %q", got, want)
		}
	}
	if got := FenceSummary(nil); !strings.Contains(got, "no primary was frozen") {
		t.Errorf("FenceSummary(nil) = %q", got)
	}
}

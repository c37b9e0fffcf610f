package chaos

import (
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/integration/netcluster"
)

func TestFenceSummary(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	d := func(after, gap int) netcluster.FenceDelay {
		return netcluster.FenceDelay{AfterLeaseEnd: ms(after), LoopGap: ms(gap)}
	}
	got := FenceSummary(map[string][]netcluster.FenceDelay{"h1": {d(3, 25), d(400, 5000), d(300, 25)}, "h2": {d(5, 25)}})
	for _, want := range []string{"4 freezes", "p50 300ms", "max 400ms (h1)", "2 later than the leader's 250ms margin, of which 1 while the agent was running (latest 300ms, h1)"} {
		if !strings.Contains(got, want) {
			t.Errorf("FenceSummary = %q, want it to say %q", got, want)
		}
	}
	if got := FenceSummary(nil); !strings.Contains(got, "no primary was frozen") {
		t.Errorf("FenceSummary(nil) = %q", got)
	}
}

package wait_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/internal/wait"
)

func TestUntilHolds(t *testing.T) {
	calls := 0
	err := wait.Until(context.Background(), 5*time.Second, func() (bool, string) {
		calls++
		return calls == 3, fmt.Sprintf("call %d", calls)
	})
	if err != nil || calls != 3 {
		t.Fatalf("Until = %v after %d calls, want nil after 3", err, calls)
	}
}

func TestUntilTimesOutWithLastDescription(t *testing.T) {
	calls := 0
	start := time.Now()
	err := wait.Until(context.Background(), 250*time.Millisecond, func() (bool, string) {
		calls++
		if calls > 1 {
			return false, "" // an empty description keeps the last one
		}
		return false, "first look"
	})
	if err == nil || !strings.Contains(err.Error(), "first look") || !strings.Contains(err.Error(), "250ms") {
		t.Fatalf("Until = %v, want a timeout naming 250ms and the last description", err)
	}
	if d := time.Since(start); d < 250*time.Millisecond || d > 2*time.Second {
		t.Errorf("Until returned after %s, want just over 250ms", d)
	}
	if calls < 3 || calls > 5 {
		t.Errorf("%d calls in 250ms, want about one per %s", calls, wait.Interval)
	}
}

func TestUntilStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := wait.Until(ctx, time.Minute, func() (bool, string) { return false, "never" })
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "never") {
		t.Fatalf("Until = %v, want context.Canceled with the last description", err)
	}
}

// fatalRecorder records For's failure instead of ending the test.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (r *fatalRecorder) Helper() {}
func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
}

func TestForNamesWhatAndLastDescription(t *testing.T) {
	r := &fatalRecorder{TB: t}
	wait.For(r, 150*time.Millisecond, "the primary", func() (bool, string) { return false, "no leader" })
	if !strings.Contains(r.msg, "waiting for the primary") || !strings.Contains(r.msg, "no leader") {
		t.Fatalf("For failed with %q, want it to name what and the last description", r.msg)
	}
	r.msg = ""
	wait.For(r, time.Second, "nothing", func() (bool, string) { return true, "" })
	if r.msg != "" {
		t.Fatalf("For failed with %q although the condition held", r.msg)
	}
}

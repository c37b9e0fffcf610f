// Package wait polls a condition until it holds: the one polling helper of
// the tests and harnesses (no bare sleeps). A condition returns whether it
// holds and a description of what it saw; when time runs out, the error or
// test failure carries the last non-empty description.
package wait

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// Interval is the pause between two calls of a condition.
const Interval = 100 * time.Millisecond

// Until calls cond every Interval until it returns true (nil), ctx ends or
// timeout passes (an error with cond's last description). cond runs on the
// caller's goroutine, at least once.
func Until(ctx context.Context, timeout time.Duration, cond func() (bool, string)) error {
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, seen := cond()
		if ok {
			return nil
		}
		if seen != "" {
			last = seen
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s; last seen: %s", timeout, last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w; last seen: %s", ctx.Err(), last)
		case <-time.After(Interval):
		}
	}
}

// For is Until for a test: it fails t (Fatal) naming what it waited for
// when cond does not hold within timeout. It may be called from a Cleanup
// function (it does not use t.Context, which is cancelled by then).
func For(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	if err := Until(context.Background(), timeout, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

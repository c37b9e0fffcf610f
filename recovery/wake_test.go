package recovery_test

import (
	"testing"
	"time"

	"github.com/pgha/pgha/internal/wait"
	"github.com/pgha/pgha/postgres"
)

// A standby that failed to reach its upstream sleeps
// wal_retrieve_retry_interval before it tries again; after a failover the
// new primary's first commits wait for that sleep. WakeUntilStreaming wakes
// the startup process until it streams. The interval is an hour here, so
// without the wake the standby would not stream again within the test.
func TestWakeUntilStreaming(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	passFile := writeRolesPassFile(t)
	a, b := primaryAndStandby(t, ctx, passFile, func(c *postgres.Config) {
		c.Parameters = map[string]string{"wal_retrieve_retry_interval": "1h"}
	})
	port := a.Config().Port
	if err := a.Stop(ctx, postgres.StopFast); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 30*time.Second, "the standby to lose its upstream", func() (bool, string) {
		st := b.Status(ctx)
		return st.Running && !st.Streaming, "standby status " + mustJSON(st)
	})
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// The fixture: on its own the standby sleeps out the hour.
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if st := b.Status(ctx); st.Streaming {
			t.Fatalf("the standby streams again without a wake: %s", mustJSON(st))
		}
		time.Sleep(100 * time.Millisecond)
	}
	start := time.Now()
	if !b.WakeUntilStreaming(ctx, "127.0.0.1", port, 20*time.Second) {
		t.Fatalf("WakeUntilStreaming: the standby does not stream from port %d: %s", port, mustJSON(b.Status(ctx)))
	}
	t.Logf("streaming %v after the first wake", time.Since(start).Round(time.Millisecond))
	if st := b.Status(ctx); !st.Streaming || st.UpstreamPort != port {
		t.Errorf("after WakeUntilStreaming: %s", mustJSON(st))
	}
	// Streaming from another upstream than the one asked for is not done.
	if b.WakeUntilStreaming(ctx, "127.0.0.1", port+1, 300*time.Millisecond) {
		t.Error("WakeUntilStreaming reports streaming from a port the standby does not stream from")
	}
}

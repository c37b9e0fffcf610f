package routing

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/internal/itest"
	"github.com/pgha/pgha/internal/wait"
)

// A parameter that needs a restart, changed cluster-wide, then `restart
// --pending` while pgbench writes through the router in transaction mode:
// the standbys restart one at a time, the primary by a switchover; pgbench
// sees no error, the setting is in force everywhere and pending nowhere.
func TestRollingRestartUnderPgbench(t *testing.T) {
	lc, old := startCluster(t)
	ctx := context.Background()
	api := lc.Nodes()[0].APIURL
	pgha := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(agentBinary, append(args, "--api", api)...).CombinedOutput()
		if err != nil {
			t.Fatalf("pgha-agent %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out, err := pgbench(ctx, lc.RouterAddr(), "-i", "-s", "1", "-q", "postgres"); err != nil {
		t.Fatalf("pgbench -i through the router: %v\n%s", err, out)
	}
	pgha("edit-config", "--pg", "max_prepared_transactions=5")
	wait.For(t, 30*time.Second, "max_prepared_transactions pending on every member", func() (bool, string) {
		v, err := lc.View(ctx)
		if err != nil {
			return false, err.Error()
		}
		n := 0
		for _, m := range v.Members {
			if slices.Contains(m.PendingRestart, "max_prepared_transactions") {
				n++
			}
		}
		return n == 3, itest.Describe(v)
	})

	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() { // rate-limited, as in TestSwitchoverUnderPgbench
		out, err := pgbench(ctx, lc.RouterAddr(), "-n", "-c", "8", "-j", "2", "-T", "25", "-R", "300", "-M", "prepared", "postgres")
		done <- result{out, err}
	}()
	out := pgha("restart", "--pending")
	t.Logf("restart --pending:\n%s", out)
	r := <-done
	if r.err != nil || strings.Contains(r.out, "aborted") || strings.Contains(r.out, "error") {
		t.Fatalf("pgbench saw errors through the rolling restart: %v\n%s", r.err, r.out)
	}
	if processed(r.out) == 0 {
		t.Fatalf("pgbench processed nothing:\n%s", r.out)
	}
	v := itest.WaitHealthy(t, lc, 3, time.Minute)
	if itest.Primary(v) == old {
		t.Errorf("the primary is still %s: the rolling restart did not switch over", old)
	}
	for _, m := range v.Members {
		if len(m.PendingRestart) > 0 {
			t.Errorf("%s still has settings pending a restart: %v", m.Name, m.PendingRestart)
		}
		n := itest.QueryInt(t, itest.Connect(t, lc.Node(m.Name).PGPort), "SELECT current_setting('max_prepared_transactions')::int")
		if n != 5 {
			t.Errorf("%s: max_prepared_transactions %d, want 5", m.Name, n)
		}
	}
	t.Logf("rolling restart under pgbench: 0 errors, %d transactions, primary %s -> %s", processed(r.out), old, itest.Primary(v))

	// A standby restarted while reads run on it: the leader's router
	// drains it first (no new reads, the running ones finish), so no read
	// fails. Without the drain the reads in flight get 57P01.
	var standby string
	for _, m := range v.Members {
		if m.Name != itest.Primary(v) {
			standby = m.Name
			break
		}
	}
	direct := itest.Connect(t, lc.Node(standby).PGPort)
	const longRead = "SELECT inet_server_port() FROM pg_sleep(0.5)"
	stop := make(chan struct{})
	type readResult struct {
		onStandby int
		err       error
	}
	results := make(chan readResult, 4)
	for range 4 {
		go func() {
			var res readResult
			defer func() { results <- res }()
			conn, err := dialRouter(ctx, lc.RouterReadOnlyAddr())
			if err != nil {
				res.err = err
				return
			}
			defer conn.Close(ctx)
			for {
				select {
				case <-stop:
					return
				default:
				}
				var port int
				if err := conn.QueryRow(ctx, longRead).Scan(&port); err != nil {
					res.err = err
					return
				}
				if port == lc.Node(standby).PGPort {
					res.onStandby++
				}
			}
		}()
	}
	wait.For(t, 30*time.Second, "reads running on "+standby, func() (bool, string) {
		n := itest.QueryInt(t, direct, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = '"+longRead+"'")
		return n > 0, fmt.Sprintf("%d running", n)
	})
	direct.Close(ctx)
	out = pgha("restart", standby)
	t.Logf("restart %s with reads on it:\n%s", standby, out)
	close(stop)
	onStandby := 0
	for range 4 {
		res := <-results
		if res.err != nil {
			t.Errorf("a read through the read-only port while %s restarted: %v", standby, res.err)
		}
		onStandby += res.onStandby
	}
	if onStandby == 0 {
		t.Errorf("no read was served by %s: the restart proved nothing", standby)
	}
}

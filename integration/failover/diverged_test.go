package failover

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/internal/itest"
	"github.com/pgha/pgha/internal/localcluster"
	"github.com/pgha/pgha/internal/wait"
)

// TestDivergedStandbyIsRewound: a standby that received WAL the promoted
// standby never got has gone past the fork of the new timeline. PostgreSQL
// alone retries that forever ("new timeline N forked off current database
// system timeline M before current recovery point"); the agent must rewind
// it onto the new primary's timeline.
//
// The primary A has the synchronous standby B and the other standby C. The
// WAL sender to C is stopped (SIGSTOP, on the primary: what C's walreceiver
// already holds in its socket buffer cannot leak to it later), rows go to A
// and B only, A's host is lost, and an operator forces C, which lacks them,
// to be the primary (paused cluster, `pgha-agent failover --candidate C`).
// B must be rewound onto C's timeline: without its extra rows, with all of
// C's, streaming from C.
func TestDivergedStandbyIsRewound(t *testing.T) {
	lc := itest.NewCluster(t, agentBinary, 3)
	if err := lc.StartAll(); err != nil {
		t.Fatal(err)
	}
	itest.WaitHealthy(t, lc, 3, 90*time.Second)
	v0 := awaitOneSyncStandby(t, lc)
	a := itest.PrimaryOf(t, v0)
	b := v0.SyncStandbys[0]
	var c string
	for _, m := range v0.Members {
		if m.Name != a.Name && m.Name != b {
			c = m.Name
		}
	}
	nb, nc := lc.Node(b), lc.Node(c)
	t.Logf("primary %s, synchronous standby %s, held-back standby %s", a.Name, b, c)

	ctx := context.Background()
	pa := itest.Connect(t, a.Port)
	mustExec(t, pa, "CREATE TABLE fork_rows (id int PRIMARY KEY)")
	mustExec(t, pa, "INSERT INTO fork_rows SELECT generate_series(1, 100)")
	for _, n := range []*localcluster.Node{nb, nc} {
		awaitCount(t, n, "SELECT count(*) FROM fork_rows", 100)
	}

	sender := itest.QueryInt(t, pa, fmt.Sprintf("SELECT pid FROM pg_stat_replication WHERE application_name = '%s'", c))
	if err := syscall.Kill(int(sender), syscall.SIGSTOP); err != nil {
		t.Fatalf("stop the WAL sender to %s: %v", c, err)
	}
	mustExec(t, pa, "INSERT INTO fork_rows SELECT generate_series(101, 200)") // acknowledged by B
	awaitCount(t, nb, "SELECT count(*) FROM fork_rows", 200)
	if n := itest.QueryInt(t, itest.Connect(t, nc.PGPort), "SELECT count(*) FROM fork_rows"); n != 100 {
		t.Fatalf("%s has %d rows, want 100: its WAL sender was not held back", c, n)
	}

	cli(t, lc, "pause")
	// KillHost kills the stopped WAL sender with the rest of A's
	// PostgreSQL: left alive, it would keep A's shared memory attached and
	// pg_rewind could not run on A later.
	lc.KillHost(lc.Node(a.Name))
	wait.For(t, 20*time.Second, "the others to see "+a.Name+" gone", func() (bool, string) {
		v, err := lc.View(ctx)
		if err != nil {
			return false, err.Error()
		}
		return v.RaftLeader != "" && v.RaftLeader != a.Name && !memberOf(v, a.Name).Reachable, itest.Describe(v)
	})
	// C is outside the synchronous set and lacks B's rows: a failover to it
	// is refused without --force (once A's fence deadline has passed, for
	// that reason alone), and done with it.
	wait.For(t, 20*time.Second, "a failover to "+c+" to be refused for lacking acknowledged commits", func() (bool, string) {
		out, err := cliErr(lc, "failover", "--candidate", c)
		if err == nil {
			t.Fatalf("failover to %s, which lacks acknowledged commits, was accepted without --force: %s", c, out)
		}
		return strings.Contains(out, "may lack acknowledged commits"), strings.TrimSpace(out)
	})
	out := cli(t, lc, "failover", "--candidate", c, "--force")
	t.Logf("forced failover: %s", strings.TrimSpace(out))
	// Resumed, C is restarted in place if it ever has to fence itself
	// (two agents left and a busy machine); with A silent, no one else
	// may be promoted (A may hold acknowledged commits of epoch 2).
	cli(t, lc, "resume")

	// B rejoins C's timeline by rewind and streams from C.
	var seen []string
	wait.For(t, 90*time.Second, b+" to stream from "+c+" on its timeline after a rewind", func() (bool, string) {
		v, err := lc.View(ctx)
		if err != nil {
			return false, err.Error()
		}
		p, mb := memberOf(v, c), memberOf(v, b)
		if s := fmt.Sprintf("%s/TL%d", mb.State, mb.Timeline); len(seen) == 0 || seen[len(seen)-1] != s {
			seen = append(seen, s)
		}
		ok := itest.Primary(v) == c && p.State == "running" && mb.State == "streaming" &&
			mb.Timeline == p.Timeline && mb.RejoinedBy == "rewind"
		return ok, itest.Describe(v) + fmt.Sprintf(" %s TL %d rejoined by %q, %s TL %d", b, mb.Timeline, mb.RejoinedBy, c, p.Timeline)
	})
	t.Logf("%s was seen as: %s", b, strings.Join(seen, " -> "))

	pc := itest.Connect(t, nc.PGPort)
	tl := itest.QueryInt(t, pc, "SELECT timeline_id FROM pg_control_checkpoint()")
	pb := itest.Connect(t, nb.PGPort)
	var status string
	var port, tli int64
	if err := pb.QueryRow(ctx, "SELECT status, sender_port, received_tli FROM pg_stat_wal_receiver").Scan(&status, &port, &tli); err != nil {
		t.Fatalf("pg_stat_wal_receiver on %s: %v", b, err)
	}
	if status != "streaming" || int(port) != nc.PGPort || tli < tl || tli < 2 {
		t.Errorf("%s's WAL receiver: %s from port %d on timeline %d; want streaming from %s (port %d) on timeline %d", b, status, port, tli, c, nc.PGPort, tl)
	}

	// A row written on the new primary reaches B; B holds exactly C's rows:
	// the 100 both had, not the 100 only B had received.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := pc.Exec(wctx, "INSERT INTO fork_rows VALUES (1000)"); err != nil {
		t.Fatalf("write on the new primary %s: %v", c, err)
	}
	want := ids(t, pc)
	if len(want) != 101 || want[99] != 100 || want[100] != 1000 {
		t.Fatalf("the new primary %s holds %d rows (%v ... ), want 1..100 and 1000", c, len(want), want[max(0, len(want)-3):])
	}
	wait.For(t, 30*time.Second, b+" to hold exactly the new primary's rows", func() (bool, string) {
		got := ids(t, pb)
		return slices.Equal(got, want), fmt.Sprintf("%d rows, last %v", len(got), got[max(0, len(got)-3):])
	})

	// The old primary rejoins too, and the cluster is whole again.
	if err := lc.Start(lc.Node(a.Name)); err != nil {
		t.Fatal(err)
	}
	v := itest.WaitHealthy(t, lc, 3, 90*time.Second)
	if m := memberOf(v, a.Name); m.RejoinedBy != "rewind" {
		t.Errorf("old primary %s rejoined by %q, want rewind", a.Name, m.RejoinedBy)
	}
}

// awaitOneSyncStandby waits until the sync set is one standby.
func awaitOneSyncStandby(t *testing.T, lc *localcluster.Cluster) (v agent.ClusterView) {
	t.Helper()
	wait.For(t, 30*time.Second, "exactly one synchronous standby", func() (bool, string) {
		var err error
		v, err = lc.View(context.Background())
		if err != nil {
			return false, err.Error()
		}
		return len(v.SyncStandbys) == 1 && localcluster.Healthy(v, 3), itest.Describe(v)
	})
	return v
}

func mustExec(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// awaitCount waits until a query on n's PostgreSQL returns want.
func awaitCount(t *testing.T, n *localcluster.Node, sql string, want int64) {
	t.Helper()
	wait.For(t, 30*time.Second, fmt.Sprintf("%s on %s to return %d", sql, n.Name, want), func() (bool, string) {
		conn, err := itest.Dial(context.Background(), n.PGPort)
		if err != nil {
			return false, err.Error()
		}
		defer conn.Close(context.Background())
		var got int64
		if err := conn.QueryRow(context.Background(), sql).Scan(&got); err != nil {
			return false, err.Error()
		}
		return got == want, fmt.Sprint(got)
	})
}

// ids lists fork_rows' ids in order.
func ids(t *testing.T, conn *pgx.Conn) []int64 {
	t.Helper()
	rows, err := conn.Query(context.Background(), "SELECT id FROM fork_rows ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	return got
}

package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/pgha/pgha/internal/itest"
	"github.com/pgha/pgha/internal/wait"
)

// TestAdoptNewestData: three existing data directories are adopted with
// their Raft state lost, and the one with the newest data becomes the
// primary, although its name sorts last. node3 is the primary; the
// standbys stop; node3 commits rows only it has (synchronous_commit=local)
// and stops. All three PostgreSQL servers are stopped, so none reports an
// LSN through SQL: before the fix node1 was chosen by name, and node3's
// rows were rewound away.
func TestAdoptNewestData(t *testing.T) {
	lc := itest.NewCluster(t, agentBinary, 3)
	if err := lc.StartAll(); err != nil {
		t.Fatal(err)
	}
	v := itest.WaitHealthy(t, lc, 3, 90*time.Second)
	t.Logf("healthy: %s", itest.Describe(v))
	if itest.Primary(v) != "node3" {
		wait.For(t, 60*time.Second, "switchover to node3", func() (bool, string) {
			out, err := exec.Command(agentBinary, "switchover", "--candidate", "node3", "--api", lc.Node("node1").APIURL+","+lc.Node("node2").APIURL).CombinedOutput()
			return err == nil, string(out)
		})
		wait.For(t, 90*time.Second, "node3 primary and the cluster healthy", func() (bool, string) {
			v, err := lc.View(context.Background())
			if err != nil {
				return false, err.Error()
			}
			return itest.Primary(v) == "node3" && len(itest.WritablePrimaries(lc)) == 1, itest.Describe(v)
		})
		v = itest.WaitHealthy(t, lc, 3, 90*time.Second)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pc := itest.Connect(t, lc.Node("node3").PGPort)
	if _, err := pc.Exec(ctx, "CREATE TABLE adopt (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.Exec(ctx, "INSERT INTO adopt SELECT generate_series(1, 100)"); err != nil {
		t.Fatal(err)
	}
	pc.Close(ctx)

	// The standbys stop first (their agents stop their PostgreSQL), then
	// node3 commits without them and stops.
	for _, n := range []string{"node1", "node2"} {
		if err := lc.Stop(ctx, lc.Node(n)); err != nil {
			t.Fatal(err)
		}
	}
	pc = itest.Connect(t, lc.Node("node3").PGPort)
	if _, err := pc.Exec(ctx, "SET synchronous_commit = local"); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.Exec(ctx, "INSERT INTO adopt SELECT generate_series(101, 300)"); err != nil {
		t.Fatal(err)
	}
	pc.Close(ctx)
	if err := lc.Stop(ctx, lc.Node("node3")); err != nil {
		t.Fatal(err)
	}
	for _, n := range lc.Nodes() {
		if pid := n.PostmasterPID(); pid != 0 && itest.ProcessAlive(pid) {
			t.Fatalf("%s: PostgreSQL still runs (pid %d)", n.Name, pid)
		}
		// Raft state lost: the cluster is initialised anew over the data.
		if err := os.RemoveAll(n.AgentDir); err != nil {
			t.Fatal(err)
		}
	}

	if err := lc.StartAll(); err != nil {
		t.Fatal(err)
	}
	v = itest.WaitHealthy(t, lc, 3, 120*time.Second)
	if p := itest.Primary(v); p != "node3" {
		t.Fatalf("adopted %s's data, want node3's (the newest): %s", p, itest.Describe(v))
	}
	// Chosen by comparing the three WAL ends, not because it was alone.
	var logs []byte
	for _, n := range lc.Nodes() {
		b, _ := os.ReadFile(n.Log)
		logs = append(logs, b...)
	}
	const reason = "initialise the cluster on node3's data directory: its WAL"
	if !bytes.Contains(logs, []byte(reason)) {
		t.Errorf("no leader logged %q", reason)
	}
	for _, line := range bytes.Split(logs, []byte("\n")) {
		if bytes.Contains(line, []byte(reason)) {
			t.Logf("%s", line)
		}
	}
	pc = itest.Connect(t, lc.Node("node3").PGPort)
	defer pc.Close(ctx)
	if n := itest.QueryInt(t, pc, "SELECT count(*) FROM adopt"); n != 300 {
		t.Errorf("%d rows after adoption, want 300", n)
	}
}

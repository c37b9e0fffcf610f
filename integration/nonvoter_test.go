package integration

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgha/pgha/internal/itest"
	"github.com/pgha/pgha/internal/wait"
	"github.com/pgha/pgha/postgres/pgtest"
)

// TestNonVoters: three voters and two members added later, which join Raft
// as non-voters (cluster.voter defaults to false off cluster.members). The
// non-voters stream and take reads; they never count towards the quorum,
// never lead, are never promoted (not tagged candidate) and so never sit
// in the synchronous set: losing both blocks no commit, and when the
// primary's host is lost a voter is promoted.
func TestNonVoters(t *testing.T) {
	lc := itest.NewCluster(t, agentBinary, 3)
	if err := lc.StartAll(); err != nil {
		t.Fatal(err)
	}
	itest.WaitHealthy(t, lc, 3, 90*time.Second)
	for _, name := range []string{"node4", "node5"} {
		n, err := lc.AddNode(name, pgtest.FreePort(t), pgtest.FreePort(t), pgtest.FreePort(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := lc.Start(n); err != nil {
			t.Fatal(err)
		}
	}
	v := itest.WaitHealthy(t, lc, 5, 120*time.Second)
	voters := map[string]bool{"node1": true, "node2": true, "node3": true}
	for _, m := range v.Members {
		want := "nonvoter"
		if voters[m.Name] {
			want = "voter"
		}
		if m.RaftSuffrage != want || m.NoFailover == voters[m.Name] {
			t.Fatalf("%s: raft_suffrage %q nofailover %v; want %s, promotable only if a voter", m.Name, m.RaftSuffrage, m.NoFailover, want)
		}
	}
	out, err := exec.Command(agentBinary, "voters", "--api", lc.Node("node4").APIURL).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "3 voters: a quorum is 2") || strings.Count(string(out), "nonvoter") != 2 {
		t.Fatalf("pgha-agent voters: %v\n%s", err, out)
	}
	t.Logf("pgha-agent voters:\n%s", out)

	ctx := context.Background()
	// Reads through the router's read-only port spread over all four
	// standbys, non-voters included: each session keeps its standby, so
	// open sessions until every one has answered.
	_, roPort, _ := net.SplitHostPort(lc.RouterReadOnlyAddr())
	port, _ := strconv.Atoi(roPort)
	primary := itest.PrimaryOf(t, v)
	standbys := map[int]string{}
	for _, n := range lc.Nodes() {
		if n.Name != primary.Name {
			standbys[n.PGPort] = n.Name
		}
	}
	seen := map[string]int{}
	wait.For(t, 30*time.Second, "reads on all four standbys", func() (bool, string) {
		conn, err := itest.Dial(ctx, port)
		if err != nil {
			return false, err.Error()
		}
		defer conn.Close(ctx)
		var p int
		if err := conn.QueryRow(ctx, "SELECT inet_server_port()").Scan(&p); err != nil {
			return false, err.Error()
		}
		name, ok := standbys[p]
		if !ok {
			t.Fatalf("a read through the read-only port ran on port %d, no standby's", p)
		}
		seen[name]++
		return len(seen) == 4, fmt.Sprintf("reads per standby %v", seen)
	})

	// pgha-agent add gives node4 and node5 a vote in place (five voters, a
	// quorum of three) and --nonvoter takes it back; the cluster commits
	// and the primary takes writes throughout.
	pw := itest.Connect(t, lc.Node(primary.Name).PGPort)
	mustExec(t, pw, "CREATE TABLE suffrage_acks (id int)")
	for i, c := range []struct {
		args  []string
		want  string
		votes int
	}{
		{[]string{"add", "node4"}, "node4 is a voter; 4 voters, a quorum is 3", 4},
		{[]string{"add", "node5"}, "node5 is a voter; 5 voters, a quorum is 3", 5},
		// Five voters commit (a pause is a Raft entry) and take writes.
		{[]string{"pause"}, "", 5},
		{[]string{"resume"}, "", 5},
		{[]string{"add", "node5", "--nonvoter"}, "node5 is a non-voter; 4 voters, a quorum is 3", 4},
		{[]string{"add", "node4", "--nonvoter"}, "node4 is a non-voter; 3 voters, a quorum is 2", 3},
	} {
		out, err := exec.Command(agentBinary, append(c.args, "--api", lc.Node("node5").APIURL)...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), c.want) {
			t.Fatalf("pgha-agent %s: %v\n%s", strings.Join(c.args, " "), err, out)
		}
		mustExec(t, pw, fmt.Sprintf("INSERT INTO suffrage_acks VALUES (%d)", i))
		v, err := lc.View(ctx)
		if err != nil {
			t.Fatal(err)
		}
		votes := 0
		for _, m := range v.Members {
			if m.RaftSuffrage == "voter" {
				votes++
			}
		}
		if paused := c.args[0] == "pause"; v.Pause != paused {
			t.Fatalf("after pgha-agent %s: pause %v", c.args[0], v.Pause)
		}
		if votes != c.votes {
			t.Fatalf("after pgha-agent %s: %d voters in /cluster, want %d", strings.Join(c.args, " "), votes, c.votes)
		}
	}
	// Three voters may not become two.
	if out, err := exec.Command(agentBinary, "add", "node1", "--nonvoter", "--api", lc.Node("node4").APIURL).CombinedOutput(); err == nil || !strings.Contains(string(out), "would leave 2 voters") {
		t.Fatalf("taking a vote from one of three voters: %v\n%s", err, out)
	}

	// Lose the primary's host: a voter is promoted, never a non-voter.
	old := lc.Node(primary.Name)
	lc.KillHost(old)
	var next string
	wait.For(t, 60*time.Second, "a new primary after the loss of "+old.Name, func() (bool, string) {
		v, err := lc.View(ctx)
		if err != nil {
			return false, err.Error()
		}
		next = itest.Primary(v)
		return next != "" && next != old.Name, itest.Describe(v)
	})
	if !voters[next] {
		t.Fatalf("the non-voter %s was promoted", next)
	}
	// Committed first, promoted after: written once it takes writes.
	pc := itest.Connect(t, lc.Node(next).PGPort)
	mustExec(t, pc, "CREATE TABLE nonvoter_acks (id int)")

	// Lose both non-voters as well: one voter down and two non-voters down
	// leave two voters of three, a quorum, and no commit waits for a
	// non-voter (never synchronous).
	lc.KillHost(lc.Node("node4"))
	lc.KillHost(lc.Node("node5"))
	mustExec(t, pc, "INSERT INTO nonvoter_acks VALUES (1)")
	v, err = lc.View(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(v.SyncStandbys, func(s string) bool { return !voters[s] }) || v.RaftLeader == "node4" || v.RaftLeader == "node5" || !voters[v.RaftLeader] {
		t.Fatalf("a non-voter leads Raft or is synchronous: %s", itest.Describe(v))
	}
}

// mustExec runs sql until it succeeds (a primary just promoted takes
// writes a moment after the commit that names it), for at most 30 s.
func mustExec(t *testing.T, c *pgx.Conn, sql string) {
	t.Helper()
	wait.For(t, 30*time.Second, sql, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := c.Exec(ctx, sql)
		return err == nil, fmt.Sprint(err)
	})
}

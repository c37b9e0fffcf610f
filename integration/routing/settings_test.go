package routing

import (
	"context"
	"fmt"
	"os/exec"
	"testing"
	"time"

	"github.com/pgha/pgha/internal/itest"
	"github.com/pgha/pgha/internal/wait"
)

// The router's routing settings are cluster-wide (issue 19): turning load
// balancing off with edit-config moves an open session's reads to the
// primary without reconnecting, and the router a new leader starts after
// the old one's agent dies keeps the replicated setting, although every
// node's file still says load_balance: true.
func TestRouterSettingsAreClusterWide(t *testing.T) {
	lc, _ := startCluster(t)
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
	primaryPort := func() int {
		v, err := lc.View(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return lc.Node(itest.Primary(v)).PGPort
	}
	// Where the reads of a session through the router go: the ports of
	// the servers that answered n reads.
	readsOn := func(n int) (map[int]int, error) {
		conn, err := dialRouter(ctx, lc.RouterAddr())
		if err != nil {
			return nil, err
		}
		defer conn.Close(ctx)
		ports := map[int]int{}
		for range n {
			var port int
			if err := conn.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
				return nil, err
			}
			ports[port]++
		}
		return ports, nil
	}
	wait.For(t, 30*time.Second, "reads through the router on a standby", func() (bool, string) {
		ports, err := readsOn(10)
		return err == nil && ports[primaryPort()] < 10, fmt.Sprintf("%v %v (primary on %d)", ports, err, primaryPort())
	})

	session, err := dialRouter(ctx, lc.RouterAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close(ctx)
	pgha("edit-config", "--set", "router.load_balance=false")
	wait.For(t, 10*time.Second, "the open session's reads on the primary", func() (bool, string) {
		var port int
		if err := session.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
			t.Fatalf("the session opened before the change: %v", err)
		}
		return port == primaryPort(), fmt.Sprintf("read on %d, primary on %d", port, primaryPort())
	})

	v, err := lc.View(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leader := lc.Node(v.RaftLeader)
	lc.KillAgent(leader)
	t.Cleanup(func() { _ = lc.Start(leader) })
	wait.For(t, 30*time.Second, "a router under a new leader", func() (bool, string) {
		v, err := lc.View(ctx)
		if err != nil || v.RaftLeader == "" || v.RaftLeader == leader.Name {
			return false, fmt.Sprintf("leader %q (%v)", v.RaftLeader, err)
		}
		_, err = readsOn(1)
		return err == nil, fmt.Sprint(err)
	})
	ports, err := readsOn(20)
	if err != nil {
		t.Fatal(err)
	}
	if ports[primaryPort()] != 20 {
		t.Errorf("the new leader's router sent reads to %v (primary on %d): it took its file's load_balance, not the cluster's", ports, primaryPort())
	}
	if err := lc.Start(leader); err != nil {
		t.Fatal(err)
	}
}

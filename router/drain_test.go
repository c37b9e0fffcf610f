package router_test

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgha/pgha/internal/wait"
	"github.com/pgha/pgha/postgres"
	"github.com/pgha/pgha/router"
)

// testIdleConnectionsEnded: the standby ends the router's idle server
// connections under it (a restart's fast shutdown, pg_terminate_backend,
// idle_session_timeout): each sent its FATAL and closed while in the
// pool. The reads after that must not get one of them (a rolling restart
// under pgbench failed pgbench's first read in CI).
func testIdleConnectionsEnded(t *testing.T, cl *cluster, noFast bool) {
	ctx := testContext(t)
	cfg := routerConfig(router.PoolTransaction)
	cfg.DisableFastPath = noFast
	tr := startRouter(t, cl, cfg)
	tr.topo.Update(cl.names[2], func(b *router.Backend) { b.NoLoadBalance = true })
	wait.For(t, 10*time.Second, "standby2 out of the read rotation", func() (bool, string) {
		return !tr.PoolNodes()[2].LoadBalanceNode, "topology change not applied"
	})
	// Fill standby1's pool with idle connections: concurrent reads.
	clients := make([]*pgx.Conn, 4)
	for i := range clients {
		clients[i] = connect(t, tr.rw, trustUser, "")
	}
	readAll := func(what string) {
		t.Helper()
		errs := make(chan error, len(clients))
		for _, c := range clients {
			go func() {
				_, err := c.Exec(ctx, "SELECT pg_sleep(0.05)")
				errs <- err
			}()
		}
		for range clients {
			if err := <-errs; err != nil {
				t.Fatalf("%s: %v", what, err)
			}
		}
	}
	readAll("reads that fill the pool")
	standby := cl.standbys[0]
	idle := idleTo(tr, net.JoinHostPort("127.0.0.1", strconv.Itoa(standby.Config().Port)))
	if idle == 0 {
		t.Fatal("no idle server connection to standby1 after its reads")
	}
	ended := 0
	err := standby.Query(ctx, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND usename = $1`, trustUser).Scan(&ended)
	})
	if err != nil || ended < idle {
		t.Fatalf("terminate the router's connections on standby1: %d ended (%d idle in the pool): %v", ended, idle, err)
	}
	wait.For(t, 10*time.Second, "the ended backends gone", func() (bool, string) {
		n := serverBackends(t, standby)
		return n == 0, strconv.Itoa(n) + " backends left"
	})
	for round := range 3 {
		readAll("reads after the standby ended the idle connections (round " + strconv.Itoa(round) + ")")
	}
}

// testDrainStandby: a standby marked Draining gets no new read, what runs
// on it finishes (Drain returns only then), its idle connections are
// closed, and it can then restart without a client seeing an error; once
// it is no longer draining it serves reads again.
func testDrainStandby(t *testing.T, cl *cluster, noFast bool) {
	ctx := testContext(t)
	cfg := routerConfig(router.PoolTransaction)
	cfg.DisableFastPath = noFast
	tr := startRouter(t, cl, cfg)
	tr.topo.Update(cl.names[2], func(b *router.Backend) { b.NoLoadBalance = true })
	wait.For(t, 10*time.Second, "standby2 out of the read rotation", func() (bool, string) {
		return !tr.PoolNodes()[2].LoadBalanceNode, "topology change not applied"
	})
	standby := cl.standbys[0]
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(standby.Config().Port))

	long := connect(t, tr.rw, trustUser, "")
	if s := tr.serverOf(t, long, "SELECT inet_server_port()"); s != "standby1" {
		t.Fatalf("read on %s, want standby1 (the only standby in rotation)", s)
	}
	// A read that runs through the drain. One Query message: with the
	// extended protocol pgx first sends Parse and Describe, during which
	// pg_stat_activity already shows the statement active, and the
	// transaction pool releases the connection before the Execute: the
	// wait below could see it "running" with nothing in use yet.
	longDone := make(chan error, 1)
	go func() {
		var port int
		err := long.QueryRow(ctx, "SELECT inet_server_port() FROM pg_sleep(1.5)", pgx.QueryExecModeSimpleProtocol).Scan(&port)
		if err == nil && cl.portName(port) != "standby1" {
			t.Errorf("the long read ran on %s", cl.portName(port))
		}
		longDone <- err
	}()
	wait.For(t, 10*time.Second, "the long read running on standby1", func() (bool, string) {
		n := serverRunning(t, tr, "SELECT inet_server_port() FROM pg_sleep(1.5)")
		return n == 1, strconv.Itoa(n) + " running"
	})
	tr.topo.Update(cl.names[1], func(b *router.Backend) { b.Draining = true })
	drained := make(chan error, 1)
	go func() {
		_, err := tr.Drain(ctx, addr)
		drained <- err
	}()
	wait.For(t, 10*time.Second, "the drain in the router's view", func() (bool, string) {
		return !tr.PoolNodes()[1].LoadBalanceNode, "not applied"
	})
	select {
	case err := <-drained:
		t.Fatalf("Drain returned (%v) while a read ran on the standby", err)
	case <-time.After(200 * time.Millisecond): // the read runs for 1.5 s
	}
	// New reads go elsewhere while it drains.
	other := connect(t, tr.rw, trustUser, "")
	for range 5 {
		if s := tr.serverOf(t, other, "SELECT inet_server_port()"); s == "standby1" {
			t.Fatal("a new read went to the draining standby")
		}
	}
	if err := <-longDone; err != nil {
		t.Fatalf("the read that ran through the drain: %v", err)
	}
	if err := <-drained; err != nil {
		t.Fatalf("Drain: %v", err)
	}
	if idle := idleTo(tr, addr); idle != 0 {
		t.Errorf("%d idle connections to the drained standby left open", idle)
	}
	// Restart it (fast) with reads going on: none fails.
	stop := make(chan struct{})
	readErr := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				readErr <- nil
				return
			default:
			}
			if _, err := other.Exec(ctx, "SELECT 1"); err != nil {
				readErr <- err
				return
			}
		}
	}()
	// Down while it restarts, as the agent reports it: its pool is
	// retired while draining, and a new one serves it afterwards.
	tr.topo.Update(cl.names[1], func(b *router.Backend) { b.Healthy = false })
	if err := standby.Restart(ctx, postgres.StopFast); err != nil {
		t.Fatal(err)
	}
	close(stop)
	if err := <-readErr; err != nil {
		t.Fatalf("a read while the drained standby restarted: %v", err)
	}
	tr.topo.Update(cl.names[1], func(b *router.Backend) { b.Draining, b.Healthy = false, true })
	// long has the retired pool in its cache, marked draining for good:
	// its reads must find the new pool (they spun in connect for ever).
	for _, c := range []*pgx.Conn{long, other} {
		wait.For(t, 30*time.Second, "reads on standby1 again", func() (bool, string) {
			qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			var port int
			if err := c.QueryRow(qctx, "SELECT inet_server_port()").Scan(&port); err != nil {
				t.Fatalf("a read after the drain and the restart: %v", err)
			}
			return cl.portName(port) == "standby1", "read on " + cl.portName(port)
		})
	}
}

// serverBackends counts the client backends of the test user on inst.
func serverBackends(t *testing.T, inst *postgres.Instance) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n := 0
	err := inst.Query(ctx, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND usename = $1`, trustUser).Scan(&n)
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// idleTo counts the router's idle server connections to addr.
func idleTo(tr *testRouter, addr string) int {
	n := 0
	for _, p := range tr.Snapshot().Pools {
		if p.Backend == addr {
			n += p.Idle
		}
	}
	return n
}

package router_test

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/pgha/pgha/router"
)

// testStandbyNotAnswering: a standby that accepts connections but does
// not log the router in within ServerConnectTimeout (overloaded: a VM
// with little CPU, 64 clients' backends to fork) is not the client's
// problem while the primary can serve: the read goes to the primary, as
// it does when the standby refuses connections. bench-router with a
// standby at an eighth of a core made clients fail with "log into ...:
// i/o timeout" before.
func testStandbyNotAnswering(t *testing.T, cl *cluster) {
	ctx := testContext(t)
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close() // accepted, never answered
		}
	}()
	cfg := routerConfig(router.PoolTransaction)
	cfg.ServerConnectTimeout = 300 * time.Millisecond
	tr := startRouter(t, cl, cfg)
	_, port, _ := net.SplitHostPort(silent.Addr().String())
	p, _ := strconv.Atoi(port)
	tr.topo.Update(cl.names[1], func(b *router.Backend) { b.Port = p })
	tr.topo.Update(cl.names[2], func(b *router.Backend) { b.Healthy = false })
	c := connect(t, tr.rw, trustUser, "")
	var inRecovery bool
	if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		t.Fatalf("a read while the only standby does not answer logins: %v; want it served by the primary", err)
	}
	if inRecovery {
		t.Error("the read was served by a standby; only the primary answers")
	}
}

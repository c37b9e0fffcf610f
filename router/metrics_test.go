package router_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/pgha/pgha/internal/wait"
	"github.com/pgha/pgha/router"
)

// scrape gathers reg and returns each sample by "name{label=value,...}"
// (labels in the order Prometheus sorts them); a histogram gives its
// count as name_count.
func scrape(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			key := mf.GetName()
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[key+"_count"] = float64(m.GetHistogram().GetSampleCount())
				out[key+"_sum"] = m.GetHistogram().GetSampleSum()
			}
		}
	}
	return out
}

func testMetrics(t *testing.T, cl *cluster) {
	ctx := testContext(t)
	cfg := routerConfig(router.PoolTransaction)
	cfg.PoolSize = 1 // so that a held transaction makes others wait
	cfg.QueryWaitTimeout = 500 * time.Millisecond
	tr := startRouter(t, cl, cfg)
	reg := prometheus.NewPedanticRegistry() // checks the descriptions against what is collected
	if err := reg.Register(tr.Collector()); err != nil {
		t.Fatal(err)
	}
	if problems, err := testutil.CollectAndLint(tr.Collector()); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	before := scrape(t, reg)
	for _, name := range []string{"pgha_router_clients_active", "pgha_router_server_connections{backend=primary,state=idle}",
		"pgha_router_server_connections{backend=standby2,state=active}", "pgha_router_queries_total{route=read_standby}"} {
		if _, ok := before[name]; !ok {
			t.Errorf("no %s before any client", name)
		}
	}

	// Reads until both standbys served one, so that each pool has
	// dialled: a session each (one session's reads stay on one standby
	// while they are alone; new sessions pick at random).
	standbys := map[string]bool{}
	for reads := 0; reads < 5 || len(standbys) < 2; reads++ {
		if reads == 60 {
			t.Fatalf("60 sessions' reads reached only %v", standbys)
		}
		s := connect(t, tr.rw, trustUser, "")
		standbys[tr.serverOf(t, s, "SELECT inet_server_port()")] = true
		s.Close(testContext(t))
	}
	c := connect(t, tr.rw, trustUser, "")
	tr.serverOf(t, c, "INSERT INTO kv VALUES ('metrics', 'm') ON CONFLICT (k) DO UPDATE SET v = 'm' RETURNING inet_server_port()")
	tr.serverOf(t, c, "SELECT inet_server_port()") // read-your-writes: the primary
	// A transaction holds the primary's only connection: another client
	// waits for it, in vain.
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO kv VALUES ('metrics-tx', 'm') ON CONFLICT (k) DO NOTHING"); err != nil {
		t.Fatal(err)
	}
	held := scrape(t, reg)
	c2 := connect(t, tr.rw, trustUser, "")
	if _, err := c2.Exec(ctx, "INSERT INTO kv VALUES ('metrics-wait', 'm') ON CONFLICT (k) DO NOTHING"); err == nil {
		t.Fatal("a write found a free connection in a pool of one that a transaction holds")
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// A refused login, a protocol error, and a server connection lost
	// under a query (counted as a server error).
	if c, err := pgx.Connect(ctx, connString(tr.rw, scramUser, "wrong")); err == nil {
		c.Close(ctx)
		t.Fatal("wrong password accepted")
	}
	conn, fe := rawSession(t, tr.rw)
	conn.Write([]byte{'z', 0, 0, 0, 4})
	expectProtocolError(t, conn, fe, "unknown message type")
	// (A raw client, which unlike pgx does not hang up at the server's
	// FATAL: the router sees the server connection drop under it.)
	conn, fe = rawSession(t, tr.rw)
	fe.Send(&pgproto3.Query{String: "SELECT pg_terminate_backend(pg_backend_pid())"})
	fe.Flush()
	var codes []string
	for {
		msg, err := fe.Receive()
		if err != nil {
			break
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			codes = append(codes, e.Code)
		}
	}
	if !slices.Equal(codes, []string{"57P01"}) {
		// The server said why; the router adds nothing (TestOneStateMachine).
		t.Fatalf("query that kills its server connection: errors %v, want the server's 57P01 alone", codes)
	}

	after := scrape(t, reg)
	moved := func(name string, min float64) {
		t.Helper()
		if d := after[name] - before[name]; d < min {
			t.Errorf("%s moved by %v, want at least %v (before %v, after %v)", name, d, min, before[name], after[name])
		}
	}
	moved("pgha_router_clients_accepted_total", 3)
	moved("pgha_router_clients_rejected_total", 1)
	moved("pgha_router_protocol_errors_total", 1)
	moved("pgha_router_queries_total{route=read_standby}", 5)
	moved("pgha_router_queries_total{route=write_primary}", 2)
	moved("pgha_router_queries_total{route=read_primary}", 1)
	moved("pgha_router_pool_waits_total", 1)
	moved("pgha_router_pool_wait_timeouts_total", 1)
	moved("pgha_router_server_errors_total", 1)
	moved("pgha_router_server_connects_total", 3)
	moved("pgha_router_pool_wait_seconds_count", 8)
	if after["pgha_router_pool_wait_seconds_sum"] < 0.4 { // the 500ms wait that timed out
		t.Errorf("pool wait sum %vs, want the timed-out wait in it", after["pgha_router_pool_wait_seconds_sum"])
	}
	if v := held["pgha_router_server_connections{backend=primary,state=active}"]; v != 1 {
		t.Errorf("during the transaction: %v active connections to the primary, want 1", v)
	}
	// Only c is left: the others were refused or ended by the router.
	wait.For(t, 10*time.Second, "one active client", func() (bool, string) {
		v := scrape(t, reg)["pgha_router_clients_active"]
		return v == 1, fmt.Sprintf("%v clients active, want 1", v)
	})
}

package router

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Prometheus metrics. The router keeps its own counters (Stats, pools,
// waitHistogram) for SHOW STATS anyway; the collector turns them into
// const metrics at scrape time, so nothing is registered globally and the
// hot path pays for no second set of counters.

var (
	descClientsActive = prometheus.NewDesc("pgha_router_clients_active",
		"Client sessions logged in now.", nil, nil)
	descClientsWaiting = prometheus.NewDesc("pgha_router_clients_waiting",
		"Clients waiting now for a server connection from a full pool.", nil, nil)
	descClientsAccepted = prometheus.NewDesc("pgha_router_clients_accepted_total",
		"Client sessions that logged in.", nil, nil)
	descClientsRejected = prometheus.NewDesc("pgha_router_clients_rejected_total",
		"Client connections refused before logging in: hba, authentication, max_client_conn, malformed startup, login timeout.", nil, nil)
	descProtocolErrors = prometheus.NewDesc("pgha_router_protocol_errors_total",
		"Client connections ended for a malformed or unexpected message.", nil, nil)
	descQueries = prometheus.NewDesc("pgha_router_queries_total",
		"Batches of statements routed, by where they went.", []string{"route"}, nil)
	descPoolWaits = prometheus.NewDesc("pgha_router_pool_waits_total",
		"Server connection requests that queued because their pool was at PoolSize.", nil, nil)
	descPoolWaitTimeouts = prometheus.NewDesc("pgha_router_pool_wait_timeouts_total",
		"Server connection requests that gave up after QueryWaitTimeout.", nil, nil)
	descServerErrors = prometheus.NewDesc("pgha_router_server_errors_total",
		"Server connections lost while a client used them.", nil, nil)
	descServerConnects = prometheus.NewDesc("pgha_router_server_connects_total",
		"Server connections opened and logged in.", nil, nil)
	descConnectErrors = prometheus.NewDesc("pgha_router_server_connect_errors_total",
		"Server connections that failed to open or log in.", nil, nil)
	descFastPath = prometheus.NewDesc("pgha_router_fast_path_transactions_total",
		"Transactions served on the router's event loop (lone read-only simple queries).", nil, nil)
	descFastHandBacks = prometheus.NewDesc("pgha_router_fast_path_handbacks_total",
		"Times the event loop handed a session back to the general path.", nil, nil)
	descServerConns = prometheus.NewDesc("pgha_router_server_connections",
		"Server connections now, by backend and state (active: lent to a client; idle: pooled).", []string{"backend", "state"}, nil)
	descPoolWait = prometheus.NewDesc("pgha_router_pool_wait_seconds",
		"Time a batch waited for a server connection, dialing a new one included.", nil, nil)
)

// waitBuckets are the upper bounds of pgha_router_pool_wait_seconds: from
// an idle pooled connection (microseconds) through a dial with SCRAM
// (milliseconds) to QueryWaitTimeout's default (120s).
var waitBuckets = [...]float64{0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120}

// waitHistogram counts durations into waitBuckets; any goroutine may
// observe, the collector reads. Counts are per bucket (not cumulative);
// the last one is +Inf.
type waitHistogram struct {
	counts   [len(waitBuckets) + 1]atomic.Uint64
	sumNanos atomic.Int64
}

func (h *waitHistogram) observe(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(waitBuckets) && s > waitBuckets[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumNanos.Add(int64(d))
}

// metric is the histogram as a const metric. The count is the sum of the
// buckets read, so buckets and count agree even while observations land.
func (h *waitHistogram) metric() prometheus.Metric {
	buckets := make(map[float64]uint64, len(waitBuckets))
	var n uint64
	for i, ub := range waitBuckets {
		n += h.counts[i].Load()
		buckets[ub] = n
	}
	n += h.counts[len(waitBuckets)].Load()
	sum := time.Duration(h.sumNanos.Load()).Seconds()
	return prometheus.MustNewConstHistogram(descPoolWait, n, sum, buckets)
}

// Collector returns a prometheus.Collector of the router's metrics, to
// register with the registry that serves /metrics. Each call returns a new
// collector over the same router; register one per registry.
func (r *Router) Collector() prometheus.Collector { return collector{r} }

type collector struct{ r *Router }

func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descClientsActive, descClientsWaiting, descClientsAccepted, descClientsRejected,
		descProtocolErrors, descQueries, descPoolWaits, descPoolWaitTimeouts, descServerErrors, descServerConnects,
		descConnectErrors, descFastPath, descFastHandBacks, descServerConns, descPoolWait} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	s := c.r.Snapshot()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(descClientsActive, float64(s.ClientsActive))
	counter(descClientsAccepted, s.ClientsAccepted)
	counter(descClientsRejected, s.ClientsRejected)
	counter(descProtocolErrors, s.ProtocolErrors)
	counter(descQueries, s.WritesToPrimary, "write_primary")
	counter(descQueries, s.ReadsToPrimary, "read_primary")
	counter(descQueries, s.ReadsToStandby, "read_standby")
	counter(descPoolWaits, s.PoolWaits)
	counter(descPoolWaitTimeouts, s.PoolWaitTimeouts)
	counter(descServerErrors, s.ServerErrors)
	counter(descServerConnects, s.ServerConnects)
	counter(descConnectErrors, s.ConnectErrors)
	counter(descFastPath, s.FastPath)
	counter(descFastHandBacks, s.FastHandBacks)
	ch <- c.r.poolWait.metric()

	// Server connections by backend name; every backend of the topology
	// gets both series, zero or not, so they do not come and go.
	names := map[string]string{} // address -> name
	type conns struct{ active, idle int }
	byName := map[string]*conns{}
	for _, b := range c.r.view.Load().backends {
		names[b.Addr()] = b.Name
		byName[b.Name] = &conns{}
	}
	var waiting int64
	for _, p := range s.Pools {
		waiting += p.Waiting
		name, ok := names[p.Backend]
		if !ok {
			name = p.Backend // a retired pool whose backend left the topology
		}
		n := byName[name]
		if n == nil {
			n = &conns{}
			byName[name] = n
		}
		n.active += p.Active
		n.idle += p.Idle
	}
	gauge(descClientsWaiting, float64(waiting))
	for name, n := range byName {
		gauge(descServerConns, float64(n.active), name, "active")
		gauge(descServerConns, float64(n.idle), name, "idle")
	}
}

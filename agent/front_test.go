package agent

import (
	"net/http/httptest"
	"testing"
	"time"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
	"github.com/pgha/pgha/router"
)

func TestBackendsOf(t *testing.T) {
	now := time.Now()
	st := consensus.State{Members: members("n1", "n2", "n3"), Primary: "n2", Epoch: 4, SyncStandbys: []string{"n1", "n3"}}
	primary := postgres.Status{Running: true, CurrentLSN: 5000, SyncStandbyNames: `ANY 1 ("n1")`, Replication: []postgres.Replica{
		{ApplicationName: "n1", State: "streaming", SyncState: "sync"},
		{ApplicationName: "n3", State: "streaming", SyncState: "async"},
	}}
	standby := func(replayed postgres.LSN) postgres.Status {
		return postgres.Status{Running: true, InRecovery: true, ReplayedLSN: replayed, Streaming: true, UpstreamHost: "n2", UpstreamPort: 5432}
	}
	withPG := func(pg postgres.Status, f func(*postgres.Status)) postgres.Status { f(&pg); return pg }
	cases := []struct {
		name string
		obs  map[string]memberView
		want map[string]router.Backend // only the fields checked below
	}{{
		name: "all up",
		obs: map[string]memberView{
			"n1": {reachable: true, lastSeen: now, obs: Observation{Postgres: standby(4000)}},
			"n2": {reachable: true, lastSeen: now, obs: Observation{Postgres: primary}},
			"n3": {reachable: true, lastSeen: now, obs: Observation{Postgres: standby(5000)}},
		},
		want: map[string]router.Backend{
			"n1": {Healthy: true, LagBytes: 1000, ReplayLSN: 4000, ReplicationState: "streaming", ReplicationSyncState: "sync"},
			"n2": {Healthy: true, Primary: true},
			"n3": {Healthy: true, LagBytes: 0, ReplayLSN: 5000, ReplicationState: "streaming", ReplicationSyncState: "async"},
		},
	}, {
		// Agent death is not database death: the primary stays healthy on
		// its last observation; a standby whose agent is silent gets no reads.
		name: "agents silent",
		obs: map[string]memberView{
			"n1": {reachable: false, lastSeen: now.Add(-5 * time.Second), obs: Observation{Postgres: standby(4000)}},
			"n2": {reachable: false, lastSeen: now.Add(-5 * time.Second), obs: Observation{Postgres: primary}},
			"n3": {reachable: true, lastSeen: now, obs: Observation{Postgres: standby(5000)}},
		},
		want: map[string]router.Backend{
			"n1": {Healthy: false, LagBytes: 1000, ReplayLSN: 4000, ReplicationState: "streaming", ReplicationSyncState: "sync"},
			"n2": {Healthy: true, Primary: true},
			"n3": {Healthy: true, ReplayLSN: 5000, ReplicationState: "streaming", ReplicationSyncState: "async"},
		},
	}, {
		// The committed primary still in recovery (being promoted), a fenced
		// node, a standby that runs as a primary: none gets traffic.
		name: "roles not matching the state",
		obs: map[string]memberView{
			"n1": {reachable: true, lastSeen: now, obs: Observation{Postgres: postgres.Status{Running: true}}},
			"n2": {reachable: true, lastSeen: now, obs: Observation{Postgres: standby(5000)}},
			"n3": {reachable: true, lastSeen: now, obs: Observation{Postgres: standby(5000)}},
		},
		want: map[string]router.Backend{
			"n1": {Healthy: false},
			"n2": {Healthy: false, Primary: true},
			"n3": {Healthy: true, ReplayLSN: 5000},
		},
	}, {
		// A status query that failed while the postmaster lives is not a
		// dead primary; no postmaster is.
		name: "primary status unknown, then gone",
		obs: map[string]memberView{
			"n1": {reachable: true, lastSeen: now, obs: Observation{Postgres: postgres.Status{PID: 42, Error: "timeout"}}},
			"n2": {reachable: true, lastSeen: now, obs: Observation{Postgres: postgres.Status{PID: 4242, Error: "timeout"}}},
			"n3": {reachable: true, lastSeen: now, obs: Observation{Postgres: postgres.Status{}}},
		},
		want: map[string]router.Backend{
			"n1": {Healthy: false},
			"n2": {Healthy: true, Primary: true},
			"n3": {Healthy: false},
		},
	}, {
		// Reads only from standbys that replay the primary's WAL now; writes
		// only to a primary whose synchronous_standby_names is within the
		// committed set.
		name: "standbys not replaying the primary, primary asynchronous",
		obs: map[string]memberView{
			"n1": {reachable: true, lastSeen: now, obs: Observation{Postgres: withPG(standby(5000), func(p *postgres.Status) { p.Streaming = false })}},
			"n2": {reachable: true, lastSeen: now, obs: Observation{Postgres: withPG(primary, func(p *postgres.Status) { p.SyncStandbyNames = "" })}},
			"n3": {reachable: true, lastSeen: now, obs: Observation{Postgres: withPG(standby(5000), func(p *postgres.Status) { p.UpstreamHost = "n1" })}},
		},
		want: map[string]router.Backend{
			"n1": {Healthy: false, ReplayLSN: 5000, ReplicationState: "streaming", ReplicationSyncState: "sync"},
			"n2": {Healthy: false, Primary: true},
			"n3": {Healthy: false, ReplayLSN: 5000, ReplicationState: "streaming", ReplicationSyncState: "async"},
		},
	}, {
		name: "diverged standby, primary naming a standby outside the set",
		obs: map[string]memberView{
			"n1": {reachable: true, lastSeen: now, obs: Observation{Postgres: standby(5000), Diverged: true}},
			"n2": {reachable: true, lastSeen: now, obs: Observation{Postgres: withPG(primary, func(p *postgres.Status) { p.SyncStandbyNames = "*" })}},
			"n3": {reachable: true, lastSeen: now, obs: Observation{Postgres: standby(5000)}},
		},
		want: map[string]router.Backend{
			"n1": {Healthy: false, ReplayLSN: 5000, ReplicationState: "streaming", ReplicationSyncState: "sync"},
			"n2": {Healthy: false, Primary: true},
			"n3": {Healthy: true, ReplayLSN: 5000, ReplicationState: "streaming", ReplicationSyncState: "async"},
		},
	}, {
		name: "fenced primary",
		obs: map[string]memberView{
			"n1": {reachable: true, lastSeen: now, obs: Observation{Postgres: standby(5000)}},
			"n2": {reachable: true, lastSeen: now, obs: Observation{Postgres: primary, Fenced: true}},
			"n3": {reachable: true, lastSeen: now, obs: Observation{Postgres: standby(5000)}},
		},
		want: map[string]router.Backend{
			"n1": {Healthy: true, ReplayLSN: 5000, ReplicationState: "streaming", ReplicationSyncState: "sync"},
			"n2": {Healthy: false, Primary: true},
			"n3": {Healthy: true, ReplayLSN: 5000, ReplicationState: "streaming", ReplicationSyncState: "async"},
		},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := backendsOf(st, c.obs, now, time.Second, true)
			if len(got) != 3 || got[0].Name != "n1" || got[1].Name != "n2" || got[2].Name != "n3" {
				t.Fatalf("want n1, n2, n3 in order, got %+v", got)
			}
			for _, b := range got {
				w := c.want[b.Name]
				if b.Healthy != w.Healthy || b.Primary != w.Primary || b.LagBytes != w.LagBytes || b.ReplayLSN != w.ReplayLSN ||
					b.ReplicationState != w.ReplicationState || b.ReplicationSyncState != w.ReplicationSyncState {
					t.Errorf("%s: got %+v, want %+v", b.Name, b, w)
				}
				if b.Host != b.Name || b.Port != 5432 {
					t.Errorf("%s: address %s from the member record expected", b.Name, b.Addr())
				}
			}
		})
	}
}

// The noloadbalance tag reaches the router (which then sends the member no
// reads) and /replica answers 503 for it, as Patroni's does.
func TestNoLoadBalanceTag(t *testing.T) {
	now := time.Now()
	st := tagged(consensus.State{Members: members("n1", "n2", "n3"), Primary: "n2", Epoch: 4}, "n3", func(m *consensus.Member) { m.NoLoadBalance = true })
	standby := postgres.Status{Running: true, InRecovery: true, Streaming: true, UpstreamHost: "n2", UpstreamPort: 5432}
	obs := map[string]memberView{
		"n1": {reachable: true, lastSeen: now, obs: Observation{Postgres: standby}},
		"n2": {reachable: true, lastSeen: now, obs: Observation{Postgres: postgres.Status{Running: true}}},
		"n3": {reachable: true, lastSeen: now, obs: Observation{Postgres: standby}},
	}
	for _, b := range backendsOf(st, obs, now, time.Second, false) {
		if b.NoLoadBalance != (b.Name == "n3") {
			t.Errorf("%s: NoLoadBalance %v", b.Name, b.NoLoadBalance)
		}
	}
	a := &Agent{}
	r := httptest.NewRequest("GET", "/replica", nil)
	for name, want := range map[string]bool{"n1": true, "n3": false} {
		h := localHealth{name: name, pg: standby, st: st}
		if !h.replicaOK() {
			t.Fatalf("%s is not a healthy replica to begin with", name)
		}
		if got := a.replicaCheck(r, h); got != want {
			t.Errorf("/replica on %s: %v, want %v", name, got, want)
		}
	}
}

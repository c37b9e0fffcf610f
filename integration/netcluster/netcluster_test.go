package netcluster_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/integration/netcluster"
	"github.com/pgha/pgha/internal/itest"
	"github.com/pgha/pgha/internal/wait"
)

// Generous bounds for a shared, loaded machine; every wait is a poll that
// returns as soon as its condition holds. resumeTimeout bounds a write
// outage, counted from the fault: failover takes seconds by design, and an
// outage of PostgreSQL's 60s wal_sender_timeout is a bug, not slowness.
const (
	healthyTimeout = 2 * time.Minute
	resumeTimeout  = 45 * time.Second
)

// scenario is one fault with a writer through the VIP and a prober running.
type scenario struct {
	t      *testing.T
	c      *netcluster.Cluster
	w      *itest.Writer
	p      *netcluster.Prober
	before agent.ClusterView
}

func start(t *testing.T, c *netcluster.Cluster, table string) *scenario {
	t.Helper()
	v := awaitHealthy(t, c)
	p := c.StartProber(100 * time.Millisecond)
	t.Cleanup(p.Stop)
	w, err := c.StartWriter(context.Background(), itest.WriterOptions{Table: table, Conns: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	wait.For(t, 30*time.Second, "the writer's first acknowledgements through the VIP", func() (bool, string) {
		return len(w.Acks()) >= 10, w.Status()
	})
	return &scenario{t: t, c: c, w: w, p: p, before: v}
}

// resumed waits for an insert sent after t to be acknowledged by a host
// not in notOn, at most resumeTimeout after t.
func (s *scenario) resumed(after time.Time, notOn ...string) itest.Ack {
	s.t.Helper()
	ack, err := s.w.AwaitAckSentAfter(context.Background(), after, time.Until(after.Add(resumeTimeout)), notOn...)
	if err != nil {
		v, _ := s.c.View(context.Background())
		s.t.Fatalf("writes through the VIP did not resume within %s: %v; cluster: %s", resumeTimeout, err, netcluster.Describe(v))
	}
	return ack
}

// finish checks what every scenario must leave: writes flowing, then one
// primary and two streaming standbys; every acknowledged row on every
// member; all members with the same rows; never two writable primaries
// and never two VIP holders while it ran.
func (s *scenario) finish() agent.ClusterView {
	s.t.Helper()
	began := time.Now()
	s.resumed(began)
	s.w.Stop()
	s.p.Stop()
	v := awaitHealthy(s.t, s.c)
	s.t.Logf("healthy %.1fs after the fault was over", time.Since(began).Seconds())
	acks := s.w.Acks()
	primary := s.c.Host(netcluster.Primary(v))
	want, err := s.c.IDs(context.Background(), primary, s.w.Table())
	if err != nil {
		s.t.Fatal(err)
	}
	missing, err := s.w.Missing(context.Background(), primary.Name)
	if err != nil {
		s.t.Fatal(err)
	}
	if len(missing) > 0 {
		s.t.Errorf("%d of %d acknowledged rows are missing on the primary %s, e.g. %v", len(missing), len(acks), primary.Name, head(missing))
	}
	for _, h := range s.c.Hosts {
		if h == primary {
			continue
		}
		// The primary is read again on every try: a commit still waiting
		// for its synchronous standby is already replayed there but not
		// yet visible on the primary (it becomes visible once acknowledged).
		wait.For(s.t, 30*time.Second, h.Name+" to hold the primary's rows", func() (bool, string) {
			got, err := s.c.IDs(context.Background(), h, s.w.Table())
			if err != nil {
				return false, err.Error()
			}
			if want, err = s.c.IDs(context.Background(), primary, s.w.Table()); err != nil {
				return false, err.Error()
			}
			return maps.Equal(got, want), fmt.Sprintf("%d rows, the primary has %d", len(got), len(want))
		})
	}
	if d := s.p.DoublePrimaries(); len(d) > 0 {
		s.t.Errorf("two writable primaries: %v", d)
	}
	if d := s.p.DoubleVIPs(); len(d) > 0 {
		s.t.Errorf("two VIP holders: %v", d)
	}
	errs, _ := s.w.Errors()
	s.t.Logf("%d acknowledged inserts, %d failed attempts, %d rows; probes: %s; now %s", len(acks), errs, len(want), s.p.Summary(), netcluster.Describe(v))
	return v
}

func head(ids []int64) []int64 {
	if len(ids) > 5 {
		return ids[:5]
	}
	return ids
}

func awaitHealthy(t *testing.T, c *netcluster.Cluster) agent.ClusterView {
	t.Helper()
	v, err := c.AwaitHealthy(context.Background(), healthyTimeout)
	if err != nil {
		t.Fatalf("cluster not healthy: %v", err)
	}
	return v
}

// awaitLeaderOtherThan waits until the majority has a Raft leader that is
// not old and exactly that leader holds the VIP; it returns the leader.
func awaitLeaderOtherThan(t *testing.T, c *netcluster.Cluster, old string) *netcluster.Host {
	t.Helper()
	var leader string
	wait.For(t, 30*time.Second, "a new Raft leader holding the VIP", func() (bool, string) {
		v, err := c.View(context.Background())
		if err != nil {
			return false, err.Error()
		}
		holders, err := c.VIPHolders()
		if err != nil {
			return false, err.Error()
		}
		leader = v.RaftLeader
		return leader != "" && leader != old && slices.Equal(holders, []string{leader}),
			fmt.Sprintf("leader %q, VIP on %v", leader, holders)
	})
	return c.Host(leader)
}

// awaitNeighbour waits until the client sends VIP traffic to h's MAC.
func awaitNeighbour(t *testing.T, c *netcluster.Cluster, h *netcluster.Host) {
	t.Helper()
	wait.For(t, 30*time.Second, "the client's neighbour entry for the VIP to be "+h.Name+"'s MAC "+h.MAC, func() (bool, string) {
		mac, state, err := c.ClientNeighbourMAC()
		if err != nil {
			return false, err.Error()
		}
		return mac == h.MAC, fmt.Sprintf("%s %s (%v)", mac, state, c.HostByMAC(mac))
	})
}

// stable asserts that for d the majority keeps primary and epoch. Only
// answers prove that, so it looks until it has stableViews views, the last
// one taken after d, and fails if the majority's API has not given them by
// d + stableGrace: a cluster nobody can ask has not shown that it kept still.
// (A view may take an API timeout of 3s when the first host asked is cut
// off, hence the grace.)
func stable(t *testing.T, c *netcluster.Cluster, d time.Duration, primary string, epoch uint64) {
	t.Helper()
	start := time.Now()
	views, failed := 0, 0
	var lastErr error
	for {
		v, err := c.View(context.Background())
		at := time.Now()
		if err != nil {
			failed++
			lastErr = err
		} else {
			if v.Epoch != epoch || netcluster.Primary(v) != primary {
				t.Fatalf("failover happened: %s (before: primary %s, epoch %d)", netcluster.Describe(v), primary, epoch)
			}
			views++
			if views >= stableViews && at.Sub(start) >= d {
				return
			}
		}
		if at.Sub(start) >= d+stableGrace {
			t.Fatalf("cannot tell whether %s stayed primary at epoch %d: %d views in %s (want %d, the last after %s), %d failed, last error: %v",
				primary, epoch, views, at.Sub(start).Round(time.Millisecond), stableViews, d, failed, lastErr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stable's demands: this many views, the last after the period checked;
// it gives up this long after the period.
const (
	stableViews = 3
	stableGrace = 10 * time.Second
)

// leaderApartFromPrimary switches over to a standby when the Raft leader is
// the primary, for scenarios that fault one of the two alone.
func leaderApartFromPrimary(t *testing.T, c *netcluster.Cluster) {
	t.Helper()
	v := awaitHealthy(t, c)
	if v.RaftLeader != netcluster.Primary(v) {
		return
	}
	var cand string
	for _, m := range v.Members {
		if m.Name != v.RaftLeader {
			cand = m.Name
			break
		}
	}
	res, err := c.Switchover(context.Background(), cand)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("switchover so that the leader is not the primary: %s", res.Message)
}

// must runs a scenario and stops at the first failing one: the next starts
// from a healthy cluster, which a failure may not leave.
func must(t *testing.T, name string, f func(t *testing.T)) {
	t.Helper()
	if !t.Run(name, f) {
		t.FailNow()
	}
}

// TestNetCluster runs the network scenarios on one cluster of three hosts
// and a client, in order.
func TestNetCluster(t *testing.T) {
	c := netcluster.New(t, options())
	if err := c.StartAll(); err != nil {
		t.Fatal(err)
	}

	must(t, "VIP on the Raft leader only, the client's ARP entry points at it", func(t *testing.T) {
		v := awaitHealthy(t, c)
		leader := c.Host(v.RaftLeader)
		holders, err := c.VIPHolders()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(holders, []string{leader.Name}) {
			t.Fatalf("VIP on %v, want exactly the Raft leader %s", holders, leader.Name)
		}
		// With arp_accept=1 the gratuitous ARP alone may have created the
		// entry; if there is one before any traffic, it must be right.
		if mac, state, err := c.ClientNeighbourMAC(); err != nil {
			t.Fatal(err)
		} else if mac != "" && mac != leader.MAC {
			t.Fatalf("before any traffic, the client maps the VIP to %s (%s), not the leader %s's %s", mac, state, leader.Name, leader.MAC)
		} else {
			t.Logf("before any traffic the client's entry for the VIP is %q %s (learnt from the gratuitous ARP if set)", mac, state)
		}
		s := start(t, c, "w_vip")
		awaitNeighbour(t, c, leader)
		ack := s.resumed(time.Now())
		if ack.Host != netcluster.Primary(v) {
			t.Errorf("a write through the VIP was acknowledged by %s, not the primary %s", ack.Host, netcluster.Primary(v))
		}
		s.finish()
	})

	must(t, "kill the leader host: the VIP and the client's ARP entry move, writes resume", func(t *testing.T) {
		s := start(t, c, "w_kill_leader")
		old := c.Host(s.before.RaftLeader)
		primary := netcluster.Primary(s.before)
		awaitNeighbour(t, c, old)
		killed := time.Now()
		if err := c.KillHost(old); err != nil {
			t.Fatal(err)
		}
		leader := awaitLeaderOtherThan(t, c, old.Name)
		t.Logf("%s leads and holds the VIP %.2fs after %s was lost", leader.Name, time.Since(killed).Seconds(), old.Name)
		awaitNeighbour(t, c, leader)
		t.Logf("the client sends VIP traffic to %s %.2fs after the loss", leader.Name, time.Since(killed).Seconds())
		var notOn []string
		if primary == old.Name {
			notOn = []string{old.Name}
		}
		ack := s.resumed(killed, notOn...)
		t.Logf("writes resumed on %s %.2fs after the loss", ack.Host, ack.At.Sub(killed).Seconds())
		if err := c.StartHost(old); err != nil {
			t.Fatal(err)
		}
		s.finish()
	})

	must(t, "cut the primary off: it fences itself, the majority fails over, it rejoins by rewind", func(t *testing.T) {
		s := start(t, c, "w_cut_primary")
		old := c.Host(netcluster.Primary(s.before))
		cut := time.Now()
		if err := c.Cut(old); err != nil {
			t.Fatal(err)
		}
		wait.For(t, 30*time.Second, old.Name+"'s PostgreSQL to stop accepting writes (asked inside its namespace)", func() (bool, string) {
			ok, err := c.IsPrimary(context.Background(), old)
			return !ok, fmt.Sprintf("primary=%v err=%v", ok, err)
		})
		fenced := time.Now()
		wait.For(t, 10*time.Second, old.Name+" to drop the VIP", func() (bool, string) {
			held, err := c.HoldsVIP(old)
			return err == nil && !held, fmt.Sprintf("held=%v err=%v", held, err)
		})
		ack := s.resumed(cut, old.Name)
		t.Logf("%s stopped accepting writes %.2fs after the cut; writes resumed on %s %.2fs after it", old.Name, fenced.Sub(cut).Seconds(), ack.Host, ack.At.Sub(cut).Seconds())
		last, first := s.p.LastPrimary(old.Name), s.p.PrimarySince(ack.Host, cut)
		if first.IsZero() || !last.Before(first) {
			t.Errorf("%s was last seen writable at %s, %s first seen writable at %s: the old primary was not fenced before the promotion",
				old.Name, last.Format("15:04:05.000"), ack.Host, first.Format("15:04:05.000"))
		} else {
			t.Logf("%s last writable %s, %s writable from %s: %s apart", old.Name, last.Format("15:04:05.000"), ack.Host, first.Format("15:04:05.000"), first.Sub(last).Round(time.Millisecond))
		}
		if lines := c.GrepLog(old, "fencing"); len(lines) == 0 {
			t.Errorf("%s's agent log has no fencing line", old.Name)
		}
		if err := c.Heal(old); err != nil {
			t.Fatal(err)
		}
		v := s.finish()
		m := netcluster.Member(v, old.Name)
		if m.Role == "leader" || m.State != "streaming" {
			t.Errorf("the old primary is %s/%s, want a streaming standby", m.Role, m.State)
		}
		if m.RejoinedBy != "rewind" {
			t.Errorf("the old primary rejoined by %q, want rewind; its log: %v", m.RejoinedBy, c.GrepLog(old, "rewind"))
		}
		if v.Epoch <= s.before.Epoch {
			t.Errorf("epoch %d did not increase from %d", v.Epoch, s.before.Epoch)
		}
	})

	must(t, "cut the Raft leader off while it is not the primary: only the VIP moves", func(t *testing.T) {
		leaderApartFromPrimary(t, c)
		s := start(t, c, "w_cut_leader")
		leader, primary := c.Host(s.before.RaftLeader), netcluster.Primary(s.before)
		if leader.Name == primary {
			t.Fatalf("the Raft leader %s is still the primary after a switchover", primary)
		}
		cut := time.Now()
		if err := c.Cut(leader); err != nil {
			t.Fatal(err)
		}
		next := awaitLeaderOtherThan(t, c, leader.Name)
		awaitNeighbour(t, c, next)
		t.Logf("%s leads and the client reaches it %.2fs after the cut", next.Name, time.Since(cut).Seconds())
		ack := s.resumed(cut)
		t.Logf("writes resumed on %s %.2fs after the cut (%s)", ack.Host, ack.At.Sub(cut).Seconds(), s.w.Status())
		if ack.Host != primary {
			t.Errorf("a write after the cut was acknowledged by %s, not the primary %s", ack.Host, primary)
		}
		// Well past the fence deadline (fence_timeout + health interval +
		// margin, under 2s): still no failover.
		stable(t, c, 4*time.Second, primary, s.before.Epoch)
		if err := c.Heal(leader); err != nil {
			t.Fatal(err)
		}
		v := s.finish()
		if v.Epoch != s.before.Epoch || netcluster.Primary(v) != primary {
			t.Errorf("primary/epoch changed: %s, before: %s epoch %d", netcluster.Describe(v), primary, s.before.Epoch)
		}
	})

	// The primary's lease runs out because no Raft leader can renew it
	// (the leader's and the third host's agents hang), and a leader comes
	// back: the fence froze PostgreSQL (it acknowledged nothing meanwhile)
	// and thaws it on the renewal, the same postmaster, no failover. A stop
	// instead turned every leader election longer than the lease into a
	// crash recovery and a restart under a permit.
	must(t, "no leader for longer than the lease, then one again: the primary is frozen, then thawed in place", func(t *testing.T) {
		leaderApartFromPrimary(t, c)
		s := start(t, c, "w_lease_gap")
		primary := c.Host(netcluster.Primary(s.before))
		var others []*netcluster.Host
		for _, h := range c.Hosts {
			if h != primary {
				others = append(others, h)
			}
		}
		pid := c.PostmasterPID(primary)
		freezes, lifts := len(c.GrepLog(primary, "PostgreSQL frozen")), len(c.GrepLog(primary, "fence lifted"))
		frozen := time.Now()
		for _, h := range others {
			if err := c.FreezeAgent(h); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.ThawAgent(h) })
		}
		wait.For(t, 5*time.Second, primary.Name+"'s agent to fence (its lease runs out with no leader to renew it)", func() (bool, string) {
			lines := c.GrepLog(primary, "PostgreSQL frozen")
			return len(lines) > freezes, "no freeze in its log yet"
		})
		t.Logf("%s fenced %.2fs after the others' agents froze", primary.Name, time.Since(frozen).Seconds())
		// The leader may promote 250 ms after the lease's end: the freeze
		// must be done within that, by the agent's own clock.
		if ds := c.FenceDelays()[primary.Name]; len(ds) == 0 {
			t.Errorf("%s's freeze logs no after_lease_end", primary.Name)
		} else if last := ds[len(ds)-1]; last.AfterLeaseEnd > 250*time.Millisecond {
			t.Errorf("%s froze its PostgreSQL %v after its lease's end (all its freezes: %+v); the leader's margin is 250ms", primary.Name, last.AfterLeaseEnd, ds)
		}
		if ok, err := c.IsPrimary(context.Background(), primary); ok {
			t.Errorf("%s's PostgreSQL answers as a writable primary while fenced (err %v)", primary.Name, err)
		}
		// Within frozenMax (twice the lease) of the freeze.
		for _, h := range others {
			if err := c.ThawAgent(h); err != nil {
				t.Fatal(err)
			}
		}
		thawed := time.Now()
		ack := s.resumed(thawed)
		t.Logf("writes resumed on %s %.2fs after the agents woke (%s)", ack.Host, ack.At.Sub(thawed).Seconds(), s.w.Status())
		if lines := c.GrepLog(primary, "fence lifted"); len(lines) <= lifts {
			t.Errorf("%s's PostgreSQL was not thawed; its fencing lines: %v", primary.Name, c.GrepLog(primary, "fencing"))
		}
		if now := c.PostmasterPID(primary); now != pid {
			t.Errorf("%s's postmaster is pid %d, was %d: it was restarted, not thawed", primary.Name, now, pid)
		}
		v := s.finish()
		if v.Epoch != s.before.Epoch || netcluster.Primary(v) != primary.Name {
			t.Errorf("a needless failover: %s; before: primary %s, epoch %d", netcluster.Describe(v), primary.Name, s.before.Epoch)
		}
	})

	// The primary's agent restarts and its host is cut off at once: the
	// restarted agent's committed state lags the log (raft applies the
	// tail only once a leader says how far it is committed, and the
	// leader's replication to it is in backoff after its death), so it
	// does not know it is the primary. Its server must still be frozen
	// when the lease its start stands for runs out, before the leader may
	// promote; it froze seconds late before (two intervals with two
	// writable primaries in an hour-long campaign).
	must(t, "restart the primary's agent and cut its host off at once: the server is frozen in time though the agent does not know yet that it is the primary", func(t *testing.T) {
		leaderApartFromPrimary(t, c)
		s := start(t, c, "w_restart_cut")
		primary := c.Host(netcluster.Primary(s.before))
		freezes, starts := len(c.FenceDelays()[primary.Name]), len(c.GrepLog(primary, "agent started"))
		c.KillAgent(primary)
		time.Sleep(2 * time.Second) // the fault's shape, not a synchronisation: the leader's replication to it backs off
		if err := c.StartHost(primary); err != nil {
			t.Fatal(err)
		}
		wait.For(t, 10*time.Second, primary.Name+"'s agent to start", func() (bool, string) {
			return len(c.GrepLog(primary, "agent started")) > starts, "not yet"
		})
		if err := c.Cut(primary); err != nil {
			t.Fatal(err)
		}
		wait.For(t, 15*time.Second, primary.Name+" to freeze its PostgreSQL", func() (bool, string) {
			return len(c.FenceDelays()[primary.Name]) > freezes, "no new freeze in its log"
		})
		// Heal once the leader has promoted another member or the hold is
		// over; every freeze meanwhile must have come within the margin.
		wait.For(t, 15*time.Second, "a new primary while "+primary.Name+" is cut off", func() (bool, string) {
			v, err := c.View(context.Background())
			return err == nil && netcluster.Primary(v) != "" && netcluster.Primary(v) != primary.Name, fmt.Sprint(netcluster.Describe(v), err)
		})
		for _, d := range c.FenceDelays()[primary.Name][freezes:] {
			if d.AfterLeaseEnd > 250*time.Millisecond {
				t.Errorf("%s froze its PostgreSQL %v after its lease's end (or its agent's start); the leader may promote after 250ms: %v", primary.Name, d.AfterLeaseEnd, c.GrepLog(primary, "PostgreSQL frozen")[freezes:])
			}
		}
		if err := c.Heal(primary); err != nil {
			t.Fatal(err)
		}
		s.finish()
	})

	// A hung agent (SIGSTOP, a GC stall) on the host that both leads Raft
	// and runs the primary: its PostgreSQL runs on and its kernel keeps
	// the VIP and answers ARP for it. The next leader must take the VIP
	// over and serve writes through its own router (to the same primary:
	// its PostgreSQL answers, so nothing fails over); the old holder drops
	// the VIP as soon as it wakes, without a needless failover.
	must(t, "cut only the link between the primary and the Raft leader: the primary fences itself, the leader fails over, never two writers", func(t *testing.T) {
		leaderApartFromPrimary(t, c)
		s := start(t, c, "w_cut_link")
		leader, old := c.Host(s.before.RaftLeader), c.Host(netcluster.Primary(s.before))
		if leader == old {
			t.Fatalf("the Raft leader %s is still the primary after a switchover", old.Name)
		}
		// The third host still reaches both: a peer's reachability must not
		// keep the primary writable, only its lease from the leader may.
		cut := time.Now()
		if err := c.CutLink(old, leader); err != nil {
			t.Fatal(err)
		}
		wait.For(t, 30*time.Second, old.Name+"'s PostgreSQL to stop accepting writes (asked inside its namespace)", func() (bool, string) {
			ok, err := c.IsPrimary(context.Background(), old)
			return !ok, fmt.Sprintf("primary=%v err=%v", ok, err)
		})
		fenced := time.Now()
		ack := s.resumed(cut, old.Name)
		t.Logf("%s stopped accepting writes %.2fs after the cut; writes resumed on %s %.2fs after it", old.Name, fenced.Sub(cut).Seconds(), ack.Host, ack.At.Sub(cut).Seconds())
		last, first := s.p.LastPrimary(old.Name), s.p.PrimarySince(ack.Host, cut)
		if first.IsZero() || !last.Before(first) {
			t.Errorf("%s was last seen writable at %s, %s first seen writable at %s: the old primary was not fenced before the promotion",
				old.Name, last.Format("15:04:05.000"), ack.Host, first.Format("15:04:05.000"))
		}
		if lines := c.GrepLog(old, "fencing"); len(lines) == 0 {
			t.Errorf("%s's agent log has no fencing line", old.Name)
		}
		if err := c.HealLink(old, leader); err != nil {
			t.Fatal(err)
		}
		v := s.finish()
		if v.Epoch <= s.before.Epoch || netcluster.Primary(v) == old.Name {
			t.Errorf("no failover away from %s: %s (before: epoch %d)", old.Name, netcluster.Describe(v), s.before.Epoch)
		}
		if m := netcluster.Member(v, old.Name); m.State != "streaming" {
			t.Errorf("the old primary is %s/%s, want a streaming standby", m.Role, m.State)
		}
	})

	must(t, "freeze the Raft leader's agent while it is the primary: writes resume through the next leader, the old one drops the VIP on waking", func(t *testing.T) {
		v := awaitHealthy(t, c)
		if v.RaftLeader != netcluster.Primary(v) {
			res, err := c.Switchover(context.Background(), v.RaftLeader)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("switchover so that the leader is the primary: %s", res.Message)
		}
		s := start(t, c, "w_freeze_leader")
		old := c.Host(s.before.RaftLeader)
		if netcluster.Primary(s.before) != old.Name {
			t.Fatalf("the Raft leader %s is not the primary after a switchover: %s", old.Name, netcluster.Describe(s.before))
		}
		awaitNeighbour(t, c, old)
		frozen := time.Now()
		if err := c.FreezeAgent(old); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.ThawAgent(old) })
		var next *netcluster.Host
		wait.For(t, 30*time.Second, "a new Raft leader holding the VIP", func() (bool, string) {
			v, err := c.View(context.Background())
			if err != nil {
				return false, err.Error()
			}
			holders, err := c.VIPHolders()
			if err != nil {
				return false, err.Error()
			}
			if v.RaftLeader == "" || v.RaftLeader == old.Name || !slices.Contains(holders, v.RaftLeader) {
				return false, fmt.Sprintf("leader %q, VIP on %v", v.RaftLeader, holders)
			}
			next = c.Host(v.RaftLeader)
			return true, ""
		})
		t.Logf("%s leads and holds the VIP %.2fs after %s's agent froze", next.Name, time.Since(frozen).Seconds(), old.Name)
		awaitNeighbour(t, c, next)
		ack := s.resumed(frozen)
		t.Logf("writes resumed on %s %.2fs after the freeze (%s)", ack.Host, ack.At.Sub(frozen).Seconds(), s.w.Status())
		// Frozen for well past the fence deadline, as a long GC pause or
		// a paused VM would be.
		stable(t, c, 5*time.Second, old.Name, s.before.Epoch)
		thawed := time.Now()
		if err := c.ThawAgent(old); err != nil {
			t.Fatal(err)
		}
		wait.For(t, 10*time.Second, old.Name+" to drop the VIP on waking", func() (bool, string) {
			held, err := c.HoldsVIP(old)
			return err == nil && !held, fmt.Sprintf("held=%v err=%v", held, err)
		})
		t.Logf("%s dropped the VIP %.2fs after waking", old.Name, time.Since(thawed).Seconds())
		v = s.finish()
		if v.Epoch != s.before.Epoch || netcluster.Primary(v) != old.Name {
			t.Errorf("a needless failover: %s; before: primary %s, epoch %d", netcluster.Describe(v), old.Name, s.before.Epoch)
		}
	})

	must(t, "isolate each host in turn: never two primaries nor two VIP holders", func(t *testing.T) {
		s := start(t, c, "w_isolate")
		for _, h := range c.Hosts {
			v := awaitHealthy(t, c)
			wasPrimary := netcluster.Primary(v) == h.Name
			cut := time.Now()
			if err := c.Cut(h); err != nil {
				t.Fatal(err)
			}
			wait.For(t, 30*time.Second, "the majority to lose "+h.Name, func() (bool, string) {
				v, err := c.View(context.Background())
				if err != nil {
					return false, err.Error()
				}
				m := netcluster.Member(v, h.Name)
				return !m.Reachable && v.RaftLeader != "" && v.RaftLeader != h.Name, netcluster.Describe(v)
			})
			var notOn []string
			if wasPrimary {
				notOn = []string{h.Name}
				wait.For(t, 30*time.Second, h.Name+" to fence its PostgreSQL", func() (bool, string) {
					ok, err := c.IsPrimary(context.Background(), h)
					return !ok, fmt.Sprintf("primary=%v err=%v", ok, err)
				})
			}
			ack := s.resumed(cut, notOn...)
			t.Logf("%s cut off (primary: %v): writes on %s %.2fs after the cut", h.Name, wasPrimary, ack.Host, ack.At.Sub(cut).Seconds())
			if err := c.Heal(h); err != nil {
				t.Fatal(err)
			}
		}
		s.finish()
	})

	must(t, "a flapping link: never two primaries nor two VIP holders", func(t *testing.T) {
		s := start(t, c, "w_flap")
		h := c.Host(netcluster.Primary(s.before))
		// Around fence_timeout (1s) and the fence deadline (~1.5s), where
		// a decision half-taken meets a node coming back.
		cuts := []time.Duration{300, 1200, 700, 1600, 400, 1000, 2000, 500}
		heals := []time.Duration{400, 300, 900, 200, 1200, 300, 600, 300}
		for i := range cuts {
			if err := c.Cut(h); err != nil {
				t.Fatal(err)
			}
			time.Sleep(cuts[i] * time.Millisecond) // the fault's shape, not a synchronisation
			if err := c.Heal(h); err != nil {
				t.Fatal(err)
			}
			time.Sleep(heals[i] * time.Millisecond)
		}
		t.Logf("flapped %s's link %d times", h.Name, len(cuts))
		s.finish()
	})

	// Every agent restarts, and the primary's agent comes up answering its
	// own REST API but unable to reach the others' (nor their Raft ports,
	// so it cannot lead): it follows the Raft log but can neither check
	// that it has caught up nor ask for its start permit, the moment after
	// a cluster-wide restart stretched until the test lifts the block. The
	// new leader sees it answer with its PostgreSQL stopped: it must wait
	// for it, not fail over a primary that is starting.
	must(t, "restart of every agent while the primary's agent cannot reach the others yet: no failover", func(t *testing.T) {
		v := awaitHealthy(t, c)
		p := c.Host(netcluster.Primary(v))
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		for _, h := range c.Hosts {
			if err := c.StopAgent(ctx, h); err != nil {
				t.Fatal(err)
			}
		}
		// Policy routing by destination port, for what p sends only: the
		// answers of p's own API and Raft listeners still go out.
		block := func(verb string) error {
			for _, port := range []int{netcluster.APIPort, netcluster.RaftPort} {
				if _, err := p.Node.Run("ip", "rule", verb, "ipproto", "tcp", "dport", fmt.Sprint(port), "prohibit"); err != nil {
					return err
				}
			}
			return nil
		}
		if err := block("add"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = block("del") })
		if err := c.StartAll(); err != nil {
			t.Fatal(err)
		}
		var w agent.ClusterView
		wait.For(t, 60*time.Second, "the new leader to wait for "+p.Name+"'s agent (or to fail it over)", func() (bool, string) {
			var err error
			if w, err = c.View(ctx); err != nil {
				return false, err.Error()
			}
			// An agent that has not replayed the Raft log yet knows no
			// leader and shows epoch 0: only a leader's view counts.
			if w.RaftLeader == "" {
				return false, netcluster.Describe(w)
			}
			waits := w.RaftLeader != p.Name && strings.Contains(w.Waiting, "has just started")
			return waits || w.Epoch > v.Epoch, fmt.Sprintf("%s; leader waiting: %q", netcluster.Describe(w), w.Waiting)
		})
		if w.Epoch > v.Epoch {
			t.Fatalf("the new leader failed over %s while its agent was starting: %s", p.Name, netcluster.Describe(w))
		}
		t.Logf("leader %s: %s", w.RaftLeader, w.Waiting)
		if err := block("del"); err != nil {
			t.Fatal(err)
		}
		after := awaitHealthy(t, c)
		if netcluster.Primary(after) != p.Name || after.Epoch != v.Epoch {
			t.Fatalf("after the restart: %s; before: primary %s, epoch %d", netcluster.Describe(after), p.Name, v.Epoch)
		}
	})
}

package chaos

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pgha/pgha/integration/netcluster"
	"github.com/pgha/pgha/internal/itest"
	"github.com/pgha/pgha/internal/wait"
)

// Kind is a kind of fault.
type Kind string

// The faults the scheduler injects. Each is put in place, held, and healed
// by its own function below; the scheduler then waits for recovery.
const (
	// PartitionPrimary cuts the primary's host off from everyone (its
	// bridge port is disabled), holds, heals.
	PartitionPrimary Kind = "partition-primary"
	// PartitionHost does the same to a random host.
	PartitionHost Kind = "partition-host"
	// LinkCut cuts the link between two random hosts, both ways; each
	// still reaches the third, the client and the VIP.
	LinkCut Kind = "link-cut"
	// LinkOneWay cuts one direction of a random pair: what the first
	// sends the second is lost, the other way still works.
	LinkOneWay Kind = "link-one-way"
	// LinkSlow makes a host's link (the primary's half the time) slow and
	// lossy under load: a token bucket of slowRateKbit with a queue of
	// slowQueueMs, both ways. (netem is not in this kernel: see
	// netns.Shape.)
	LinkSlow Kind = "link-slow"
	// KillAgent kill -9's a random agent (its PostgreSQL, and the VIP if it
	// held it, stay), holds, restarts it.
	KillAgent Kind = "kill-agent"
	// KillPostgres kill -9's a random host's postmaster. Nothing is healed
	// by hand: the agent restarts it or the leader fails over.
	KillPostgres Kind = "kill-postgres"
	// FreezeAgent SIGSTOPs a random agent (the primary's or the leader's
	// half the time), holds 2-30s, SIGCONTs it: it keeps the VIP and its
	// PostgreSQL, and cannot fence.
	FreezeAgent Kind = "freeze-agent"
	// FreezePostgres SIGSTOPs a random host's whole PostgreSQL (the
	// primary's half the time), holds 2-30s, SIGCONTs it: alive, hung.
	FreezePostgres Kind = "freeze-postgres"
	// StuckStatus stalls the agent's own sessions with its PostgreSQL (the
	// primary's two times in three): every backend whose application_name
	// is pgha-agent is SIGSTOPped as it appears, so the agent's status
	// queries time out while the server serves everyone else.
	StuckStatus Kind = "stuck-status"
	// DoubleFault cuts the primary off and, the moment another host
	// acknowledges its first commit (through the VIP or directly), loses
	// that new primary's host; after the hold the old primary is healed
	// first, and the lost host is started some seconds later, so the
	// old primary and the third host decide without it.
	DoubleFault Kind = "double-fault"
	// UnstartablePostgres kill -9's a postmaster (the primary's two times
	// in three) and takes its port, so no restart succeeds until the port
	// is released after the hold.
	UnstartablePostgres Kind = "unstartable-postgres"
	// DiskFullPrimary leaves the primary's data filesystem no free space,
	// holds, gives it back.
	DiskFullPrimary Kind = "disk-full-primary"
	// DiskFullStandby does the same to a random standby.
	DiskFullStandby Kind = "disk-full-standby"
	// ForcedFailover freezes the primary's agent (so the leader no longer
	// hears from it; its PostgreSQL runs on, writable) and, from the other
	// agents, asks for a failover (POST /failover, as `pgha-agent
	// failover` does) until one is accepted or the hold ends; then thaws
	// the agent.
	ForcedFailover Kind = "forced-failover"
	// HostLoss loses a random host (every process and its network), holds,
	// brings it back (netcluster.KillHost, StartHost).
	HostLoss Kind = "host-loss"
	// RestartAll loses all three hosts at once, holds, starts them again.
	RestartAll Kind = "restart-all"
	// FenceShortened is an operator's edit of the lease under a fault:
	// fence_timeout is raised to three times its value until the primary
	// holds a lease that long, set back, and half a second after the
	// primary says it uses the short value again the link between the
	// primary and the Raft leader is cut (the primary partitioned if it
	// leads), for longer than the long lease. The leases granted under the
	// long value still run: a leader that judged them by the new, shorter
	// one would promote while the old primary still writes.
	FenceShortened Kind = "fence-shortened"
)

// Kinds lists every kind, in the order reports print them.
var Kinds = []Kind{
	PartitionPrimary, PartitionHost, LinkCut, LinkOneWay, LinkSlow,
	KillAgent, KillPostgres, FreezeAgent, FreezePostgres, StuckStatus,
	DoubleFault, UnstartablePostgres, DiskFullPrimary, DiskFullStandby,
	ForcedFailover, HostLoss, RestartAll, FenceShortened,
}

// weight is how often the scheduler picks a kind, relative to the others.
var weight = map[Kind]int{
	PartitionPrimary: 2, PartitionHost: 2, LinkCut: 2, LinkOneWay: 2, LinkSlow: 2,
	KillAgent: 2, KillPostgres: 2, FreezeAgent: 2, FreezePostgres: 2, StuckStatus: 2,
	DoubleFault: 2, UnstartablePostgres: 2, DiskFullPrimary: 2, DiskFullStandby: 2,
	ForcedFailover: 2, HostLoss: 2, RestartAll: 1, FenceShortened: 1,
}

// freezes are the kinds held FreezeMin-FreezeMax rather than HoldMin-HoldMax:
// a process stays SIGSTOPped that long.
var freezes = map[Kind]bool{FreezeAgent: true, FreezePostgres: true, ForcedFailover: true}

// The slow link: about what the primary's WAL stream and the agents' polls
// need under the writers' load, so queues fill and packets drop.
const (
	slowRateKbit = 256
	slowQueueMs  = 200
)

// doubleFaultRejoin is how long, in a double fault, the old primary and
// the third host are left to decide before the lost host comes back.
const doubleFaultRejoin = 3 * time.Second

// injection is a fault in place: heal undoes it.
type injection struct {
	heal func() error
	// held: the injection already held the fault (it had steps of its
	// own); the scheduler does not hold it again.
	held bool
}

// inject puts fault f in place on the cluster as the scheduler's view v
// before it described it, and fills f.Targets and f.Details. An error
// leaves whatever was injected to heal (repair heals everything).
func (s *scheduler) inject(ctx context.Context, f *Fault) (injection, error) {
	c := s.c
	primary := c.Host(f.PrimaryBefore)
	if primary == nil {
		primary = s.randomHost()
	}
	leader := c.Host(f.LeaderBefore)
	if leader == nil {
		leader = s.randomHost()
	}
	target := func(hs ...*netcluster.Host) {
		for _, h := range hs {
			f.Targets = append(f.Targets, h.Name)
		}
	}
	// mostly picks preferred with probability num/den, else a random host.
	mostly := func(preferred *netcluster.Host, num, den int) *netcluster.Host {
		if s.rng.IntN(den) < num {
			return preferred
		}
		return s.randomHost()
	}
	switch f.Kind {
	case PartitionPrimary, PartitionHost:
		h := primary
		if f.Kind == PartitionHost {
			h = s.randomHost()
		}
		target(h)
		return injection{heal: func() error { return c.Heal(h) }}, c.Cut(h)
	case LinkCut, LinkOneWay:
		a, b := s.randomPair()
		target(a, b)
		heal := func() error { return c.HealLink(a, b) }
		if f.Kind == LinkCut {
			return injection{heal: heal}, c.CutLink(a, b)
		}
		f.note("%s's packets to %s are lost; %s's to %s arrive", a.Name, b.Name, b.Name, a.Name)
		return injection{heal: heal}, c.CutOneWay(a, b)
	case LinkSlow:
		h := mostly(primary, 1, 2)
		target(h)
		f.note("tbf %dkbit/s, queue %dms, both ways", slowRateKbit, slowQueueMs)
		return injection{heal: func() error { return c.HealSlowLink(h) }}, c.SlowLink(h, slowRateKbit, slowQueueMs)
	case KillAgent:
		h := s.randomHost()
		target(h)
		c.KillAgent(h)
		return injection{heal: func() error { return c.StartHost(h) }}, nil
	case KillPostgres:
		h := s.randomHost()
		target(h)
		// Nothing to heal: the agent restarts it or the leader fails over.
		return injection{heal: func() error { return nil }, held: true}, c.KillPostgres(h)
	case FreezeAgent:
		h := s.randomHost()
		if s.rng.IntN(2) == 0 {
			h = []*netcluster.Host{primary, leader}[s.rng.IntN(2)]
		}
		target(h)
		return injection{heal: func() error { return c.ThawAgent(h) }}, c.FreezeAgent(h)
	case FreezePostgres:
		h := mostly(primary, 1, 2)
		target(h)
		return injection{heal: func() error { return c.ThawPostgres(h) }}, c.FreezePostgres(h)
	case StuckStatus:
		h := mostly(primary, 2, 3)
		target(h)
		stop := c.StallAgentSessions(h)
		return injection{heal: func() error {
			n, err := stop()
			f.note("stalled %d of the agent's sessions", n)
			return err
		}}, nil
	case DoubleFault:
		return s.doubleFault(ctx, f, primary)
	case UnstartablePostgres:
		h := mostly(primary, 2, 3)
		target(h)
		if err := c.KillPostgres(h); err != nil {
			return injection{heal: func() error { return nil }}, err
		}
		return injection{heal: func() error {
			f.note("before the heal, %s's PostgreSQL %s", h.Name, s.serverState(ctx, h))
			return c.ReleasePGPort(h)
		}}, c.OccupyPGPort(h)
	case DiskFullPrimary, DiskFullStandby:
		h := primary
		if f.Kind == DiskFullStandby {
			h = s.randomOther(primary)
		}
		target(h)
		err := c.FillDisk(h)
		if free, ferr := c.DiskFree(h); ferr == nil {
			f.note("%s's data filesystem left %d bytes free", h.Name, free)
		}
		return injection{heal: func() error {
			f.note("before the heal, %s's PostgreSQL %s", h.Name, s.serverState(ctx, h))
			return c.FreeDisk(h)
		}}, err
	case ForcedFailover:
		return s.forcedFailover(ctx, f, primary)
	case HostLoss:
		h := s.randomHost()
		target(h)
		return injection{heal: func() error { return c.StartHost(h) }}, c.KillHost(h)
	case FenceShortened:
		return s.fenceShortened(ctx, f, primary, leader)
	case RestartAll:
		target(c.Hosts...)
		var errs []error
		for _, h := range c.Hosts {
			errs = append(errs, c.KillHost(h))
		}
		return injection{heal: c.StartAll}, errors.Join(errs...)
	}
	return injection{}, fmt.Errorf("unknown fault kind %q", f.Kind)
}

// doubleFault: cut the primary off; at the first commit another host
// acknowledges after that, lose that host; hold; heal the old primary,
// wait doubleFaultRejoin, start the lost host.
func (s *scheduler) doubleFault(ctx context.Context, f *Fault, primary *netcluster.Host) (injection, error) {
	c := s.c
	f.Targets = []string{primary.Name}
	cut := time.Now()
	if err := c.Cut(primary); err != nil {
		return injection{heal: func() error { return c.Heal(primary) }}, err
	}
	f.Injected = cut
	var first itest.Ack
	err := wait.Until(ctx, s.opts.RecoveryTimeout, func() (bool, string) {
		for _, a := range s.w.Acks() {
			if a.Sent.After(cut) && a.Host != primary.Name {
				first = a
				return true, ""
			}
		}
		return false, s.w.Status()
	})
	if err != nil {
		f.note("no other host acknowledged a commit after the cut: %v", err)
		return injection{heal: func() error { return c.Heal(primary) }}, nil
	}
	lost := c.Host(first.Host)
	killErr := c.KillHost(lost)
	f.Targets = append(f.Targets, lost.Name)
	f.note("%s cut off; %s acknowledged its first commit (id %d via %s, timeline %d) %s after the cut; its host lost %s after that acknowledgement",
		primary.Name, lost.Name, first.ID, first.Via, first.Timeline, round(first.At.Sub(cut)), round(time.Since(first.At)))
	return injection{heal: func() error {
		err := c.Heal(primary)
		sleep(ctx, doubleFaultRejoin) // the fault's shape: the others decide without lost
		return errors.Join(err, c.StartHost(lost))
	}}, killErr
}

// fenceShortened: raise fence_timeout threefold, wait until the primary
// reports it (its renewals are granted under it from then on), set it back
// and cut the primary off from the leader at once; hold for longer than
// the long lease; heal.
func (s *scheduler) fenceShortened(ctx context.Context, f *Fault, primary, leader *netcluster.Host) (injection, error) {
	c := s.c
	cfg, err := c.Config(ctx)
	if err != nil {
		return injection{heal: func() error { return nil }, held: true}, err
	}
	orig, err := time.ParseDuration(cfg.Timing.FenceTimeout)
	if err != nil {
		return injection{heal: func() error { return nil }, held: true}, fmt.Errorf("fence_timeout %q: %w", cfg.Timing.FenceTimeout, err)
	}
	long := 3 * orig
	restore := func() error { _, err := c.SetFenceTimeout(ctx, orig); return err }
	if _, err := c.SetFenceTimeout(ctx, long); err != nil {
		return injection{heal: restore, held: true}, err
	}
	if err := wait.Until(ctx, 10*time.Second, func() (bool, string) {
		ft, err := c.ReportedFenceTimeout(ctx, primary)
		return err == nil && ft == long, fmt.Sprintf("%s reports fence_timeout %s (%v)", primary.Name, ft, err)
	}); err != nil {
		return injection{heal: restore, held: true}, err
	}
	sleep(ctx, orig) // several renewals granted under the long lease
	v, err := c.SetFenceTimeout(ctx, orig)
	if err != nil {
		return injection{heal: func() error { return nil }, held: true}, err
	}
	// Until the primary has applied the short value and the leader has
	// polled it since: the leader then knows of the long leases only from
	// the configuration's prior_fence_timeout, not from the primary's own
	// report, which a leader of an older pgha judged by.
	if err := wait.Until(ctx, 10*time.Second, func() (bool, string) {
		ft, err := c.ReportedFenceTimeout(ctx, primary)
		return err == nil && ft == orig, fmt.Sprintf("%s reports fence_timeout %s (%v)", primary.Name, ft, err)
	}); err != nil {
		return injection{heal: func() error { return nil }, held: true}, err
	}
	sleep(ctx, 500*time.Millisecond)
	heal := func() error { return c.HealLink(primary, leader) }
	if primary == leader {
		f.Targets = []string{primary.Name}
		heal = func() error { return c.Heal(primary) }
		err = c.Cut(primary)
	} else {
		f.Targets = []string{primary.Name, leader.Name}
		err = c.CutLink(primary, leader)
	}
	f.Injected = time.Now()
	f.note("fence_timeout %s -> %s -> %s (version %d, prior_fence_timeout %q), then %s cut off from the leader %s", orig, long, orig, v.Version, v.PriorFenceTimeout, primary.Name, leader.Name)
	sleep(ctx, long+f.Hold)
	return injection{heal: heal, held: true}, err
}

// forcedFailover: freeze the primary's agent, ask the others for a
// failover until one is accepted (the leader refuses while it still hears
// from the primary's agent) or the hold has passed; thaw at heal.
func (s *scheduler) forcedFailover(ctx context.Context, f *Fault, primary *netcluster.Host) (injection, error) {
	c := s.c
	f.Targets = []string{primary.Name}
	heal := injection{heal: func() error { return c.ThawAgent(primary) }, held: true}
	if err := c.FreezeAgent(primary); err != nil {
		return heal, err
	}
	f.Injected = time.Now()
	var via []*netcluster.Host
	for _, h := range c.Hosts {
		if h != primary {
			via = append(via, h)
		}
	}
	deadline := f.Injected.Add(f.Hold + 10*time.Second)
	var last error
	for attempts := 1; time.Now().Before(deadline) && ctx.Err() == nil; attempts++ {
		// Each attempt is bounded: while the others still take the frozen
		// agent for their leader, they forward to it and wait.
		actx, cancel := context.WithTimeout(ctx, 8*time.Second)
		res, err := c.Failover(actx, "", via...)
		cancel()
		if err == nil {
			f.note("POST /failover accepted after %s (attempt %d), %s's PostgreSQL alive: %s", round(time.Since(f.Injected)), attempts, primary.Name, res.Message)
			last = nil
			break
		}
		last = err
		// An attempt cut short may still have been carried out.
		if v, verr := c.View(ctx); verr == nil && netcluster.Primary(v) != "" && netcluster.Primary(v) != primary.Name {
			f.note("POST /failover answered %v, but %s is the primary (epoch %d) %s after the freeze, %s's PostgreSQL alive", err, netcluster.Primary(v), v.Epoch, round(time.Since(f.Injected)), primary.Name)
			last = nil
			break
		}
		sleep(ctx, 300*time.Millisecond)
	}
	if last != nil {
		f.note("POST /failover never accepted while %s's agent was frozen: %v", primary.Name, last)
	}
	sleep(ctx, time.Until(f.Injected.Add(f.Hold))) // what is left of the hold
	return heal, nil
}

// serverState says whether h's PostgreSQL answers (over its unix socket,
// so an occupied port does not matter) and in which role, for a note.
func (s *scheduler) serverState(ctx context.Context, h *netcluster.Host) string {
	conn, err := s.c.SocketConn(ctx, h, time.Second)
	if err != nil {
		return "did not answer: " + err.Error()
	}
	defer conn.Close(context.Background())
	qctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var inRecovery bool
	if err := conn.QueryRow(qctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return "failed to answer: " + err.Error()
	}
	if inRecovery {
		return "answered as a standby"
	}
	return "answered as a primary"
}

func (s *scheduler) randomHost() *netcluster.Host {
	return s.c.Hosts[s.rng.IntN(len(s.c.Hosts))]
}

// randomOther is a random host other than h.
func (s *scheduler) randomOther(h *netcluster.Host) *netcluster.Host {
	for {
		if o := s.randomHost(); o != h {
			return o
		}
	}
}

// randomPair is two distinct random hosts, in random order.
func (s *scheduler) randomPair() (*netcluster.Host, *netcluster.Host) {
	a := s.randomHost()
	return a, s.randomOther(a)
}

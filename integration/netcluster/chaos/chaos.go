// Package chaos is the fault campaign on a netcluster (DESIGN, testing layer
// 4): writers insert rows with unique ids through VIP:9999 from the client
// namespace and record every acknowledgement, a prober samples every host's
// PostgreSQL and the VIP from inside the hosts' namespaces, and a scheduler
// injects faults at random, one at a time: a partition of the primary or of
// a random host, kill -9 of a random agent or a random postmaster, the loss
// of a host (restarted after a while), and the loss and restart of all
// three. Each fault is held for a few seconds, healed, and the scheduler
// waits until the cluster has recovered before the next.
//
// Afterwards the checker verifies: every acknowledged row is on the final
// primary; once caught up, every member holds exactly the primary's rows;
// no interval with two writable primaries (nor two VIP holders); the
// cluster ends with one primary and two streaming standbys.
//
// integration/cmd/chaos runs it from the command line, TestChaosShort in
// integration/netcluster runs the short (CI) campaign.
package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/integration/netcluster"
)

// Kind is a kind of fault.
type Kind string

// The faults the scheduler injects.
const (
	// PartitionPrimary cuts the primary's host off (a full partition of one
	// host), holds, heals.
	PartitionPrimary Kind = "partition-primary"
	// PartitionHost does the same to a random host.
	PartitionHost Kind = "partition-host"
	// KillAgent kill -9's a random agent (its PostgreSQL, and the VIP if it
	// held it, stay), holds, restarts it.
	KillAgent Kind = "kill-agent"
	// KillPostgres kill -9's a random host's postmaster. Nothing is healed
	// by hand: the agent restarts it or the leader fails over.
	KillPostgres Kind = "kill-postgres"
	// HostLoss loses a random host (every process and its network), holds,
	// brings it back (netcluster.KillHost, StartHost).
	HostLoss Kind = "host-loss"
	// RestartAll loses all three hosts at once, holds, starts them again.
	RestartAll Kind = "restart-all"
)

// Kinds lists every kind, in the order reports print them.
var Kinds = []Kind{PartitionPrimary, PartitionHost, KillAgent, KillPostgres, HostLoss, RestartAll}

// weight is how often the scheduler picks a kind, relative to the others.
var weight = map[Kind]int{PartitionPrimary: 2, PartitionHost: 2, KillAgent: 2, KillPostgres: 2, HostLoss: 2, RestartAll: 1}

// Options configure a campaign. Zero values take the defaults.
type Options struct {
	// Duration: no fault is injected after it has passed (default 10m).
	Duration time.Duration
	// Faults stops the campaign after this many faults (0: Duration only).
	Faults int
	// Seed makes the schedule (kinds, targets, hold times) reproducible.
	Seed int64
	// Short is the CI campaign: every kind once, in an order the seed
	// shuffles, each held 2s (about two to three minutes in all).
	Short bool
	// HoldMin and HoldMax bound how long a fault is held (default 2s-6s).
	HoldMin, HoldMax time.Duration
	// RecoveryTimeout bounds the wait for recovery after a fault is healed
	// (default 2m). A fault that does not recover fails the campaign.
	RecoveryTimeout time.Duration
	// Writers is the number of concurrent writer sessions (default 4).
	Writers int
	// Logf receives one line per event (nil: none).
	Logf func(format string, args ...any)
}

func (o Options) withDefaults() Options {
	if o.Duration == 0 {
		o.Duration = 10 * time.Minute
	}
	if o.HoldMin == 0 {
		o.HoldMin = 2 * time.Second
	}
	if o.HoldMax == 0 {
		o.HoldMax = 6 * time.Second
	}
	if o.Short {
		o.HoldMin, o.HoldMax = 2*time.Second, 2*time.Second
		if o.Faults == 0 {
			o.Faults = len(Kinds)
		}
	}
	if o.HoldMax < o.HoldMin {
		o.HoldMax = o.HoldMin
	}
	if o.RecoveryTimeout == 0 {
		o.RecoveryTimeout = 2 * time.Minute
	}
	if o.Writers == 0 {
		o.Writers = 4
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	return o
}

// Fault is one injected fault and what followed.
type Fault struct {
	N       int
	Kind    Kind
	Targets []string
	Hold    time.Duration
	// PrimaryBefore, LeaderBefore and EpochBefore are the majority's view
	// just before the injection; PrimaryAfter and EpochAfter once recovered.
	PrimaryBefore, LeaderBefore, PrimaryAfter string
	EpochBefore, EpochAfter                   uint64
	// Injected is when the fault was fully in place (the partition's
	// port down, every process of a lost host dead); Healed when the
	// healing (Heal, StartHost) was done.
	Injected, Healed time.Time
	// WritesResumed is from the injection to the acknowledgement of the
	// first insert sent after the injection (inserts in flight at the
	// injection do not count).
	WritesResumed time.Duration
	// RecoveredIn is from the injection to the moment the cluster was
	// whole again: the majority's view shows one running primary and two
	// streaming standbys, exactly that primary accepts writes (asked on
	// every host), exactly the Raft leader holds the VIP, and an insert
	// sent after the heal was acknowledged through the VIP.
	RecoveredIn time.Duration
	Recovered   bool
	Err         string // why it did not recover, or the injection failed
}

// Run runs a campaign on c: starts the agents (if they are not running),
// waits for a healthy cluster, writes and injects faults until
// Options.Duration or Options.Faults, then checks. The error is for a
// campaign that could not run at all; failed checks are in the Report.
func Run(ctx context.Context, c *netcluster.Cluster, opts Options) (*Report, error) {
	opts = opts.withDefaults()
	r := &Report{Seed: opts.Seed, Short: opts.Short, Started: time.Now()}
	if err := c.StartAll(); err != nil {
		return nil, err
	}
	v, err := c.AwaitHealthy(ctx, 3*time.Minute)
	if err != nil {
		return nil, fmt.Errorf("the cluster did not come up: %w", err)
	}
	opts.Logf("cluster up: %s", netcluster.Describe(v))
	p := c.StartProber(100 * time.Millisecond)
	defer p.Stop()
	w, err := c.StartWriter(ctx, netcluster.WriterOptions{Table: "chaos", Conns: opts.Writers})
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	if _, err := w.AwaitAckSentAfter(ctx, time.Now(), time.Minute); err != nil {
		return nil, fmt.Errorf("no write through the VIP: %w", err)
	}
	s := &scheduler{c: c, w: w, opts: opts, rng: rand.New(rand.NewPCG(uint64(opts.Seed), 0x9e3779b97f4a7c15))}
	deadline := time.Now().Add(opts.Duration)
	for n := 1; ; n++ {
		if opts.Faults > 0 && n > opts.Faults {
			break
		}
		if !opts.Short && time.Now().After(deadline) {
			break
		}
		if ctx.Err() != nil {
			r.problem("interrupted after %d faults", n-1)
			break
		}
		f := s.run(ctx, n)
		r.Faults = append(r.Faults, f)
		if !f.Recovered {
			r.problem("fault %d (%s on %v) did not recover: %s", f.N, f.Kind, f.Targets, f.Err)
			if !s.repair(ctx) {
				r.problem("the cluster could not be repaired; campaign stopped")
				break
			}
		}
		// A quiet moment with writes flowing, so faults do not always
		// strike at the instant recovery completes.
		if !opts.Short {
			sleep(ctx, time.Duration(s.rng.Int64N(int64(2*time.Second))))
		}
	}
	r.Ended = time.Now()
	s.check(ctx, r, p)
	return r, nil
}

// scheduler injects one fault at a time. Its methods run on Run's goroutine.
type scheduler struct {
	c     *netcluster.Cluster
	w     *netcluster.Writer
	opts  Options
	rng   *rand.Rand
	order []Kind // Short: the shuffled kinds
}

func (s *scheduler) pick(n int) Kind {
	if s.opts.Short {
		if s.order == nil {
			s.order = slices.Clone(Kinds)
			s.rng.Shuffle(len(s.order), func(i, j int) { s.order[i], s.order[j] = s.order[j], s.order[i] })
		}
		return s.order[(n-1)%len(s.order)]
	}
	total := 0
	for _, k := range Kinds {
		total += weight[k]
	}
	x := s.rng.IntN(total)
	for _, k := range Kinds {
		if x < weight[k] {
			return k
		}
		x -= weight[k]
	}
	return Kinds[0]
}

func (s *scheduler) hold() time.Duration {
	span := s.opts.HoldMax - s.opts.HoldMin
	if span <= 0 {
		return s.opts.HoldMin
	}
	return s.opts.HoldMin + time.Duration(s.rng.Int64N(int64(span)))
}

func (s *scheduler) randomHost() *netcluster.Host {
	return s.c.Hosts[s.rng.IntN(len(s.c.Hosts))]
}

// run injects fault n, holds it, heals it and waits for recovery.
func (s *scheduler) run(ctx context.Context, n int) Fault {
	c := s.c
	kind := s.pick(n)
	f := Fault{N: n, Kind: kind, Hold: s.hold()}
	v, err := c.View(ctx)
	if err == nil {
		f.PrimaryBefore, f.LeaderBefore, f.EpochBefore = netcluster.Primary(v), v.RaftLeader, v.Epoch
	}
	var targets []*netcluster.Host
	switch kind {
	case PartitionPrimary:
		if h := c.Host(f.PrimaryBefore); h != nil {
			targets = []*netcluster.Host{h}
		} else {
			targets = []*netcluster.Host{s.randomHost()}
		}
	case RestartAll:
		targets = c.Hosts
	default:
		targets = []*netcluster.Host{s.randomHost()}
	}
	for _, h := range targets {
		f.Targets = append(f.Targets, h.Name)
	}
	s.opts.Logf("fault %d: %s on %v, held %s (primary %s, leader %s, epoch %d)", n, kind, f.Targets, f.Hold, f.PrimaryBefore, f.LeaderBefore, f.EpochBefore)

	var injectErr error
	for _, h := range targets {
		switch kind {
		case PartitionPrimary, PartitionHost:
			injectErr = errors.Join(injectErr, c.Cut(h))
		case KillAgent:
			c.KillAgent(h)
		case KillPostgres:
			injectErr = errors.Join(injectErr, c.KillPostgres(h))
		case HostLoss, RestartAll:
			injectErr = errors.Join(injectErr, c.KillHost(h))
		}
	}
	// Injected is when the fault is fully in place: a partition's bridge
	// port is down, every process of a lost host is dead.
	f.Injected = time.Now()
	s.opts.Logf("fault %d: in place at %s", n, f.Injected.Format("15:04:05.000"))
	if kind != KillPostgres {
		sleep(ctx, f.Hold) // the fault's duration, not a synchronisation
	}
	for _, h := range targets {
		switch kind {
		case PartitionPrimary, PartitionHost:
			injectErr = errors.Join(injectErr, c.Heal(h))
		case KillAgent, HostLoss, RestartAll:
			injectErr = errors.Join(injectErr, c.StartHost(h))
		}
	}
	f.Healed = time.Now()
	if injectErr != nil {
		s.opts.Logf("fault %d: injecting or healing: %v", n, injectErr)
	}

	v, recoveredAt, err := s.awaitRecovery(ctx, f.Healed)
	if first, ok := s.w.FirstAckSentAfter(f.Injected); ok {
		f.WritesResumed = first.At.Sub(f.Injected)
	}
	if err != nil {
		f.Err = err.Error()
		if injectErr != nil {
			f.Err += "; injection: " + injectErr.Error()
		}
		s.opts.Logf("fault %d: NOT RECOVERED: %s", n, f.Err)
		return f
	}
	f.Recovered, f.RecoveredIn = true, recoveredAt.Sub(f.Injected)
	f.PrimaryAfter, f.EpochAfter = netcluster.Primary(v), v.Epoch
	s.opts.Logf("fault %d: writes resumed after %s, recovered after %s: %s", n, round(f.WritesResumed), round(f.RecoveredIn), netcluster.Describe(v))
	return f
}

// awaitRecovery waits until the cluster is whole (netcluster.AwaitHealthy)
// and an insert sent after healed is acknowledged; it returns when both
// held.
func (s *scheduler) awaitRecovery(ctx context.Context, healed time.Time) (agent.ClusterView, time.Time, error) {
	v, err := s.c.AwaitHealthy(ctx, s.opts.RecoveryTimeout)
	if err != nil {
		return v, time.Time{}, err
	}
	at := time.Now()
	ack, err := s.w.AwaitAckSentAfter(ctx, healed, s.opts.RecoveryTimeout)
	if err != nil {
		return v, time.Time{}, fmt.Errorf("healthy, but no write through the VIP: %w", err)
	}
	if ack.At.After(at) {
		at = ack.At
	}
	return v, at, nil
}

// repair heals every link, starts every host and waits once more.
func (s *scheduler) repair(ctx context.Context) bool {
	_ = s.c.HealAll()
	for _, h := range s.c.Hosts {
		_ = s.c.StartHost(h)
	}
	_, err := s.c.AwaitHealthy(ctx, s.opts.RecoveryTimeout)
	s.opts.Logf("repair: %v", err)
	return err == nil
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func round(d time.Duration) time.Duration { return d.Round(10 * time.Millisecond) }

// Package chaos is the fault campaign on a netcluster (DESIGN, testing layer
// 4, the nemesis): writers insert rows with unique ids through VIP:9999 and
// directly to every host's PostgreSQL (as clients behind HAProxy, or
// configured with a host's address, would) from the client namespace, and
// record every acknowledgement, telling apart commits acknowledged after
// the writer cancelled their wait for the synchronous standby; probers
// sample, from inside the hosts' namespaces, which PostgreSQL is writable,
// which host holds the VIP and every host's WAL position, and, from the
// client namespace, which standbys answer /replica 200 and which serve
// reads through the router. A scheduler injects faults at random, one at a
// time (faults.go lists the kinds: partitions of a host, of one link both
// ways or one way, a slow link, kill -9 and SIGSTOP of agents and servers,
// stalled agent sessions, a double fault, a server that cannot start, full
// disks, a forced failover, lost hosts), holds each, heals it, and waits
// until the cluster has recovered before the next.
//
// Afterwards the checker (check.go) verifies: every acknowledged row is on
// the final primary and, once caught up, every member holds exactly the
// primary's rows; no two servers acknowledged commits at once; no two
// writable primaries nor two VIP holders were seen at once; no standby off
// the primary's history answered /replica 200 or served a read; the cluster
// recovered after every fault and ends with one primary and two streaming
// standbys.
//
// integration/cmd/chaos runs it from the command line, TestChaosShort in
// integration/netcluster runs the short (CI) campaign. The cluster must be
// built with netcluster.Options.DataFS, for the full disks.
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
	"github.com/pgha/pgha/internal/itest"
)

// Options configure a campaign. Zero values take the defaults.
type Options struct {
	// Duration: no fault is injected after it has passed (default 10m).
	Duration time.Duration
	// Faults stops the campaign after this many faults (0: Duration only).
	Faults int
	// Kinds limits the campaign to these kinds (default: all of Kinds).
	Kinds []Kind
	// Seed makes the schedule (kinds, targets, hold times) reproducible.
	Seed int64
	// Short is the CI campaign: every kind once, in an order the seed
	// shuffles, each held 2s: about two minutes when every fault recovers
	// (one that does not adds up to twice RecoveryTimeout: wait, repair).
	Short bool
	// HoldMin and HoldMax bound how long a fault is held (default 2s-6s);
	// FreezeMin and FreezeMax how long a process stays SIGSTOPped (default
	// 2s-30s).
	HoldMin, HoldMax     time.Duration
	FreezeMin, FreezeMax time.Duration
	// RecoveryTimeout bounds the wait for recovery after a fault is healed
	// (default 2m). A fault that does not recover fails the campaign.
	RecoveryTimeout time.Duration
	// Writers is the number of concurrent writer sessions through the VIP
	// (default 4); one more per host writes to it directly.
	Writers int
	// CancelAfter is the writers' statement timeout, after which they
	// cancel the insert (default 2s; see itest.WriterOptions).
	CancelAfter time.Duration
	// Logf receives one line per event (nil: none).
	Logf func(format string, args ...any)
}

func (o Options) withDefaults() Options {
	if len(o.Kinds) == 0 {
		o.Kinds = Kinds
	}
	if o.Duration == 0 {
		o.Duration = 10 * time.Minute
	}
	if o.HoldMin == 0 {
		o.HoldMin = 2 * time.Second
	}
	if o.HoldMax == 0 {
		o.HoldMax = 6 * time.Second
	}
	if o.FreezeMin == 0 {
		o.FreezeMin = 2 * time.Second
	}
	if o.FreezeMax == 0 {
		o.FreezeMax = 30 * time.Second
	}
	if o.Short {
		o.HoldMin, o.HoldMax = 2*time.Second, 2*time.Second
		o.FreezeMin, o.FreezeMax = 2*time.Second, 2*time.Second
		if o.Faults == 0 {
			o.Faults = len(o.Kinds)
		}
	}
	o.HoldMax = max(o.HoldMax, o.HoldMin)
	o.FreezeMax = max(o.FreezeMax, o.FreezeMin)
	if o.CancelAfter == 0 {
		o.CancelAfter = 2 * time.Second
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
	// Details are what the injection saw and did, for the report.
	Details []string
}

func (f *Fault) note(format string, args ...any) {
	f.Details = append(f.Details, fmt.Sprintf(format, args...))
}

// Run runs a campaign on c: starts the agents (if they are not running),
// waits for a healthy cluster, writes and injects faults until
// Options.Duration or Options.Faults, then checks. The error is for a
// campaign that could not run at all; failed checks are in the Report.
func Run(ctx context.Context, c *netcluster.Cluster, opts Options) (*Report, error) {
	opts = opts.withDefaults()
	r := &Report{Seed: opts.Seed, Short: opts.Short, Started: time.Now()}
	for _, k := range opts.Kinds {
		if _, ok := weight[k]; !ok {
			return nil, fmt.Errorf("chaos: unknown fault kind %q (kinds: %v)", k, Kinds)
		}
	}
	if !c.HasDataFS() {
		return nil, errors.New("chaos: the cluster needs netcluster.Options.DataFS (the full-disk faults fill it)")
	}
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
	d := c.StartDivergenceProber(250 * time.Millisecond)
	defer d.Stop()
	sv := c.StartServingProber(200 * time.Millisecond)
	defer sv.Stop()
	w, err := c.StartWriter(ctx, itest.WriterOptions{Table: "chaos", Conns: opts.Writers, Direct: true, CancelAfter: opts.CancelAfter})
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
	s.check(ctx, r, probes{writable: p, divergence: d, serving: sv})
	return r, nil
}

// scheduler injects one fault at a time. Its methods run on Run's goroutine.
type scheduler struct {
	c     *netcluster.Cluster
	w     *itest.Writer
	opts  Options
	rng   *rand.Rand
	order []Kind // Short: the shuffled kinds
}

func (s *scheduler) pick(n int) Kind {
	if s.opts.Short {
		if s.order == nil {
			s.order = slices.Clone(s.opts.Kinds)
			s.rng.Shuffle(len(s.order), func(i, j int) { s.order[i], s.order[j] = s.order[j], s.order[i] })
		}
		return s.order[(n-1)%len(s.order)]
	}
	total := 0
	for _, k := range s.opts.Kinds {
		total += weight[k]
	}
	x := s.rng.IntN(total)
	for _, k := range s.opts.Kinds {
		if x < weight[k] {
			return k
		}
		x -= weight[k]
	}
	return s.opts.Kinds[0]
}

func (s *scheduler) hold(k Kind) time.Duration {
	lo, hi := s.opts.HoldMin, s.opts.HoldMax
	if freezes[k] {
		lo, hi = s.opts.FreezeMin, s.opts.FreezeMax
	}
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(s.rng.Int64N(int64(hi-lo)))
}

// run injects fault n, holds it, heals it and waits for recovery.
func (s *scheduler) run(ctx context.Context, n int) Fault {
	c := s.c
	kind := s.pick(n)
	f := Fault{N: n, Kind: kind, Hold: s.hold(kind)}
	v, err := c.View(ctx)
	if err == nil {
		f.PrimaryBefore, f.LeaderBefore, f.EpochBefore = netcluster.Primary(v), v.RaftLeader, v.Epoch
	}
	s.opts.Logf("fault %d: %s, held %s (primary %s, leader %s, epoch %d)", n, kind, f.Hold, f.PrimaryBefore, f.LeaderBefore, f.EpochBefore)
	inj, injectErr := s.inject(ctx, &f)
	// Injected is when the fault is fully in place (a partition's bridge
	// port is down, every process of a lost host is dead), unless the
	// injection, having steps, set it at its first.
	if f.Injected.IsZero() {
		f.Injected = time.Now()
	}
	s.opts.Logf("fault %d: %s on %v in place at %s", n, kind, f.Targets, f.Injected.Format("15:04:05.000"))
	for _, d := range f.Details {
		s.opts.Logf("fault %d: %s", n, d)
	}
	if !inj.held {
		sleep(ctx, time.Until(f.Injected.Add(f.Hold))) // the fault's duration, not a synchronisation
	}
	if inj.heal != nil {
		injectErr = errors.Join(injectErr, inj.heal())
	}
	f.Healed = time.Now()
	if injectErr != nil {
		f.note("injecting or healing: %v", injectErr)
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

// repair undoes every fault (links, frozen processes, an occupied port, a
// full disk), starts every host and waits once more.
func (s *scheduler) repair(ctx context.Context) bool {
	c := s.c
	_ = c.HealAll()
	for _, h := range c.Hosts {
		_ = c.ThawAgent(h)
		_ = c.ThawPostgres(h)
		_ = c.ReleasePGPort(h)
		_ = c.FreeDisk(h)
		_ = c.StartHost(h)
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

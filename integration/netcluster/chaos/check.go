package chaos

import (
	"context"
	"fmt"
	"maps"
	"time"

	"github.com/pgha/pgha/integration/netcluster"
	"github.com/pgha/pgha/internal/wait"
)

// probes are the observers a campaign ran.
type probes struct {
	writable   *netcluster.Prober           // writable PostgreSQL, VIP holders
	divergence *netcluster.DivergenceProber // WAL positions
	serving    *netcluster.ServingProber    // /replica 200s, reads
}

// check stops the writers and the probers and verifies the campaign's
// invariants, recording every failure in r. Cancel-acknowledged commits that
// are missing, or that two servers acknowledged at once, are counted and
// reported, not failures: PostgreSQL told the application the commit might
// not be replicated.
func (s *scheduler) check(ctx context.Context, r *Report, p probes) {
	c := s.c
	s.w.Stop()
	p.writable.Stop()
	p.divergence.Stop()
	p.serving.Stop()
	acks := s.w.Acks()
	for _, a := range acks {
		switch {
		case a.CancelAcked:
			r.CancelAcks++
		case a.Via == netcluster.ViaVIP:
			r.Acks++
		default:
			r.DirectAcks++
		}
	}
	r.WriteErrors, _ = s.w.Errors()
	r.DirectSummary = s.w.DirectSummary()
	r.ProbeSummary = p.writable.Summary()
	r.DivergenceSummary = p.divergence.Summary()
	r.FenceSummary = FenceSummary(c.FenceDelays())
	r.Reads = p.serving.Reads()

	r.DoublePrimaries = p.writable.DoublePrimaries()
	for _, i := range r.DoublePrimaries {
		r.problem("two writable primaries: %s%s", i, r.at(i.Start))
	}
	r.DoubleVIPs = p.writable.DoubleVIPs()
	for _, i := range r.DoubleVIPs {
		r.problem("two VIP holders: %s%s", i, r.at(i.Start))
	}
	r.DoubleAcks = DoubleAcks(acks, false)
	for _, d := range r.DoubleAcks {
		r.problem("two servers acknowledged commits at once: %s%s", d, r.at(d.Start))
	}
	// Intervals that only the cancel-acknowledged commits make.
	plain := map[string]bool{}
	for _, d := range r.DoubleAcks {
		plain[d.A+" "+d.B] = true
	}
	for _, d := range DoubleAcks(acks, true) {
		if !plain[d.A+" "+d.B] {
			r.DoubleCancelAcks = append(r.DoubleCancelAcks, d)
		}
	}
	r.DivergedServing = netcluster.DivergedServing(p.divergence.Positions(), p.serving.Served())
	for _, d := range r.DivergedServing {
		r.problem("a standby off the primary's history served: %s%s", d, r.at(d.Start))
	}

	v, err := c.AwaitHealthy(ctx, s.opts.RecoveryTimeout)
	r.Final = netcluster.Describe(v)
	if err != nil {
		r.problem("final state is not one primary and two streaming standbys: %v", err)
		if v, err = c.View(ctx); err != nil {
			r.problem("no view of the cluster: %v", err)
			return
		}
	}
	r.FinalHealthy = err == nil
	primary := c.Host(netcluster.Primary(v))
	if primary == nil {
		r.problem("no primary to check the rows on: %s", netcluster.Describe(v))
		return
	}
	r.FinalPrimary = primary.Name
	want, err := c.IDs(ctx, primary, s.w.Table())
	if err != nil {
		r.problem("read the rows on the primary %s: %v", primary.Name, err)
		return
	}
	r.Rows = len(want)
	for _, a := range acks {
		switch {
		case want[a.ID]:
		case a.CancelAcked:
			r.LostCancelAcked = append(r.LostCancelAcked, a)
		default:
			r.Lost = append(r.Lost, a)
		}
	}
	for _, a := range r.Lost {
		r.problem("acknowledged insert %d (via %s, by %s on timeline %d at %s) is missing on the final primary %s%s",
			a.ID, a.Via, a.Host, a.Timeline, a.At.Format("15:04:05.000"), primary.Name, r.before(a.At))
		if len(r.Problems) > 200 {
			r.problem("... and more: %d lost in all", len(r.Lost))
			break
		}
	}
	for _, h := range c.Hosts {
		if h == primary {
			continue
		}
		// The primary is read again on every try: a commit still waiting
		// for its synchronous standby is already replayed on the standby
		// but not yet visible on the primary.
		var got map[int64]bool
		err := wait.Until(ctx, time.Minute, func() (bool, string) {
			var err error
			if got, err = c.IDs(ctx, h, s.w.Table()); err != nil {
				return false, err.Error()
			}
			now, err := c.IDs(ctx, primary, s.w.Table())
			if err != nil {
				return false, err.Error()
			}
			return maps.Equal(got, now), diff(got, now)
		})
		if err != nil {
			r.Divergent = append(r.Divergent, fmt.Sprintf("%s: %v", h.Name, err))
			r.problem("%s does not hold the primary's rows: %v", h.Name, err)
		}
	}
}

// diff says how got differs from want.
func diff(got, want map[int64]bool) string {
	missing, extra := 0, 0
	for id := range want {
		if !got[id] {
			missing++
		}
	}
	for id := range got {
		if !want[id] {
			extra++
		}
	}
	return fmt.Sprintf("%d rows (primary %d): %d missing, %d extra", len(got), len(want), missing, extra)
}

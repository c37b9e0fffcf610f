package chaos

import (
	"context"
	"fmt"
	"maps"
	"time"

	"github.com/pgha/pgha/integration/netcluster"
)

// check stops the writers and the prober and verifies the campaign's
// invariants, recording every failure in r.
func (s *scheduler) check(ctx context.Context, r *Report, p *netcluster.Prober) {
	c := s.c
	s.w.Stop()
	p.Stop()
	acks := s.w.Acks()
	r.Acks = len(acks)
	r.WriteErrors, _ = s.w.Errors()
	r.ProbeSummary = p.Summary()

	r.DoublePrimaries = p.DoublePrimaries()
	for _, i := range r.DoublePrimaries {
		r.problem("two writable primaries: %s", i)
	}
	r.DoubleVIPs = p.DoubleVIPs()
	for _, i := range r.DoubleVIPs {
		r.problem("two VIP holders: %s", i)
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
		if !want[a.ID] {
			r.Lost = append(r.Lost, a)
		}
	}
	if len(r.Lost) > 0 {
		r.problem("%d acknowledged inserts are missing on the final primary %s, e.g. %v", len(r.Lost), primary.Name, ids(r.Lost, 5))
	}
	for _, h := range c.Hosts {
		if h == primary {
			continue
		}
		var got map[int64]bool
		err := netcluster.Poll(ctx, time.Minute, func() (bool, string) {
			var err error
			if got, err = c.IDs(ctx, h, s.w.Table()); err != nil {
				return false, err.Error()
			}
			return maps.Equal(got, want), diff(got, want)
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

func ids(acks []netcluster.Ack, n int) []int64 {
	var out []int64
	for i, a := range acks {
		if i == n {
			break
		}
		out = append(out, a.ID)
	}
	return out
}

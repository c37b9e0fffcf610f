package netcluster

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Sample is one observation of one host.
type Sample struct {
	// At is when it held: for PostgreSQL the server's clock_timestamp()
	// evaluated with pg_is_in_recovery() (all namespaces share the kernel's
	// clock, so the hosts' answers compare exactly); for the VIP the time
	// the kernel's answer arrived.
	At time.Time
	OK bool // the host answered
	On bool // it was a writable primary / it held the VIP
}

// Interval is a time when two hosts were both "on".
type Interval struct {
	Start, End time.Time
	Hosts      [2]string
}

func (i Interval) String() string {
	return fmt.Sprintf("%s and %s from %s for %s", i.Hosts[0], i.Hosts[1],
		i.Start.Format("15:04:05.000"), i.End.Sub(i.Start).Round(time.Millisecond))
}

// Prober samples, every interval and throughout, each host's PostgreSQL
// (from inside the host's own namespace, over a session it keeps open, so a
// host cut off from everyone still answers) and which hosts carry the VIP.
// Its goroutines are owned by the Prober: Stop ends them. The readers may
// be called at any time.
type Prober struct {
	c        *Cluster
	interval time.Duration

	mu  sync.Mutex
	pg  map[string][]Sample
	vip map[string][]Sample
	// vipFrozen counts, per host, samples in which the VIP was on a host
	// whose agent was frozen (see probeVIP).
	vipFrozen map[string]int

	loops loops
}

// StartProber starts sampling every interval (100ms if 0).
func (c *Cluster) StartProber(interval time.Duration) *Prober {
	if interval == 0 {
		interval = 100 * time.Millisecond
	}
	p := &Prober{c: c, interval: interval, pg: map[string][]Sample{}, vip: map[string][]Sample{}, vipFrozen: map[string]int{}, loops: newLoops()}
	for _, h := range c.Hosts {
		p.loops.run(func(ctx context.Context) { p.probePostgres(ctx, h) })
	}
	p.loops.run(p.probeVIP)
	return p
}

// Stop ends sampling and waits for the goroutines.
func (p *Prober) Stop() { p.loops.stop() }

func (p *Prober) probePostgres(ctx context.Context, h *Host) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s := Sample{At: time.Now()}
		if conn == nil {
			conn, _ = p.c.DialHost(ctx, h, time.Second)
		}
		if conn != nil {
			qctx, cancel := context.WithTimeout(ctx, time.Second)
			var inRecovery bool
			var at time.Time
			err := conn.QueryRow(qctx, "SELECT pg_is_in_recovery(), clock_timestamp()").Scan(&inRecovery, &at)
			cancel()
			if err == nil {
				s = Sample{At: at, OK: true, On: !inRecovery}
			} else {
				conn.Close(context.Background())
				conn = nil
			}
		}
		if ctx.Err() != nil {
			return
		}
		p.mu.Lock()
		p.pg[h.Name] = append(p.pg[h.Name], s)
		p.mu.Unlock()
	}
}

func (p *Prober) probeVIP(ctx context.Context) {
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, h := range p.c.Hosts {
			held, err := p.c.HoldsVIP(h)
			if held && p.c.AgentCannotServe(h) {
				// A frozen or killed agent cannot drop the address, nor
				// serve through it: the Raft leader takes the VIP over
				// (gratuitous ARP) and the agent drops it when it wakes or
				// starts again (within WakeGrace). Counted apart, not as a
				// second holder; two live holders still are.
				p.mu.Lock()
				p.vipFrozen[h.Name]++
				p.mu.Unlock()
				held = false
			}
			s := Sample{At: time.Now(), OK: err == nil, On: held}
			p.mu.Lock()
			p.vip[h.Name] = append(p.vip[h.Name], s)
			p.mu.Unlock()
		}
	}
}

// maxGap is the longest silence between two samples of one host that still
// counts as "the same state throughout": longer, and nothing is claimed.
const maxGap = time.Second

// DoublePrimaries are the intervals in which two hosts' PostgreSQL both
// accepted writes, as far as the samples prove it (see Overlaps).
func (p *Prober) DoublePrimaries() []Interval {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Overlaps(p.pg, maxGap)
}

// DoubleVIPs are the intervals in which two hosts held the VIP.
func (p *Prober) DoubleVIPs() []Interval {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Overlaps(p.vip, maxGap)
}

// Summary counts samples per host: answered, primary, VIP held.
func (p *Prober) Summary() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var parts []string
	for _, h := range p.c.Hosts {
		ok, on, vip := 0, 0, 0
		for _, s := range p.pg[h.Name] {
			if s.OK {
				ok++
			}
			if s.OK && s.On {
				on++
			}
		}
		for _, s := range p.vip[h.Name] {
			if s.OK && s.On {
				vip++
			}
		}
		parts = append(parts, fmt.Sprintf("%s: %d PostgreSQL samples (%d answered, %d primary), %d VIP samples held, %d more while its agent was frozen, killed or just woken", h.Name, len(p.pg[h.Name]), ok, on, vip, p.vipFrozen[h.Name]))
	}
	return strings.Join(parts, "; ")
}

// PrimarySince reports the earliest sample time, at or after t, at which h
// answered as a writable primary (zero if none).
func (p *Prober) PrimarySince(h string, t time.Time) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.pg[h] {
		if s.OK && s.On && !s.At.Before(t) {
			return s.At
		}
	}
	return time.Time{}
}

// LastPrimary is the last sample time at which h answered as a writable
// primary (zero if never).
func (p *Prober) LastPrimary(h string) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.pg[h]
	for i := len(s) - 1; i >= 0; i-- {
		if s[i].OK && s[i].On {
			return s[i].At
		}
	}
	return time.Time{}
}

// Overlaps finds when two hosts were "on" at once. Each host's samples are
// cut into runs: consecutive samples all OK and On, at most maxGap apart.
// A run proves the host was on at its first and its last sample, and is
// taken to mean it was on in between (the samples leave it no time to be
// off and on again unseen). Two runs of different hosts that overlap in
// time are an interval of both on; a run of one sample is a point.
func Overlaps(series map[string][]Sample, maxGap time.Duration) []Interval {
	type run struct{ start, end time.Time }
	runs := map[string][]run{}
	var hosts []string
	for h, samples := range series {
		hosts = append(hosts, h)
		s := append([]Sample(nil), samples...)
		sort.SliceStable(s, func(i, j int) bool { return s[i].At.Before(s[j].At) })
		var cur *run
		var last time.Time
		for _, x := range s {
			on := x.OK && x.On
			if cur != nil && (!on || x.At.Sub(last) > maxGap) {
				runs[h] = append(runs[h], *cur)
				cur = nil
			}
			if on {
				if cur == nil {
					cur = &run{start: x.At}
				}
				cur.end = x.At
			}
			last = x.At
		}
		if cur != nil {
			runs[h] = append(runs[h], *cur)
		}
	}
	sort.Strings(hosts)
	var out []Interval
	for i, a := range hosts {
		for _, b := range hosts[i+1:] {
			for _, ra := range runs[a] {
				for _, rb := range runs[b] {
					start, end := ra.start, ra.end
					if rb.start.After(start) {
						start = rb.start
					}
					if rb.end.Before(end) {
						end = rb.end
					}
					if !start.After(end) {
						out = append(out, Interval{Start: start, End: end, Hosts: [2]string{a, b}})
					}
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	return out
}

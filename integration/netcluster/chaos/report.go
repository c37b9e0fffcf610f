package chaos

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pgha/pgha/integration/netcluster"
)

// Report is what a campaign did and what the checker found.
type Report struct {
	Seed           int64
	Short          bool
	Started, Ended time.Time
	Faults         []Fault

	Acks        int // acknowledged inserts
	WriteErrors int // failed attempts (outcome unknown, not counted)
	Rows        int // rows on the final primary
	// Lost are acknowledged inserts missing on the final primary.
	Lost []netcluster.Ack
	// Divergent describes standbys that never came to hold exactly the
	// primary's rows.
	Divergent       []string
	DoublePrimaries []netcluster.Interval
	DoubleVIPs      []netcluster.Interval
	FinalPrimary    string
	FinalHealthy    bool
	Final           string // the final view, described
	ProbeSummary    string
	// Problems lists every failed check; empty means the campaign passed.
	Problems []string
}

func (r *Report) problem(format string, args ...any) {
	r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
}

// Failed reports whether any check failed.
func (r *Report) Failed() bool { return len(r.Problems) > 0 }

// blame is the fault a lost write is charged to: the first fault injected
// after its acknowledgement (nil if it came after the last one).
func (r *Report) blame(acked time.Time) *Fault {
	for i := range r.Faults {
		if r.Faults[i].Injected.After(acked) {
			return &r.Faults[i]
		}
	}
	return nil
}

// during is the fault whose window (from its injection to the next
// injection) contains t (nil before the first).
func (r *Report) during(t time.Time) *Fault {
	var f *Fault
	for i := range r.Faults {
		if !r.Faults[i].Injected.After(t) {
			f = &r.Faults[i]
		}
	}
	return f
}

// KindStats are the figures of one kind of fault.
type KindStats struct {
	Kind                         Kind
	Count, NotRecovered          int
	ResumedP50, ResumedP99       time.Duration
	RecoveredP50, RecoveredP99   time.Duration
	Lost, DoublePrimary, DoubleV int
}

// Stats computes the per-kind figures; kinds never injected are left out.
func (r *Report) Stats() []KindStats {
	by := map[Kind]*KindStats{}
	var resumed, recovered = map[Kind][]time.Duration{}, map[Kind][]time.Duration{}
	for _, f := range r.Faults {
		ks := by[f.Kind]
		if ks == nil {
			ks = &KindStats{Kind: f.Kind}
			by[f.Kind] = ks
		}
		ks.Count++
		if !f.Recovered {
			ks.NotRecovered++
			continue
		}
		resumed[f.Kind] = append(resumed[f.Kind], f.WritesResumed)
		recovered[f.Kind] = append(recovered[f.Kind], f.RecoveredIn)
	}
	for _, a := range r.Lost {
		if f := r.blame(a.At); f != nil {
			by[f.Kind].Lost++
		}
	}
	for _, i := range r.DoublePrimaries {
		if f := r.during(i.Start); f != nil {
			by[f.Kind].DoublePrimary++
		}
	}
	for _, i := range r.DoubleVIPs {
		if f := r.during(i.Start); f != nil {
			by[f.Kind].DoubleV++
		}
	}
	var out []KindStats
	for _, k := range Kinds {
		ks, ok := by[k]
		if !ok {
			continue
		}
		ks.ResumedP50, ks.ResumedP99 = percentile(resumed[k], 0.50), percentile(resumed[k], 0.99)
		ks.RecoveredP50, ks.RecoveredP99 = percentile(recovered[k], 0.50), percentile(recovered[k], 0.99)
		out = append(out, *ks)
	}
	return out
}

// percentile is the nearest-rank percentile (0 for no values).
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// Print writes the faults, the per-kind table, the checks and the
// definitions of the figures.
func (r *Report) Print(w io.Writer) {
	mode := "full"
	if r.Short {
		mode = "short"
	}
	fmt.Fprintf(w, "chaos campaign (%s): seed %d, %d faults in %s\n\n", mode, r.Seed, len(r.Faults), r.Ended.Sub(r.Started).Round(time.Second))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tfault\ttarget\thold\tprimary before -> after\tepoch\twrites resumed\trecovered")
	for _, f := range r.Faults {
		rec := "NOT RECOVERED"
		if f.Recovered {
			rec = secs(f.RecoveredIn)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s -> %s\t%d -> %d\t%s\t%s\n", f.N, f.Kind, strings.Join(f.Targets, ","), secs(f.Hold),
			dash(f.PrimaryBefore), dash(f.PrimaryAfter), f.EpochBefore, f.EpochAfter, secs(f.WritesResumed), rec)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "fault kind\tcount\tresumed p50\tresumed p99\trecovered p50\trecovered p99\tnot recovered\tacked writes lost\tdouble-primary intervals\tdouble-VIP intervals\t")
	var total KindStats
	for _, ks := range r.Stats() {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t\n", ks.Kind, ks.Count, secs(ks.ResumedP50), secs(ks.ResumedP99),
			secs(ks.RecoveredP50), secs(ks.RecoveredP99), ks.NotRecovered, ks.Lost, ks.DoublePrimary, ks.DoubleV)
		total.Count += ks.Count
		total.NotRecovered += ks.NotRecovered
	}
	fmt.Fprintf(tw, "all\t%d\t\t\t\t\t%d\t%d\t%d\t%d\t\n", total.Count, total.NotRecovered, len(r.Lost), len(r.DoublePrimaries), len(r.DoubleVIPs))
	tw.Flush()
	fmt.Fprintln(w)
	ok := func(b bool) string {
		if b {
			return "ok"
		}
		return "FAILED"
	}
	fmt.Fprintf(w, "writes: %d acknowledged inserts through VIP:%d, %d failed attempts (outcome unknown, not counted); %d rows on the final primary\n",
		r.Acks, netcluster.RouterPort, r.WriteErrors, r.Rows)
	fmt.Fprintf(w, "check: every acknowledged insert on the final primary %s: %s (%d lost)\n", dash(r.FinalPrimary), ok(len(r.Lost) == 0 && r.Rows > 0), len(r.Lost))
	fmt.Fprintf(w, "check: every standby holds exactly the primary's rows once caught up: %s\n", ok(len(r.Divergent) == 0 && r.Rows > 0))
	fmt.Fprintf(w, "check: intervals with two writable primaries: %d: %s\n", len(r.DoublePrimaries), ok(len(r.DoublePrimaries) == 0))
	fmt.Fprintf(w, "check: intervals with two VIP holders: %d: %s\n", len(r.DoubleVIPs), ok(len(r.DoubleVIPs) == 0))
	fmt.Fprintf(w, "check: ends with one primary and two streaming standbys: %s (%s)\n", ok(r.FinalHealthy), r.Final)
	fmt.Fprintf(w, "probes: %s\n", r.ProbeSummary)
	fmt.Fprintf(w, `
definitions:
  injection       the moment the fault is fully in place: the bridge port of a partitioned
                  host is down, every process of a lost host is dead (kill -9)
  writes resumed  from the injection to the acknowledgement of the first insert sent after the
                  injection (inserts already in flight do not count); near 0 when the fault did
                  not interrupt writes
  recovered       from the injection to when the cluster was whole again, after the fault was
                  healed: /cluster (majority) shows 1 running primary + 2 streaming standbys,
                  only that primary's PostgreSQL accepts writes (asked inside every host's
                  namespace), only the Raft leader holds the VIP, and an insert sent after the
                  heal was acknowledged through VIP:9999; includes the hold time
  acked lost      acknowledged inserts missing on the final primary, charged to the first fault
                  injected after the acknowledgement
  double-*        intervals in which two hosts' samples (every 100ms, from inside each host's
                  namespace) overlap as writable primary / VIP holder, charged to the fault
                  during whose window (injection to next injection) they began
  percentiles     nearest rank over the faults that recovered
`)
	if r.Failed() {
		fmt.Fprintf(w, "\nFAILED:\n")
		for _, p := range r.Problems {
			fmt.Fprintf(w, "  - %s\n", p)
		}
	} else {
		fmt.Fprintf(w, "\nPASSED\n")
	}
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

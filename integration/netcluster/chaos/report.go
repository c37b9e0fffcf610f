package chaos

import (
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pgha/pgha/integration/netcluster"
	"github.com/pgha/pgha/internal/itest"
)

// Report is what a campaign did and what the checker found.
type Report struct {
	Seed           int64
	Short          bool
	Started, Ended time.Time
	Faults         []Fault

	Acks        int // plainly acknowledged inserts through the VIP
	DirectAcks  int // plainly acknowledged inserts sent to a host directly
	CancelAcks  int // cancel-acknowledged inserts (Ack.CancelAcked), either way
	WriteErrors int // failed attempts through the VIP (outcome unknown, not counted)
	Reads       int // reads answered by the router's read-only port
	Rows        int // rows on the final primary
	// Lost are plainly acknowledged inserts missing on the final primary;
	// LostCancelAcked the cancel-acknowledged ones (counted, not failures).
	Lost, LostCancelAcked []itest.Ack
	// Divergent describes standbys that never came to hold exactly the
	// primary's rows.
	Divergent []string
	// DoubleAcks are intervals in which two servers acknowledged commits;
	// DoubleCancelAcks those that only cancel-acknowledged commits make.
	DoubleAcks, DoubleCancelAcks []DoubleAck
	DoublePrimaries              []netcluster.Interval // two writable PostgreSQL
	DoubleVIPs                   []netcluster.Interval
	DivergedServing              []netcluster.DivergedServe
	FinalPrimary                 string
	FinalHealthy                 bool
	Final                        string // the final view, described
	ProbeSummary                 string
	DivergenceSummary            string
	FenceSummary                 string
	DirectSummary                string
	// Problems lists every failed check; empty means the campaign passed.
	Problems []string
}

func (r *Report) problem(format string, args ...any) {
	r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
}

// Failed reports whether any check failed.
func (r *Report) Failed() bool { return len(r.Problems) > 0 }

// blame is the fault a lost write is charged to: the fault in progress
// when it was acknowledged (from its injection until the cluster had
// recovered: a deposed primary acknowledges during a fault), else the first
// fault injected after the acknowledgement (nil if none).
func (r *Report) blame(acked time.Time) *Fault {
	for i := range r.Faults {
		f := &r.Faults[i]
		end := f.Injected.Add(f.RecoveredIn)
		if !f.Recovered && i+1 < len(r.Faults) {
			end = r.Faults[i+1].Injected
		}
		if !f.Injected.After(acked) && !acked.After(end) {
			return f
		}
	}
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

// at names the fault during which t fell, for a problem's text.
func (r *Report) at(t time.Time) string {
	if f := r.during(t); f != nil {
		return fmt.Sprintf(" [during fault %d, %s on %s]", f.N, f.Kind, strings.Join(f.Targets, ","))
	}
	return " [before the first fault]"
}

// before names the fault a lost write is charged to, for a problem's text.
func (r *Report) before(t time.Time) string {
	if f := r.blame(t); f != nil {
		return fmt.Sprintf(" [lost in fault %d, %s on %s]", f.N, f.Kind, strings.Join(f.Targets, ","))
	}
	return " [after the last fault]"
}

// KindStats are the figures of one kind of fault.
type KindStats struct {
	Kind                       Kind
	Count, NotRecovered        int
	ResumedP50, ResumedP99     time.Duration
	RecoveredP50, RecoveredP99 time.Duration
	Lost, LostCancelAcked      int
	DoubleAck, DoubleCancelAck int
	DoubleWritable, DoubleVIP  int
	DivergedServing            int
}

// Failed reports whether a check failed for this kind.
func (ks KindStats) Failed() bool {
	return ks.NotRecovered+ks.Lost+ks.DoubleAck+ks.DoubleWritable+ks.DoubleVIP+ks.DivergedServing > 0
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
	charge := func(f *Fault, add func(*KindStats)) {
		if f != nil {
			add(by[f.Kind])
		}
	}
	for _, a := range r.Lost {
		charge(r.blame(a.At), func(ks *KindStats) { ks.Lost++ })
	}
	for _, a := range r.LostCancelAcked {
		charge(r.blame(a.At), func(ks *KindStats) { ks.LostCancelAcked++ })
	}
	for _, d := range r.DoubleAcks {
		charge(r.during(d.Start), func(ks *KindStats) { ks.DoubleAck++ })
	}
	for _, d := range r.DoubleCancelAcks {
		charge(r.during(d.Start), func(ks *KindStats) { ks.DoubleCancelAck++ })
	}
	for _, i := range r.DoublePrimaries {
		charge(r.during(i.Start), func(ks *KindStats) { ks.DoubleWritable++ })
	}
	for _, i := range r.DoubleVIPs {
		charge(r.during(i.Start), func(ks *KindStats) { ks.DoubleVIP++ })
	}
	for _, d := range r.DivergedServing {
		charge(r.during(d.Start), func(ks *KindStats) { ks.DivergedServing++ })
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

// Print writes the faults, the per-kind table, the checks, the definitions
// of the figures and every failure with its evidence.
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
	r.PrintKinds(w)
	fmt.Fprintln(w)
	ok := func(b bool) string {
		if b {
			return "ok"
		}
		return "FAILED"
	}
	fmt.Fprintf(w, "writes: %d plainly acknowledged inserts through VIP:%d, %d sent directly to a host, %d cancel-acknowledged; %d failed attempts through the VIP (outcome unknown, not counted); %d rows on the final primary\n",
		r.Acks, netcluster.RouterPort, r.DirectAcks, r.CancelAcks, r.WriteErrors, r.Rows)
	fmt.Fprintf(w, "direct sessions: %s\n", r.DirectSummary)
	fmt.Fprintf(w, "check: every acknowledged insert on the final primary %s: %s (%d lost; %d cancel-acknowledged lost, counted apart)\n",
		dash(r.FinalPrimary), ok(len(r.Lost) == 0 && r.Rows > 0), len(r.Lost), len(r.LostCancelAcked))
	fmt.Fprintf(w, "check: every standby holds exactly the primary's rows once caught up: %s\n", ok(len(r.Divergent) == 0 && r.Rows > 0))
	fmt.Fprintf(w, "check: intervals in which two servers acknowledged commits: %d: %s (%d more made by cancel-acknowledged commits, counted apart)\n",
		len(r.DoubleAcks), ok(len(r.DoubleAcks) == 0), len(r.DoubleCancelAcks))
	fmt.Fprintf(w, "check: intervals with two writable primaries: %d: %s\n", len(r.DoublePrimaries), ok(len(r.DoublePrimaries) == 0))
	fmt.Fprintf(w, "check: intervals with two VIP holders: %d: %s\n", len(r.DoubleVIPs), ok(len(r.DoubleVIPs) == 0))
	fmt.Fprintf(w, "check: /replica 200s and reads (of %d through the read-only port) served by a standby off the primary's history: %d: %s\n",
		r.Reads, len(r.DivergedServing), ok(len(r.DivergedServing) == 0))
	fmt.Fprintf(w, "check: ends with one primary and two streaming standbys: %s (%s)\n", ok(r.FinalHealthy), r.Final)
	fmt.Fprintf(w, "probes: %s\n", r.ProbeSummary)
	fmt.Fprintf(w, "WAL positions: %s\n", r.DivergenceSummary)
	fmt.Fprintf(w, "fences: %s\n", r.FenceSummary)
	fmt.Fprint(w, definitions)
	var details []string
	for _, f := range r.Faults {
		if len(f.Details) > 0 || f.Err != "" {
			d := fmt.Sprintf("  fault %d (%s on %s): %s", f.N, f.Kind, strings.Join(f.Targets, ","), strings.Join(f.Details, "; "))
			if f.Err != "" {
				d += "; NOT RECOVERED: " + f.Err
			}
			details = append(details, d)
		}
	}
	if len(details) > 0 {
		fmt.Fprintf(w, "\nwhat the injections saw:\n%s\n", strings.Join(details, "\n"))
	}
	if len(r.DoubleCancelAcks) > 0 || len(r.LostCancelAcked) > 0 {
		fmt.Fprintf(w, "\ncancel-acknowledged (an accepted, bounded risk; not failures):\n")
		for _, d := range r.DoubleCancelAcks {
			fmt.Fprintf(w, "  - two servers acknowledged at once, counting cancel-acknowledged commits: %s%s\n", d, r.at(d.Start))
		}
		for i, a := range r.LostCancelAcked {
			if i == 20 {
				fmt.Fprintf(w, "  - ... %d in all\n", len(r.LostCancelAcked))
				break
			}
			fmt.Fprintf(w, "  - lost: id %d (via %s, by %s on timeline %d at %s)%s\n", a.ID, a.Via, a.Host, a.Timeline, a.At.Format("15:04:05.000"), r.before(a.At))
		}
	}
	if r.Failed() {
		fmt.Fprintf(w, "\nFAILED:\n")
		for _, p := range r.Problems {
			fmt.Fprintf(w, "  - %s\n", p)
		}
	} else {
		fmt.Fprintf(w, "\nPASSED\n")
	}
}

// PrintKinds writes the per-kind table.
func (r *Report) PrintKinds(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "fault kind\tcount\tresumed p50\tresumed p99\trecovered p50\trecovered p99\tnot recovered\tlost\tlost (cancel-acked)\tdouble-ack\tdouble-ack (cancel-acked)\tdouble-writable\tdouble-VIP\tdiverged serving\t")
	var t KindStats
	for _, ks := range r.Stats() {
		flag := ""
		if ks.Failed() {
			flag = " !"
		}
		fmt.Fprintf(tw, "%s%s\t%d\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", ks.Kind, flag, ks.Count, secs(ks.ResumedP50), secs(ks.ResumedP99),
			secs(ks.RecoveredP50), secs(ks.RecoveredP99), ks.NotRecovered, ks.Lost, ks.LostCancelAcked, ks.DoubleAck, ks.DoubleCancelAck, ks.DoubleWritable, ks.DoubleVIP, ks.DivergedServing)
		t.Count += ks.Count
		t.NotRecovered += ks.NotRecovered
	}
	fmt.Fprintf(tw, "all\t%d\t\t\t\t\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", t.Count, t.NotRecovered, len(r.Lost), len(r.LostCancelAcked),
		len(r.DoubleAcks), len(r.DoubleCancelAcks), len(r.DoublePrimaries), len(r.DoubleVIPs), len(r.DivergedServing))
	tw.Flush()
}

const definitions = `
definitions:
  injection       the moment the fault is fully in place: the bridge port of a partitioned
                  host is down, every process of a lost host is dead (kill -9), the process
                  is stopped; for a double fault the first cut, for a forced failover the
                  freeze of the primary's agent, for a shortened fence the cut after the edit
  writes resumed  from the injection to the acknowledgement of the first insert through
                  VIP:9999 sent after the injection (inserts already in flight do not count);
                  near 0 when the fault did not interrupt writes
  recovered       from the injection to when the cluster was whole again, after the fault was
                  healed: /cluster (majority) shows 1 running primary + 2 streaming standbys,
                  only that primary's PostgreSQL accepts writes (asked inside every host's
                  namespace), only the Raft leader holds the VIP, and an insert sent after the
                  heal was acknowledged through VIP:9999; includes the hold time
  cancel-acked    a commit the writer cancelled (after its 2s statement timeout) while it
                  waited for the synchronous standby, which PostgreSQL then reported committed
                  with the WARNING "canceling wait for synchronous replication"; judged apart
                  from plain acknowledgements, never as one
  lost            plainly acknowledged inserts (through the VIP or direct) missing on the
                  final primary, charged to the fault in progress when it was acknowledged
                  (injection to recovery), else to the first fault injected after it
  double-ack      intervals in which two servers provably acknowledged commits (each server's
                  acknowledgements on one timeline span from the earliest arrival to the latest
                  execution; two such spans of different servers overlap, or one
                  acknowledgement's execution-to-arrival window lies inside another's span)
  double-*        double-writable / double-VIP: intervals in which two hosts' samples (every
                  100ms, from inside each host's namespace) overlap as writable primary / VIP
                  holder; these and double-ack are charged to the fault during whose window
                  (injection to next injection) they began
  diverged serving /replica answered 200, or a read through VIP:9998 was served, by a standby
                  whose replayed WAL was off the writable primary's timeline history in the
                  samples (every 250ms) before and after it
  percentiles     nearest rank over the faults that recovered; "!" marks a kind with a failure
`

func secs(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// fenceMargin is the agent's: the leader promotes no earlier than this
// after the old primary's lease ended (agent/decide.go).
const fenceMargin = 250 * time.Millisecond

// FenceSummary describes how late after their leases' ends the agents
// froze their primaries (netcluster.FenceDelays), and how many froze later
// than the leader's margin although their fence loop had been running.
func FenceSummary(delays map[string][]netcluster.FenceDelay) string {
	var all []time.Duration
	worst, worstRunning := "", ""
	var maxRunning time.Duration
	late, lateRunning := 0, 0
	for _, h := range slices.Sorted(maps.Keys(delays)) {
		for _, d := range delays[h] {
			if len(all) == 0 || d.AfterLeaseEnd > slices.Max(all) {
				worst = h
			}
			all = append(all, d.AfterLeaseEnd)
			if d.AfterLeaseEnd <= fenceMargin {
				continue
			}
			late++
			if d.LoopGap <= fenceMargin/2 {
				lateRunning++
				if d.AfterLeaseEnd > maxRunning {
					maxRunning, worstRunning = d.AfterLeaseEnd, h
				}
			}
		}
	}
	if len(all) == 0 {
		return "no primary was frozen by its fence"
	}
	slices.Sort(all)
	s := fmt.Sprintf("%d freezes by a primary's fence, after its lease's end: p50 %s, max %s (%s); %d later than the leader's %s margin, of which %d while the agent was running",
		len(all), all[len(all)/2], all[len(all)-1], worst, late, fenceMargin, lateRunning)
	if lateRunning > 0 {
		s += fmt.Sprintf(" (latest %s, %s)", maxRunning, worstRunning)
	}
	return s + "; the others followed a stop of the agent itself (frozen, killed, starved), whose primary the leader kept"
}

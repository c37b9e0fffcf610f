package chaos

import (
	"fmt"
	"sort"
	"time"

	"github.com/pgha/pgha/internal/itest"
)

// Two servers acknowledging commits at once (DESIGN "One writer"), proven
// from the acknowledgements alone:
//
//  1. An era is one server's acknowledgements on one timeline (a promotion
//     always starts a new timeline, so an era is one spell as primary).
//  2. Each acknowledgement was sent by the server at some moment between
//     Ack.Executed (the server's clock while it ran the INSERT, before the
//     commit) and Ack.At (when the writer received it): its window.
//  3. So an era was acknowledging throughout its core: from the earliest
//     At of its acknowledgements to the latest Executed (empty when the era
//     is too short to prove anything).
//  4. Two eras of different servers acknowledged at once if their cores
//     overlap, or if the window of an acknowledgement of one lies inside
//     the core of the other. The interval is the overlap (or that window).
//
// A commit that hangs unacknowledged on a deposed primary proves nothing and
// counts nothing. Cancel-acknowledged commits (Ack.CancelAcked) are judged
// apart: DoubleAcks with cancelAcked false ignores them.

// DoubleAck is an interval in which two servers acknowledged commits.
type DoubleAck struct {
	A, B       string // "h1 (timeline 3)"
	Start, End time.Time
	// Example are ids acknowledged by each in the interval's eras.
	ExampleA, ExampleB int64
}

func (d DoubleAck) String() string {
	return fmt.Sprintf("%s and %s from %s for %s (e.g. ids %d and %d)", d.A, d.B,
		d.Start.Format("15:04:05.000"), d.End.Sub(d.Start).Round(time.Millisecond), d.ExampleA, d.ExampleB)
}

type era struct {
	host     string
	timeline uint32
	acks     []itest.Ack
	// core: see the comment above; empty when start is after end.
	start, end time.Time
}

func (e *era) name() string { return fmt.Sprintf("%s (timeline %d)", e.host, e.timeline) }

// DoubleAcks finds the intervals in which two servers acknowledged commits;
// with cancelAcked false, cancel-acknowledged commits are left out.
func DoubleAcks(acks []itest.Ack, cancelAcked bool) []DoubleAck {
	byEra := map[[2]string]*era{}
	var eras []*era
	for _, a := range acks {
		if a.CancelAcked && !cancelAcked {
			continue
		}
		k := [2]string{a.Host, fmt.Sprint(a.Timeline)}
		e := byEra[k]
		if e == nil {
			e = &era{host: a.Host, timeline: a.Timeline, start: a.At, end: a.Executed}
			byEra[k] = e
			eras = append(eras, e)
		}
		e.acks = append(e.acks, a)
		if a.At.Before(e.start) {
			e.start = a.At
		}
		if a.Executed.After(e.end) {
			e.end = a.Executed
		}
	}
	var out []DoubleAck
	for i, a := range eras {
		for _, b := range eras[i+1:] {
			if a.host == b.host {
				continue // one server, two timelines: one after the other
			}
			if d, ok := overlap(a, b); ok {
				out = append(out, d)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	return out
}

// overlap is step 4 for eras a and b.
func overlap(a, b *era) (DoubleAck, bool) {
	d := DoubleAck{A: a.name(), B: b.name(), ExampleA: a.acks[0].ID, ExampleB: b.acks[0].ID}
	if !a.start.After(a.end) && !b.start.After(b.end) {
		start, end := later(a.start, b.start), earlier(a.end, b.end)
		if !start.After(end) {
			d.Start, d.End = start, end
			return d, true
		}
	}
	for _, p := range [][2]*era{{a, b}, {b, a}} {
		x, y := p[0], p[1]
		if y.start.After(y.end) {
			continue
		}
		for _, ack := range x.acks {
			if !ack.Executed.Before(y.start) && !ack.At.After(y.end) {
				d.Start, d.End = ack.Executed, ack.At
				if x == a {
					d.ExampleA = ack.ID
				} else {
					d.ExampleB = ack.ID
				}
				return d, true
			}
		}
	}
	return d, false
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

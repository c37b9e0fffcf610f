package agent

import (
	"sync"
	"time"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
)

// The status page charts every standby's replication lag over the last
// hour. Nothing stores that anywhere else (Prometheus may not be there), so
// each agent keeps it in memory: the observe loop samples the lag of every
// standby from its latest observations each health_interval, and this file
// keeps those samples, bounded.
//
// The default health_interval is 250 ms, which would be 14,400 samples an
// hour per member; the page draws one point per second at most. So samples
// that fall in the same second are folded into one point, the larger lag
// winning (a peak is never hidden by the folding), and a member holds at
// most lagPoints points whatever the interval: about 70 kB a member.

const (
	lagWindow = time.Hour   // how far back the page's charts reach
	lagStep   = time.Second // one point per member per step
	lagPoints = int(lagWindow / lagStep)
)

// LagPoint is one member's replication lag at one step, as GET /status
// sends it: the step's start in Unix milliseconds, bytes of WAL the standby
// has not replayed behind the primary's position, and seconds since the last
// transaction it replayed while WAL waits to be replayed (0 when it has
// replayed all it received, as pgha_member_lag_seconds).
type LagPoint struct {
	At      int64   `json:"t"`
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
}

// lagRing is one member's points, oldest first, in a fixed-size ring.
type lagRing struct {
	buf  []LagPoint // grows to lagPoints, then wraps
	next int        // once full: the oldest point, overwritten next
}

func (r *lagRing) len() int { return len(r.buf) }

// at is the i-th point, oldest first.
func (r *lagRing) at(i int) *LagPoint {
	if len(r.buf) < lagPoints {
		return &r.buf[i]
	}
	return &r.buf[(r.next+i)%lagPoints]
}

// add records p, or folds it into the last point when it is of the same step.
func (r *lagRing) add(p LagPoint) {
	if n := r.len(); n > 0 {
		if last := r.at(n - 1); last.At == p.At {
			last.Bytes = max(last.Bytes, p.Bytes)
			last.Seconds = max(last.Seconds, p.Seconds)
			return
		} else if p.At < last.At {
			return // the clock stepped back: keep the ring in time order
		}
	}
	if len(r.buf) < lagPoints {
		r.buf = append(r.buf, p)
		return
	}
	r.buf[r.next] = p
	r.next = (r.next + 1) % lagPoints
}

// lagHistory is every standby's lagRing. The observe loop adds (sample);
// the REST handlers read (since). Its zero value is ready to use.
type lagHistory struct {
	mu      sync.Mutex
	members map[string]*lagRing
}

// sample records the lag of every standby that can be judged now: the
// primary and the standby both observed running. A standby whose lag is
// unknown gets no point (a gap in its chart, not a zero).
func (h *lagHistory) sample(now time.Time, st consensus.State, obs map[string]memberView) {
	p, ok := obs[st.Primary]
	if !ok || !p.reachable || !p.obs.Postgres.Running || p.obs.Postgres.InRecovery {
		return
	}
	step := now.Truncate(lagStep).UnixMilli()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.members == nil {
		h.members = map[string]*lagRing{}
	}
	for name := range h.members {
		if _, ok := st.Members[name]; !ok {
			delete(h.members, name) // removed from the cluster
		}
	}
	for name := range st.Members {
		bytes, seconds, ok := standbyLag(p.obs.Postgres.CurrentLSN, obs[name])
		if name == st.Primary || !ok {
			continue
		}
		r := h.members[name]
		if r == nil {
			r = &lagRing{}
			h.members[name] = r
		}
		r.add(LagPoint{At: step, Bytes: bytes, Seconds: seconds})
	}
}

// since returns every member's points of the last lagWindow before now
// whose step starts at or after from (Unix milliseconds; 0 for all). A
// page that polls asks from its last point's step on: that point may have
// grown since (folding), so it is sent again.
func (h *lagHistory) since(now time.Time, from int64) map[string][]LagPoint {
	from = max(from, now.Add(-lagWindow).UnixMilli())
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string][]LagPoint, len(h.members))
	for name, r := range h.members {
		pts := []LagPoint{}
		for i := 0; i < r.len(); i++ {
			if p := r.at(i); p.At >= from {
				pts = append(pts, *p)
			}
		}
		out[name] = pts
	}
	return out
}

// standbyLag is how far the standby m is behind a primary whose current WAL
// position is primaryLSN: bytes not yet replayed, and seconds since the last
// transaction it replayed while received WAL waits (0 when it has replayed
// everything it received: an idle primary is not lag). ok is false when m
// is not a running standby this agent has heard from.
func standbyLag(primaryLSN postgres.LSN, m memberView) (bytes int64, seconds float64, ok bool) {
	pg := m.obs.Postgres
	if !m.reachable || !pg.Running || !pg.InRecovery || primaryLSN == 0 {
		return 0, 0, false
	}
	bytes = max(0, int64(primaryLSN)-int64(pg.ReplayedLSN))
	if pg.ReceivedLSN > pg.ReplayedLSN && !pg.ReplayTime.IsZero() {
		seconds = max(0, m.obs.At.Sub(pg.ReplayTime).Seconds())
	}
	return bytes, seconds, true
}

package router

import (
	"math/rand/v2"
	"net"
	"strconv"
	"time"
)

// Backend is one PostgreSQL server the router may send queries to.
type Backend struct {
	Name      string
	Host      string
	Port      int
	Primary   bool
	Healthy   bool
	LagBytes  int64  // replay lag behind the primary; meaningful for standbys
	ReplayLSN uint64 // last replayed WAL position of a standby (pg_last_wal_replay_lsn); 0 = unknown
	Weight    int    // relative share of reads among standbys; 0 counts as 1
	// ReplicationState and ReplicationSyncState are shown by SHOW POOL_NODES
	// ("streaming", "sync"/"async"/"quorum"); empty when unknown.
	ReplicationState     string
	ReplicationSyncState string
}

// Addr is host:port.
func (b Backend) Addr() string { return net.JoinHostPort(b.Host, strconv.Itoa(b.Port)) }

// Topology tells the router where the primary and the standbys are.
//
// Backends returns the current set; the router calls it at start and after
// every receive on Changes, from one goroutine. Changes returns a channel
// that receives (or is closed-and-reopened, any receive works) after every
// change of the set; a buffered channel of size 1 with non-blocking sends
// is the expected implementation. The router never closes it.
//
// Role changes, removals and Healthy=false close the router's server
// connections to that backend, also the ones in use: the client in the
// middle of a transaction gets an ErrorResponse and is disconnected (the
// clean error instead of a hang when a primary dies). For a planned
// switchover call Router.Hold first, so nothing is in flight.
type Topology interface {
	Backends() []Backend
	Changes() <-chan struct{}
}

// StaticTopology is a Topology whose set the caller replaces with Set. It
// serves tests and simple deployments; it is safe for concurrent use.
type StaticTopology struct {
	mu       chan struct{} // a 1-slot lock usable from any goroutine
	backends []Backend
	changes  chan struct{}
}

// NewStaticTopology returns a StaticTopology holding backends.
func NewStaticTopology(backends ...Backend) *StaticTopology {
	t := &StaticTopology{mu: make(chan struct{}, 1), changes: make(chan struct{}, 1)}
	t.backends = append([]Backend(nil), backends...)
	return t
}

// Backends implements Topology.
func (t *StaticTopology) Backends() []Backend {
	t.mu <- struct{}{}
	defer func() { <-t.mu }()
	return append([]Backend(nil), t.backends...)
}

// Changes implements Topology.
func (t *StaticTopology) Changes() <-chan struct{} { return t.changes }

// Set replaces the set and signals a change.
func (t *StaticTopology) Set(backends ...Backend) {
	t.mu <- struct{}{}
	t.backends = append([]Backend(nil), backends...)
	<-t.mu
	select {
	case t.changes <- struct{}{}:
	default:
	}
}

// Update changes the backend called name with f and signals a change.
func (t *StaticTopology) Update(name string, f func(*Backend)) {
	t.mu <- struct{}{}
	for i := range t.backends {
		if t.backends[i].Name == name {
			f(&t.backends[i])
		}
	}
	<-t.mu
	select {
	case t.changes <- struct{}{}:
	default:
	}
}

// view is the router's immutable snapshot of the topology.
type view struct {
	backends []Backend
	primary  int // index into backends, -1 when there is none
	changed  map[string]time.Time
}

func newView(bs []Backend, prev *view, now time.Time) *view {
	v := &view{backends: bs, primary: -1, changed: map[string]time.Time{}}
	for i, b := range bs {
		if b.Primary && b.Healthy && v.primary < 0 {
			v.primary = i
		}
		v.changed[b.Name] = now
		if prev != nil {
			for _, p := range prev.backends {
				if p.Name == b.Name && p.Primary == b.Primary && p.Healthy == b.Healthy && p.Addr() == b.Addr() {
					v.changed[b.Name] = prev.changed[b.Name]
				}
			}
		}
	}
	return v
}

func (v *view) primaryBackend() (Backend, bool) {
	if v.primary < 0 {
		return Backend{}, false
	}
	return v.backends[v.primary], true
}

// pickStandby chooses a healthy standby by weight among those within
// maxLag (0: no limit) that replayed at least minLSN. ok is false when none
// qualifies.
func (v *view) pickStandby(maxLag int64, minLSN uint64) (Backend, bool) {
	total := 0
	for _, b := range v.backends {
		if v.eligible(b, maxLag, minLSN) {
			total += weight(b)
		}
	}
	if total == 0 {
		return Backend{}, false
	}
	n := rand.IntN(total)
	for _, b := range v.backends {
		if !v.eligible(b, maxLag, minLSN) {
			continue
		}
		if n -= weight(b); n < 0 {
			return b, true
		}
	}
	return Backend{}, false
}

func (v *view) eligible(b Backend, maxLag int64, minLSN uint64) bool {
	return !b.Primary && b.Healthy && (maxLag <= 0 || b.LagBytes <= maxLag) && (minLSN == 0 || b.ReplayLSN >= minLSN)
}

func weight(b Backend) int {
	if b.Weight <= 0 {
		return 1
	}
	return b.Weight
}

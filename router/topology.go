package router

import (
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Backend is one PostgreSQL server the router may send queries to.
//
// The JSON names are those of the agents' GET /router/topology.
type Backend struct {
	Name      string `json:"name"`
	Host      string `json:"host"`
	Port      int    `json:"port"`
	Primary   bool   `json:"primary"`
	Healthy   bool   `json:"healthy"`
	LagBytes  int64  `json:"lag_bytes"`  // replay lag behind the primary; meaningful for standbys
	ReplayLSN uint64 `json:"replay_lsn"` // last replayed WAL position of a standby (pg_last_wal_replay_lsn); 0 = unknown
	Weight    int    `json:"weight"`     // relative share of reads among standbys; 0 counts as 1
	// NoLoadBalance: never chosen for reads (a member tagged noloadbalance).
	NoLoadBalance bool `json:"no_load_balance"`
	// Draining: a standby about to restart. No new read goes to it, its
	// pools hand out no connection (reads already routed there go to the
	// primary), and what runs on it finishes (Router.Drain); unlike
	// Healthy=false, which closes its connections in use.
	Draining bool `json:"draining"`
	// ReplicationState and ReplicationSyncState are shown by SHOW POOL_NODES
	// ("streaming", "sync"/"async"/"quorum"); empty when unknown.
	ReplicationState     string `json:"replication_state"`
	ReplicationSyncState string `json:"replication_sync_state"`
	// ValidUntil, when set, is when what the topology source says of this
	// backend (its role and health) expires: past it the router treats the
	// backend as unhealthy — no writes to a primary, no reads from a
	// standby — until the source renews it. The router-only process
	// (routeronly) sets it to the moment its last leader-verified answer
	// stops being current (DESIGN "One writer": a router stops sending
	// writes when it cannot confirm the primary within the fence timeout).
	// The check is made where a backend is chosen, against the clock, so a
	// process frozen past it (SIGSTOP) refuses writes the moment it wakes,
	// before its source's goroutine runs. Zero: no expiry (the leader's
	// own router, which closes when it loses leadership).
	// It is the receiving process's own clock: never sent.
	ValidUntil time.Time `json:"-"`
}

// currentAt: what the source said of b still holds at now (ValidUntil).
func (b Backend) currentAt(now time.Time) bool {
	return b.ValidUntil.IsZero() || now.Before(b.ValidUntil)
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

// BackendSet is the Topology its owner keeps current: the agent replaces
// the set with Set whenever the committed state or an observation changes
// it. All methods are safe for concurrent use; Update calls f with the set
// locked, so f must not call the BackendSet's methods.
type BackendSet struct {
	mu       sync.Mutex
	backends []Backend
	changes  chan struct{}
}

// NewBackendSet returns a BackendSet holding backends.
func NewBackendSet(backends ...Backend) *BackendSet {
	return &BackendSet{backends: slices.Clone(backends), changes: make(chan struct{}, 1)}
}

// Backends implements Topology: a copy of the set.
func (s *BackendSet) Backends() []Backend {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.backends)
}

// Changes implements Topology.
func (s *BackendSet) Changes() <-chan struct{} { return s.changes }

// Set replaces the set and signals a change.
func (s *BackendSet) Set(backends ...Backend) {
	s.mu.Lock()
	s.backends = slices.Clone(backends)
	s.mu.Unlock()
	s.changed()
}

// Update changes the backend called name with f and signals a change.
func (s *BackendSet) Update(name string, f func(*Backend)) {
	s.mu.Lock()
	for i := range s.backends {
		if s.backends[i].Name == name {
			f(&s.backends[i])
		}
	}
	s.mu.Unlock()
	s.changed()
}

// changed signals a change without blocking: one pending signal covers
// any number of changes, since the router reads the whole set.
func (s *BackendSet) changed() {
	select {
	case s.changes <- struct{}{}:
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

// draining: the standby at addr is marked Draining (a primary never is:
// its pools refusing every connection would send writes nowhere).
func (v *view) draining(addr string) bool {
	for _, b := range v.backends {
		if b.Draining && !b.Primary && b.Addr() == addr {
			return true
		}
	}
	return false
}

func (v *view) primaryBackend() (Backend, bool) {
	if v.primary < 0 {
		return Backend{}, false
	}
	b := v.backends[v.primary]
	if !b.currentAt(time.Now()) {
		return Backend{}, false
	}
	return b, true
}

// pickStandby chooses a healthy standby by weight among those within
// maxLag (0: no limit) that replayed at least minLSN. ok is false when none
// qualifies.
func (v *view) pickStandby(maxLag int64, minLSN uint64) (Backend, bool) {
	total := 0
	now := time.Now()
	for _, b := range v.backends {
		if v.eligible(b, maxLag, minLSN, now) {
			total += weight(b)
		}
	}
	if total == 0 {
		return Backend{}, false
	}
	n := rand.IntN(total)
	for _, b := range v.backends {
		if !v.eligible(b, maxLag, minLSN, now) {
			continue
		}
		if n -= weight(b); n < 0 {
			return b, true
		}
	}
	return Backend{}, false
}

// loadMeter reports a backend's load: transactions in flight on it.
type loadMeter interface{ inFlight(Backend) int64 }

// pickRead chooses where a read goes by measured load: the eligible
// standby (as pickStandby's) with the fewest transactions in flight per
// unit of weight, as load reports them, ties broken in favour of prefer
// (the session's last standby: its server process is warm, and one client
// reading alone is served by one backend, not two in turn), else at
// random, which spreads sessions over the standbys; or the
// primary (toPrimary) when primaryLoad is not negative and the primary,
// counted with one more in flight than it has, is still less loaded than
// that standby. The handicap keeps an idle cluster's reads on the
// standbys and gives the primary reads only when every standby is busier
// than it: its spare capacity serves reads, and a primary busy with writes
// gets none. A slower or busier standby finishes fewer transactions, so it
// holds more in flight and gets fewer new ones: the share follows each
// server's capacity, which static weights cannot. ok is false when no
// standby qualifies and the primary is not offered.
func (v *view) pickRead(maxLag int64, minLSN uint64, load loadMeter, primaryLoad int64, prefer string) (b Backend, toPrimary, ok bool) {
	best, bestW := int64(-1), int64(1)
	ties := 0
	now := time.Now()
	for _, s := range v.backends {
		if !v.eligible(s, maxLag, minLSN, now) {
			continue
		}
		l, w := load.inFlight(s), int64(weight(s))
		switch {
		case best < 0 || l*bestW < best*w:
			b, best, bestW, ties = s, l, w, 1
		case l*bestW == best*w && b.Name != prefer:
			ties++
			if s.Name == prefer || rand.IntN(ties) == 0 {
				b = s
			}
		}
	}
	if p, pok := v.primaryBackend(); primaryLoad >= 0 && pok {
		if w := int64(weight(p)); best < 0 || (primaryLoad+1)*bestW < best*w {
			return p, true, true
		}
	}
	return b, false, best >= 0
}

func (v *view) eligible(b Backend, maxLag int64, minLSN uint64, now time.Time) bool {
	return !b.Primary && b.Healthy && b.currentAt(now) && !b.NoLoadBalance && !b.Draining && (maxLag <= 0 || b.LagBytes <= maxLag) && (minLSN == 0 || b.ReplayLSN >= minLSN)
}

func weight(b Backend) int {
	if b.Weight <= 0 {
		return 1
	}
	return b.Weight
}

package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
)

// Observation is what one agent reports about itself: its PostgreSQL as it
// sees it, its Raft role and what it is busy with. Agents serve their own at
// GET /internal/observation; every agent pulls all members' each
// health_interval. Observations live in memory only, never in the Raft log.
type Observation struct {
	Name      string    `json:"name"`
	At        time.Time `json:"at"`         // when the agent took it
	RaftState string    `json:"raft_state"` // leader / follower / candidate / shutdown
	Epoch     uint64    `json:"epoch"`      // the epoch of the committed state this agent has applied
	DataDir   string    `json:"data_dir"`   // missing / empty / valid / invalid
	Activity  string    `json:"activity,omitempty"`
	Problem   string    `json:"problem,omitempty"` // what stops the agent converging, in words
	Fenced    bool      `json:"fenced,omitempty"`
	// StartingUp: this agent has started but has not yet acted on its
	// PostgreSQL. Until it has caught up with the Raft log it cannot ask
	// for a start permit, so a PostgreSQL that is not running says nothing
	// about a crash (a restart of every agent stops every PostgreSQL).
	StartingUp bool `json:"starting_up,omitempty"`
	// StoppedLSN is where the WAL of a cleanly stopped PostgreSQL ends (its
	// shutdown checkpoint); zero when running or not cleanly stopped.
	StoppedLSN postgres.LSN `json:"stopped_lsn,omitempty"`
	LastRejoin string       `json:"last_rejoin,omitempty"` // rewind or clone
	// KeptDataDirs are the data directories re-clones replaced and kept
	// aside as evidence (evidence.go), oldest first.
	KeptDataDirs []string `json:"kept_data_dirs,omitempty"`
	// CallbackProblem is the last callback's failure ("" if it succeeded).
	CallbackProblem string `json:"callback_problem,omitempty"`
	// Backup is this agent's backup run (pgha-agent backup): the one
	// running, or the last; nil when it ran none.
	Backup *BackupStatus `json:"backup,omitempty"`
	// TimelineHistory is, on a running primary, the history of its
	// timeline (Postgres.Timeline): where each ancestor timeline ended.
	// Standbys check against it that their WAL did not go past the fork.
	TimelineHistory []postgres.TimelineSwitch `json:"timeline_history,omitempty"`
	// Diverged: this standby's WAL went past the point where the primary's
	// timeline forked off its own (rewindIfForked), so it holds none of the
	// WAL written since the fork, whatever its LSN says. Never a failover
	// candidate until it is rewound.
	Diverged bool `json:"diverged,omitempty"`
	// LeaderWaiting is, on the Raft leader, why its last pass committed
	// nothing (no safe candidate, paused...), so any member can show it.
	LeaderWaiting string `json:"leader_waiting,omitempty"`
	// Safety is this agent's own copy of the settings safety depends on.
	// Until they are replicated cluster-wide, members that disagree are
	// shown in /cluster, and the leader judges a primary's lease by the
	// longer of its own fence_timeout and the primary's.
	Safety *SafetySettings `json:"safety,omitempty"`
	// VIPHeld: the VIP is on this host's interface now.
	VIPHeld  bool            `json:"vip_held,omitempty"`
	Postgres postgres.Status `json:"postgres"`

	// DataDirWAL is, while the cluster is not initialised, where this
	// member's data directory's WAL ends, on which timeline and system, so
	// the leader adopts the newest existing data (adopt.go);
	// DataDirWALError says why it could not be read.
	DataDirWAL      *postgres.DataDirWAL `json:"data_dir_wal,omitempty"`
	DataDirWALError string               `json:"data_dir_wal_error,omitempty"`
}

// memberView is one member's latest observation as seen by this agent.
type memberView struct {
	obs       Observation
	reachable bool      // its agent answered the last poll
	lastSeen  time.Time // when its agent last answered (local clock)
	asked     time.Time // when the poll that got obs was sent (local clock; zero for pushed news): obs was taken after it
	err       string    // why the last poll failed
}

// observations holds the latest observation of every member. The observer
// goroutine writes it; the REST handlers and the leader's loop read copies.
type observations struct {
	mu      sync.RWMutex
	members map[string]memberView
	// changed gets a signal on every set: the front loop refreshes the
	// router's backends when an observation arrives, not on a tick.
	changed chan struct{}
	// setCh is closed (and replaced) on every set: any number of waiters
	// (the routers' long polls, topologyapi.go) learn of it at once.
	setCh chan struct{}
}

func newObservations() *observations {
	return &observations{members: map[string]memberView{}, changed: make(chan struct{}, 1), setCh: make(chan struct{})}
}

func (o *observations) set(name string, v memberView) {
	o.mu.Lock()
	o.members[name] = v
	close(o.setCh)
	o.setCh = make(chan struct{})
	o.mu.Unlock()
	select {
	case o.changed <- struct{}{}:
	default: // one pending signal is enough
	}
}

// changes receives a signal after observations were set. One receiver:
// signals coalesce, and a second receiver would take some of them.
func (o *observations) changes() <-chan struct{} { return o.changed }

// nextSet is closed by the next set after the call.
func (o *observations) nextSet() <-chan struct{} {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.setCh
}

func (o *observations) snapshot() map[string]memberView {
	o.mu.RLock()
	defer o.mu.RUnlock()
	out := make(map[string]memberView, len(o.members))
	for k, v := range o.members {
		out[k] = v
	}
	return out
}

func (o *observations) forget(keep map[string]consensus.Member) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for name := range o.members {
		if _, ok := keep[name]; !ok {
			delete(o.members, name)
		}
	}
}

// observeLoop takes this agent's own observation and pulls every other
// member's, each health_interval. A poll that hangs (a dead host) never
// delays the others nor this node's view of itself: each member is polled
// by its own goroutine, at most one at a time.
func (a *Agent) observeLoop(ctx context.Context) {
	t := newTicker(a.timing().HealthInterval)
	defer t.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	inFlight := map[string]*atomic.Bool{}
	for {
		t.follow(a.timing().HealthInterval)
		st := a.node.State()
		a.obs.forget(st.Members)
		self := a.selfView(ctx)
		a.obs.set(a.cfg.Name, self)
		a.recordStatus(time.Now(), st)
		a.callbacks.observe(self.obs.Postgres, st)
		for name, m := range st.Members {
			if name == a.cfg.Name {
				continue
			}
			busy, ok := inFlight[name]
			if !ok {
				busy = &atomic.Bool{}
				inFlight[name] = busy
			}
			if !busy.CompareAndSwap(false, true) {
				continue // the last poll of this member has not returned yet
			}
			wg.Add(1)
			go func(name, url string) {
				defer wg.Done()
				defer busy.Store(false)
				a.pollMember(ctx, name, url)
			}(name, m.APIURL)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// selfView is this agent's own observation as a memberView.
func (a *Agent) selfView(ctx context.Context) memberView {
	asked := time.Now()
	return memberView{obs: a.observeSelf(ctx), reachable: true, lastSeen: time.Now(), asked: asked}
}

// observeSelf takes this agent's own observation.
func (a *Agent) observeSelf(ctx context.Context) Observation {
	dds, err := a.inst.DataDirState()
	dir := dds.String()
	if err != nil {
		dir = "unknown"
	}
	activity, problem := a.status()
	o := Observation{
		Name:       a.cfg.Name,
		At:         time.Now(),
		RaftState:  a.node.RaftState(),
		Epoch:      a.node.State().Epoch,
		DataDir:    dir,
		Activity:   activity,
		Problem:    problem,
		Fenced:     a.fenced(),
		StartingUp: !a.acted.Load(),
		Safety:     a.safetySettings(),
		VIPHeld:    a.vipHeld(),
		Postgres:   a.pgStatus(ctx),
	}
	if o.Postgres.Running && !o.Postgres.InRecovery {
		o.TimelineHistory = a.history.get(a, o.Postgres.Timeline)
	}
	if why := a.replay.stalled(o.Postgres, o.At); why != "" {
		o.Postgres.Streaming = false
		if o.Problem == "" {
			o.Problem = why
		}
	}
	if why, _ := a.forked.Load().(string); why != "" {
		// PostgreSQL may show its WAL receiver as streaming while it
		// retries a timeline it can never follow: not a healthy standby.
		o.Postgres.Streaming = false
		o.Diverged = true
		if o.Problem == "" {
			o.Problem = "diverged from the primary's timeline: " + why
		}
	}
	if a.node.IsLeader() {
		o.LeaderWaiting, _ = a.lead.waitingNow.Load().(string)
	}
	if r, ok := a.lastRejoin.Load().(string); ok {
		o.LastRejoin = r
	}
	o.KeptDataDirs = a.keptDataDirs()
	o.Backup = a.backups.get()
	if o.Backup != nil && o.Backup.Running && o.Activity == "" {
		o.Activity = "backup"
	}
	o.CallbackProblem = a.callbacks.lastProblem()
	o.DataDirWAL, o.DataDirWALError = a.adoptionWAL(ctx, o.Postgres, dds)
	if !o.Postgres.Running && dds == postgres.DataDirValid {
		// Read in place: a switchover waits for this, no pg_controldata.
		if at, clean, err := a.inst.ShutDownAtNow(); err == nil && clean {
			o.StoppedLSN = at
		}
	}
	return o
}

// timelineHistory caches the history of this primary's timeline: observeSelf
// publishes it every health interval, and a history file never changes.
type timelineHistory struct {
	mu       sync.Mutex
	timeline uint32
	switches []postgres.TimelineSwitch
	err      string // the last read error, logged once
}

func (h *timelineHistory) get(a *Agent, tli uint32) []postgres.TimelineSwitch {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.timeline != tli {
		s, err := a.inst.TimelineHistory(tli)
		if err != nil {
			if err.Error() != h.err {
				a.log.Warn("cannot publish this primary's timeline history: a standby that went past its fork is not noticed", "err", err)
			}
			h.err = err.Error()
			return nil
		}
		h.timeline, h.switches, h.err = tli, s, ""
	}
	return h.switches
}

func (a *Agent) pollMember(ctx context.Context, name, apiURL string) {
	ctx, cancel := context.WithTimeout(ctx, a.pollTimeout())
	defer cancel()
	asked := time.Now()
	var o Observation
	err := getJSON(ctx, a.http, apiURL+"/internal/observation", &o)
	prev := a.obs.snapshot()[name]
	if err != nil {
		prev.reachable = false
		prev.err = err.Error()
		prev.obs.Name = name
		a.obs.set(name, prev)
		return
	}
	a.obs.set(name, memberView{obs: o, reachable: true, lastSeen: time.Now(), asked: asked})
}

// pollTimeout bounds one poll so a dead member never delays the others' view.
func (a *Agent) pollTimeout() time.Duration {
	d := a.timing().HealthInterval * 2
	if d < time.Second {
		d = time.Second
	}
	return d
}

func getJSON(ctx context.Context, c *http.Client, url string, into any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(http.MaxBytesReader(nil, resp.Body, 4<<20)).Decode(into)
}

// SafetySettings are the per-node settings that decide how members judge
// each other (DESIGN: they must be the cluster's, not the node's).
type SafetySettings struct {
	FenceTimeout   time.Duration `json:"fence_timeout"`
	HealthInterval time.Duration `json:"health_interval"`
	Synchronous    bool          `json:"synchronous_mode"`
	RestartWindow  time.Duration `json:"primary_restart_window"`
}

func (a *Agent) safetySettings() *SafetySettings {
	return &SafetySettings{
		FenceTimeout:   a.timing().FenceTimeout,
		HealthInterval: a.timing().HealthInterval,
		Synchronous:    a.failover().Synchronous(),
		RestartWindow:  a.failover().PrimaryRestartWindow,
	}
}

func (s SafetySettings) String() string {
	return fmt.Sprintf("fence_timeout=%s health_interval=%s synchronous_mode=%t primary_restart_window=%s", s.FenceTimeout, s.HealthInterval, s.Synchronous, s.RestartWindow)
}

// safetyDisagreement says which members' safety settings differ, or "".
func safetyDisagreement(obs map[string]memberView) string {
	byValue := map[SafetySettings][]string{}
	for name, o := range obs {
		if o.obs.Safety != nil {
			byValue[*o.obs.Safety] = append(byValue[*o.obs.Safety], name)
		}
	}
	if len(byValue) <= 1 {
		return ""
	}
	var parts []string
	for s, names := range byValue {
		sort.Strings(names)
		parts = append(parts, strings.Join(names, ",")+": "+s.String())
	}
	sort.Strings(parts)
	return "members disagree on safety settings (" + strings.Join(parts, "; ") + "): the leader judges a primary's lease by the longer fence_timeout, but set them equal on every node"
}

// widenForPrimary makes the leader's policy judge the primary's lease by
// the longer of the two fence timeouts (and health intervals): a primary
// whose own fence_timeout is longer keeps writing for that long.
func widenForPrimary(p Policy, primary memberView) Policy {
	if s := primary.obs.Safety; s != nil {
		p.FenceTimeout = max(p.FenceTimeout, s.FenceTimeout)
		p.HealthInterval = max(p.HealthInterval, s.HealthInterval)
	}
	return p
}

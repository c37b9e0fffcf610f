package consensus

import (
	"maps"
	"slices"
	"time"
)

// Member is one node of the pgha cluster as recorded in Raft.
type Member struct {
	Name       string `json:"name"`
	RaftAddr   string `json:"raft_addr"`
	APIURL     string `json:"api_url"` // agent REST base URL, e.g. http://10.0.0.11:8008
	PGHost     string `json:"pg_host"` // PostgreSQL address clients/standbys use
	PGPort     int    `json:"pg_port"`
	NoFailover bool   `json:"nofailover,omitempty"`
	Priority   int    `json:"priority,omitempty"`
	// NoSync: never a synchronous standby while another member can be.
	NoSync bool `json:"nosync,omitempty"`
	// NoLoadBalance: the router sends it no reads.
	NoLoadBalance bool `json:"noloadbalance,omitempty"`
	// CloneFrom: new and reinitialised standbys take their base backup
	// from it (while it streams from the primary) rather than from the
	// primary.
	CloneFrom bool `json:"clonefrom,omitempty"`
	// NonVoter: it joined Raft as a non-voter (cluster.voter: false): it
	// receives the log but never votes, never leads and never counts
	// towards a quorum. It streams and serves reads like any standby.
	NonVoter bool `json:"nonvoter,omitempty"`
}

// SyncEligible reports whether m may be a synchronous standby when another
// member that streams could be instead: not tagged nosync, and not
// nofailover (a synchronous standby may be the only member holding every
// acknowledged commit, so it must be one the leader may promote).
func (m Member) SyncEligible() bool { return !m.NoSync && !m.NoFailover }

// SyncAllowed reports whether m may ever be a synchronous standby. A
// member tagged nofailover or nosync still may, when no eligible one
// streams (rather than block every commit); a non-voter that may not be
// promoted never is: it was added for reads, and a commit acknowledged by
// it alone is one no failover could take over.
func (m Member) SyncAllowed() bool { return !m.NonVoter || !m.NoFailover }

// State is the committed cluster state. Every agent holds a replica of it in
// its FSM; it changes only by applying a Command through Raft.
//
// A State obtained from Node.State is a private deep copy: the caller may
// read and modify it freely without affecting the replica.
type State struct {
	ClusterID    string            `json:"cluster_id"` // set once by InitCluster
	SystemID     uint64            `json:"system_id"`  // PostgreSQL system identifier, set once
	Members      map[string]Member `json:"members"`
	Primary      string            `json:"primary"` // "" until the cluster is initialised
	Epoch        uint64            `json:"epoch"`   // bumped by every promotion; 1 after InitCluster
	Paused       bool              `json:"paused"`
	SyncStandbys []string          `json:"sync_standbys"`
	// Timeline is the highest PostgreSQL timeline a promotion has reserved
	// (PromoteData.Timeline); 0 before the first such promotion.
	Timeline uint32 `json:"timeline,omitempty"`
	// Switchover is a planned hand-over in progress (zero when none): the
	// primary From stops writes cleanly, then the leader promotes To.
	Switchover Switchover `json:"switchover,omitempty"`
	// Config is what every member shares (Version 0: never set; each agent
	// then uses its own file).
	Config ClusterConfig `json:"config,omitzero"`
	// ScheduledSwitchover is a switchover an operator asked for at a
	// later time (zero At: none); the leader of that time starts it.
	ScheduledSwitchover ScheduledSwitchover `json:"scheduled_switchover,omitzero"`
	// ScheduledRestarts are restarts of members' PostgreSQL an operator
	// asked for at a later time, by member; the leader of that time runs
	// them (standbys first, each streaming again before the next).
	ScheduledRestarts map[string]ScheduledRestart `json:"scheduled_restarts,omitempty"`
	// TagOverrides are the tags operators set at run time, by member.
	TagOverrides map[string]TagOverride `json:"tag_overrides,omitempty"`
	// History lists the promotions, oldest first, at most historyLimit.
	History []Promotion `json:"history,omitempty"`
	// LastBackup is the last backup pgha-agent backup took (zero: none).
	LastBackup BackupRecord `json:"last_backup,omitzero"`
	// Index is the Raft log index of the last entry that changed this State.
	// Refused commands leave the whole State, Index included, untouched.
	Index uint64 `json:"index"`
}

// Switchover names a planned move of the primary role from From to To,
// started in Epoch. It ends with the promotion of To (or is cancelled).
type Switchover struct {
	From  string `json:"from,omitempty"`
	To    string `json:"to,omitempty"`
	Epoch uint64 `json:"epoch,omitempty"`
}

// ClusterConfig is the configuration every member shares, kept in Raft so
// that no two members disagree. It begins as the first leader's file (the
// leader commits version 1); afterwards only PATCH /config changes it.
type ClusterConfig struct {
	Version uint64 `json:"version"` // set by the FSM: one per committed change
	// Parameters are PostgreSQL settings for every member's pgha.conf
	// (never the ones pgha manages itself; the agent validates them).
	Parameters map[string]string `json:"postgresql_parameters,omitempty"`
	// HBA are pg_hba.conf lines for every member, after pgha's own.
	HBA []string `json:"pg_hba,omitempty"`
	// Timing and Failover are every agent's timing and the leader's
	// failover policy. Nil in a version recorded by an agent that kept them
	// in each node's file: every agent then uses its own file's.
	Timing   *Timing   `json:"timing,omitempty"`
	Failover *Failover `json:"failover,omitempty"`
	// Router is the routing and pooling policy of the router the leader
	// runs (nil as Timing is nil).
	Router *RouterSettings `json:"router,omitempty"`
	// Archive is the WAL archive every member's PostgreSQL uses, and
	// Backup the backup tool that clones and backs up (nil: none recorded;
	// every agent then uses its own file's).
	Archive *ArchiveSettings `json:"archive,omitempty"`
	Backup  *BackupSettings  `json:"backup,omitempty"`
	// PriorFenceTimeout is, after a change of fence_timeout, the longest
	// lease granted under an earlier value that may still run: leaders
	// judge the primary's lease by the longer of it and the current value
	// until the leader settles it (SettleLeases), once every such lease has
	// certainly ended. Zero: none.
	PriorFenceTimeout time.Duration `json:"prior_fence_timeout,omitempty"`
}

// Timing is the cluster-wide part of the agents' timing (DESIGN).
type Timing struct {
	LoopInterval      time.Duration `json:"loop_interval"`
	HealthInterval    time.Duration `json:"health_interval"`
	FenceTimeout      time.Duration `json:"fence_timeout"`
	SwitchoverTimeout time.Duration `json:"switchover_timeout"`
}

// RouterSettings are the cluster-wide router settings; listeners, secrets
// and TLS stay in each node's file.
type RouterSettings struct {
	PoolMode          string        `json:"pool_mode"`
	PoolSize          int           `json:"pool_size"`
	MaxClientConn     int           `json:"max_client_conn"`
	QueryWaitTimeout  time.Duration `json:"query_wait_timeout"`
	ServerIdleTimeout time.Duration `json:"server_idle_timeout"`
	ServerLifetime    time.Duration `json:"server_lifetime"`
	LoadBalance       bool          `json:"load_balance"`
	MaxLag            int64         `json:"max_lag"`
	ReadYourWrites    bool          `json:"read_your_writes"`
	WriteFunctions    []string      `json:"write_functions"` // nil: the router's defaults; [] none
	DrainTimeout      time.Duration `json:"drain_timeout"`
	PrimaryWait       time.Duration `json:"primary_wait"`
	HBA               []string      `json:"hba,omitempty"`
}

// ArchiveSettings are the cluster-wide WAL archive settings: PostgreSQL's
// archive_mode, archive_command and restore_command on every member.
type ArchiveSettings struct {
	ArchiveMode    string `json:"archive_mode,omitempty"`
	ArchiveCommand string `json:"archive_command,omitempty"`
	RestoreCommand string `json:"restore_command,omitempty"`
}

// BackupSettings are the cluster-wide backup tool and clone methods.
type BackupSettings struct {
	Tool         string   `json:"tool,omitempty"`    // "pgbackrest", "wal-g" or "" (none)
	Command      string   `json:"command,omitempty"` // the tool's program
	Stanza       string   `json:"stanza,omitempty"`  // pgBackRest's stanza
	Options      []string `json:"options,omitempty"` // added to every call of the tool
	CloneMethods []string `json:"clone_methods,omitempty"`
}

// BackupRecord says which member's backup tool took a backup, and when.
type BackupRecord struct {
	Member   string    `json:"member"`
	Tool     string    `json:"tool"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	// FromStandby: taken on a standby (the primary only started and
	// stopped it), not on the primary.
	FromStandby bool `json:"from_standby,omitempty"`
}

// Failover is the cluster-wide failover policy.
type Failover struct {
	SynchronousMode        bool          `json:"synchronous_mode"`
	MaximumLagOnFailover   int64         `json:"maximum_lag_on_failover"`
	MaximumLagOnSwitchover int64         `json:"maximum_lag_on_switchover"`
	PrimaryRestartWindow   time.Duration `json:"primary_restart_window"`
}

// Clone returns a deep copy of c.
func (c ClusterConfig) Clone() ClusterConfig {
	if c.Parameters != nil {
		c.Parameters = maps.Clone(c.Parameters)
	}
	c.HBA = slices.Clone(c.HBA)
	if c.Timing != nil {
		t := *c.Timing
		c.Timing = &t
	}
	if c.Failover != nil {
		f := *c.Failover
		c.Failover = &f
	}
	if c.Router != nil {
		r := *c.Router
		r.WriteFunctions, r.HBA = slices.Clone(r.WriteFunctions), slices.Clone(r.HBA)
		c.Router = &r
	}
	if c.Archive != nil {
		a := *c.Archive
		c.Archive = &a
	}
	if c.Backup != nil {
		b := *c.Backup
		b.Options, b.CloneMethods = slices.Clone(b.Options), slices.Clone(b.CloneMethods)
		c.Backup = &b
	}
	return c
}

// TagOverride is a member's tags as an operator set them at run time
// (pgha-agent tag); a nil field leaves the value of the member's own file.
// The pointed-to values are never modified.
type TagOverride struct {
	NoFailover    *bool `json:"nofailover,omitempty"`
	NoSync        *bool `json:"nosync,omitempty"`
	NoLoadBalance *bool `json:"noloadbalance,omitempty"`
	Priority      *int  `json:"priority,omitempty"`
	CloneFrom     *bool `json:"clonefrom,omitempty"`
}

// Apply returns m with o's tags in place of its own.
func (o TagOverride) Apply(m Member) Member {
	if o.NoFailover != nil {
		m.NoFailover = *o.NoFailover
	}
	if o.NoSync != nil {
		m.NoSync = *o.NoSync
	}
	if o.NoLoadBalance != nil {
		m.NoLoadBalance = *o.NoLoadBalance
	}
	if o.Priority != nil {
		m.Priority = *o.Priority
	}
	if o.CloneFrom != nil {
		m.CloneFrom = *o.CloneFrom
	}
	return m
}

// Empty reports whether o overrides nothing.
func (o TagOverride) Empty() bool { return o == TagOverride{} }

// withTagOverrides returns s with every member's run-time tags applied:
// what Node.State answers. The FSM keeps each member as its agent
// registered it, so that removing an override restores the file's value.
func (s State) withTagOverrides() State {
	for name, o := range s.TagOverrides {
		if m, ok := s.Members[name]; ok {
			s.Members[name] = o.Apply(m)
		}
	}
	return s
}

// PromotionRecord is what the leader that decided a promotion says of it.
type PromotionRecord struct {
	Kind   string    `json:"kind,omitempty"`   // "failover", "switchover" or "forced failover"
	From   string    `json:"from,omitempty"`   // the primary before
	Reason string    `json:"reason,omitempty"` // the evidence, or who asked
	At     time.Time `json:"at,omitzero"`      // on the deciding leader's clock
	// LSN is the new primary's WAL end as the leader last saw it when it
	// decided: where the new timeline begins, give or take what it still
	// replayed (its timeline history has the exact switch point).
	LSN uint64 `json:"lsn,omitempty"`
}

// Promotion is one entry of State.History: a committed promotion.
type Promotion struct {
	Epoch    uint64 `json:"epoch"`
	Timeline uint32 `json:"timeline,omitempty"` // reserved for it; 0 if none was
	Primary  string `json:"primary"`
	PromotionRecord
}

// historyLimit bounds State.History, so the state (and every snapshot of
// it) stays small however often the cluster fails over.
const historyLimit = 200

// ScheduledSwitchover is a planned switchover from From (the primary when
// it was scheduled) to To ("" for the best standby then) at At.
type ScheduledSwitchover struct {
	At   time.Time `json:"at,omitzero"`
	From string    `json:"from,omitempty"`
	To   string    `json:"to,omitempty"`
}

// ScheduledRestart is a planned restart of one member's PostgreSQL at At
// (the primary's in place: writes unavailable meanwhile).
type ScheduledRestart struct {
	At time.Time `json:"at"`
	// Pending: only if a setting waits for a restart then.
	Pending bool `json:"pending,omitempty"`
}

// Active reports whether a switchover is in progress.
func (s Switchover) Active() bool { return s.To != "" }

// newState returns the empty state of a fresh FSM.
func newState() State {
	return State{Members: map[string]Member{}}
}

// Clone returns a deep copy of s. Nil-ness of Members and SyncStandbys is
// preserved so that a clone compares equal (reflect.DeepEqual) to s.
func (s State) Clone() State {
	c := s
	if s.Members != nil {
		c.Members = make(map[string]Member, len(s.Members))
		for k, v := range s.Members {
			c.Members[k] = v
		}
	}
	c.SyncStandbys = slices.Clone(s.SyncStandbys)
	c.History = slices.Clone(s.History)
	c.TagOverrides = maps.Clone(s.TagOverrides)
	c.ScheduledRestarts = maps.Clone(s.ScheduledRestarts)
	c.Config = s.Config.Clone()
	return c
}

// Initialized reports whether InitCluster has been committed (Primary != "").
func (s State) Initialized() bool { return s.Primary != "" }

package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgha/pgha/consensus"
)

// leader is the Raft leader's memory: what it has granted and noticed. It
// is not in the Raft log; a new leader starts empty (decide accounts for it).
type leader struct {
	mu sync.Mutex // serialises decisions with start permits

	since           time.Time            // when this node became leader (zero: not leader)
	permits         map[string]time.Time // start/promote permits granted, by member, for permitEpoch
	permitEpoch     uint64
	syncMark        syncMark
	switchoverSince time.Time
	switchoverOf    consensus.Switchover
	epochSeen       uint64
	epochSince      time.Time
	startingUpSince time.Time // when the primary's agent was first seen starting up in epochSeen
	waiting         string    // why the last pass committed nothing, if it waited
}

// leadLoop runs the leader's policy every health_interval, and at once when
// an agent pushes news. On followers it only waits: only the Raft leader
// decides, and only through the Raft log.
func (a *Agent) leadLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.Timing.HealthInterval)
	defer t.Stop()
	for {
		if a.node.IsLeader() {
			a.leadOnce(ctx)
		} else {
			a.lead.mu.Lock()
			a.lead.since = time.Time{}
			a.lead.waiting = ""
			a.lead.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.wakeLeader:
		}
	}
}

func (a *Agent) leadOnce(ctx context.Context) {
	l := &a.lead
	l.mu.Lock()
	if l.since.IsZero() {
		// A new leader first makes sure its FSM holds everything committed
		// before it, so it never decides on a stale state.
		if err := a.node.Barrier(ctx); err != nil {
			l.mu.Unlock()
			a.log.Warn("new leader: barrier failed", "err", err)
			return
		}
		l.since = time.Now()
		l.permits = map[string]time.Time{}
		l.epochSeen = 0
		a.log.Info("became Raft leader", "reason", "won an election")
	}
	l.mu.Unlock()

	servers, err := a.node.Servers()
	if err != nil {
		a.log.Warn("read raft configuration", "err", err)
		return
	}
	voters := make([]string, 0, len(servers))
	for _, s := range servers {
		voters = append(voters, s.ID)
	}
	st := a.node.State()
	// The leader's view of itself is taken now, never from a poll.
	a.obs.set(a.cfg.Name, memberView{obs: a.observeSelf(ctx), reachable: true, lastSeen: time.Now()})
	if sw := st.Switchover; sw.Active() {
		// The switchover waits on the candidate's received LSN: ask it now
		// rather than at the next poll, writes are unavailable meanwhile.
		if m, ok := st.Members[sw.To]; ok && sw.To != a.cfg.Name {
			a.pollMember(ctx, sw.To, m.APIURL)
		} else if sw.To == a.cfg.Name {
			a.obs.set(a.cfg.Name, memberView{obs: a.observeSelf(ctx), reachable: true, lastSeen: time.Now()})
		}
	}
	obs := a.obs.snapshot()
	in := Inputs{
		State:        st,
		Observations: obs,
		Now:          time.Now(),
		Self:         a.cfg.Name,
		Voters:       voters,
		NewClusterID: newClusterID(),
		Policy:       a.policy(),
	}
	// The direct check is I/O, so it happens here, before deciding, and
	// only when the primary's agent has gone quiet.
	if p, ok := st.Members[st.Primary]; ok && st.Initialized() {
		if _, ok := fresh(in, st.Primary); !ok {
			answers := a.directCheck(ctx, p)
			in.PrimaryAnswers = &answers
			// The check may have taken seconds (a host that drops packets
			// makes it wait out its timeouts): judge the others on what
			// they reported meanwhile, not on a snapshot from before it.
			obs = a.obs.snapshot()
			in.Observations = obs
		}
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	st = a.node.State() // permits may have been granted meanwhile; decide on the newest state
	in.State = st
	in.Now = time.Now()
	in.LeaderSince = l.since
	if l.permitEpoch != st.Epoch {
		l.permits, l.permitEpoch = map[string]time.Time{}, st.Epoch
	}
	// A permit covers one start, and so does a start-up of the agent: once
	// the primary runs, neither holds back a failover.
	if p, ok := obs[st.Primary]; ok && p.reachable && p.obs.Postgres.Running && !p.obs.Postgres.InRecovery {
		delete(l.permits, st.Primary)
		l.startingUpSince = time.Time{}
	}
	in.Permits = l.permits
	a.updateSyncMark(st, obs)
	in.SyncMark = l.syncMark
	if st.Switchover != l.switchoverOf {
		l.switchoverOf, l.switchoverSince = st.Switchover, time.Now()
	}
	in.SwitchoverSince = l.switchoverSince
	if st.Epoch != l.epochSeen {
		// An epoch this leader saw begin gets the grace; one it inherited
		// on election is judged at once.
		since := time.Now()
		if l.epochSeen == 0 {
			since = time.Time{}
		}
		l.epochSeen, l.epochSince = st.Epoch, since
		l.startingUpSince = time.Time{}
	}
	in.EpochSince = l.epochSince
	if p, ok := obs[st.Primary]; ok && p.reachable && p.obs.StartingUp && l.startingUpSince.IsZero() {
		l.startingUpSince = time.Now()
	}
	in.StartingUpSince = l.startingUpSince

	plan := decide(in)
	if plan.Waiting != l.waiting {
		if plan.Waiting != "" {
			a.log.Info("leader waiting", "epoch", st.Epoch, "reason", plan.Waiting)
		}
		l.waiting = plan.Waiting
	}
	if plan.Retry {
		go func() {
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
				a.wake()
			}
		}()
	}
	for _, d := range plan.Decisions {
		a.log.Info("decision", "command", string(d.Command.Type), "epoch", st.Epoch, "reason", d.Reason)
		if err := a.node.Apply(ctx, d.Command); err != nil {
			a.log.Warn("decision not committed", "command", string(d.Command.Type), "err", err)
			return
		}
	}
}

// updateSyncMark notes when the primary's synchronous_standby_names narrowed
// to one name, and the primary's LSN at that moment. Called with lead.mu held.
func (a *Agent) updateSyncMark(st consensus.State, obs map[string]memberView) {
	p, ok := obs[st.Primary]
	if !ok || !p.reachable || !p.obs.Postgres.Running || p.obs.Postgres.InRecovery {
		return
	}
	names := p.obs.Postgres.SyncStandbyNames
	m := a.lead.syncMark
	switch {
	case m.Epoch != st.Epoch || m.Names != names:
		a.lead.syncMark = syncMark{Epoch: st.Epoch, Names: names, At: time.Now()}
	case m.LSN == 0 && time.Since(m.At) >= syncSettle && p.obs.At.After(m.At.Add(syncSettle)):
		a.lead.syncMark.LSN = p.obs.Postgres.CurrentLSN
	}
}

func (a *Agent) policy() Policy {
	return Policy{
		Synchronous:          a.cfg.Failover.Synchronous(),
		MaxLagOnFailover:     a.cfg.Failover.MaximumLagOnFailover,
		FenceTimeout:         a.cfg.Timing.FenceTimeout,
		HealthInterval:       a.cfg.Timing.HealthInterval,
		PrimaryRestartWindow: a.cfg.Failover.PrimaryRestartWindow,
		SwitchoverTimeout:    a.cfg.Timing.SwitchoverTimeout,
	}
}

// directCheck asks the member's PostgreSQL itself, as the monitor role,
// whether it runs as a primary: the leader's check that a silent agent's
// database is really gone before anything is promoted.
func (a *Agent) directCheck(ctx context.Context, m consensus.Member) bool {
	// Two tries: a loaded host may be slow to accept, and a wrong "no"
	// starts a failover.
	for try := 0; try < 2; try++ {
		if a.directCheckOnce(ctx, m) {
			return true
		}
	}
	return false
}

func (a *Agent) directCheckOnce(ctx context.Context, m consensus.Member) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	mon := a.cfg.Postgres.Monitor
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d dbname=postgres sslmode=prefer connect_timeout=2", m.PGHost, m.PGPort))
	if err != nil {
		return false
	}
	cfg.User, cfg.Password = mon.User, mon.Password()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return false
	}
	defer conn.Close(context.Background())
	var inRecovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return false
	}
	return !inRecovery
}

// grantPermit runs on the leader: may member start (or promote) its
// PostgreSQL as the primary of epoch? Serialised with decisions, so a permit
// and a failover of the same primary can never both happen.
func (a *Agent) grantPermit(ctx context.Context, member string, epoch uint64, restart bool) error {
	a.lead.mu.Lock()
	defer a.lead.mu.Unlock()
	if err := a.node.VerifyLeader(ctx); err != nil {
		return err
	}
	st := a.node.State()
	switch {
	case st.Primary != member || st.Epoch != epoch:
		return fmt.Errorf("%w: %s is not the primary of epoch %d (the primary is %s, epoch %d)", consensus.ErrRefused, member, epoch, st.Primary, st.Epoch)
	case st.Switchover.Active():
		return fmt.Errorf("%w: a switchover to %s is in progress", consensus.ErrRefused, st.Switchover.To)
	}
	if restart && st.Paused {
		// Maintenance mode: pgha changes nothing on its own, not even a
		// restart in place; the operator decides (resume, or failover).
		return fmt.Errorf("%w: the cluster is paused: not restarting %s's PostgreSQL automatically", consensus.ErrRefused, member)
	}
	if restart && a.cfg.Failover.PrimaryRestartWindow == 0 {
		in := Inputs{State: st, Observations: a.obs.snapshot(), Now: time.Now(), Policy: a.policy()}
		if cand, _ := chooseCandidate(in, member); cand != "" {
			a.wake() // fail over now rather than at the next tick
			return fmt.Errorf("%w: PostgreSQL on %s crashed; failing over to %s instead of restarting in place (failover.primary_restart_window is 0)", consensus.ErrRefused, member, cand)
		}
	}
	if a.lead.permitEpoch != st.Epoch || a.lead.permits == nil {
		a.lead.permits, a.lead.permitEpoch = map[string]time.Time{}, st.Epoch
	}
	a.lead.permits[member] = time.Now()
	return nil
}

func newClusterID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

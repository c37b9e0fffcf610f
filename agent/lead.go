package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgha/pgha/consensus"
)

// leader is the Raft leader's memory (leaderMemory: what it has granted and
// noticed) and what it last reported. It is not in the Raft log; a new
// leader starts empty (decide accounts for it).
//
// mu serialises the leader's decisions (leadOnce, commitFailover) with the
// start permits and lease renewals it grants (grantPermit, grantLease), and
// guards leaderMemory and waiting. The leader's loop, the REST handlers, the
// lease loop of a primary that leads and the front loop's VIP check take it.
type leader struct {
	mu sync.Mutex

	leaderMemory
	waiting string // why the last pass committed nothing, if it waited
	// waitingNow is waiting for readers that must not take mu (an
	// observation is taken while mu is held: repollStandbys, refresh).
	waitingNow atomic.Value
	// configSeen is the configuration version this node last saw, from
	// configSeenAt on (settleLeases).
	configSeen   uint64
	configSeenAt time.Time
}

// leadLoop runs the leader's policy every health_interval, and at once when
// an agent pushes news. On followers it only waits: only the Raft leader
// decides, and only through the Raft log.
func (a *Agent) leadLoop(ctx context.Context) {
	t := newTicker(a.timing().HealthInterval)
	defer t.Stop()
	for {
		t.follow(a.timing().HealthInterval)
		if a.node.IsLeader() {
			a.leadOnce(ctx)
		} else {
			a.lead.mu.Lock()
			a.lead.since = time.Time{}
			a.lead.waiting = ""
			a.lead.waitingNow.Store("")
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
	if err := a.beginTenure(ctx); err != nil {
		l.mu.Unlock()
		a.log.Warn("new leader: barrier failed", "err", err)
		return
	}
	l.mu.Unlock()
	a.settleLeases(ctx)

	servers, err := a.node.Servers()
	if err != nil {
		a.log.Warn("read raft configuration", "err", err)
		return
	}
	voters := make([]string, 0, len(servers))
	for _, s := range servers {
		if !s.NonVoter {
			voters = append(voters, s.ID)
		}
	}
	st := a.node.State()
	a.runScheduled(ctx, st)
	a.runScheduledRestarts(ctx, st)
	// The leader's view of itself is taken now, never from a poll.
	a.obs.set(a.cfg.Name, a.selfView(ctx))
	if sw := st.Switchover; sw.Active() {
		// The switchover waits on the candidate's received LSN: ask it now
		// rather than at the next poll, writes are unavailable meanwhile.
		if m, ok := st.Members[sw.To]; ok && sw.To != a.cfg.Name {
			a.pollMember(ctx, sw.To, m.APIURL)
		} else if sw.To == a.cfg.Name {
			a.obs.set(a.cfg.Name, a.selfView(ctx))
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
		Policy:       widenForPrimary(a.policy(), obs[st.Primary]),

		BootstrapConfig: a.bootstrapConfig(),
	}
	// The direct check is I/O, so it happens here, before deciding, and
	// only when the primary's agent has gone quiet and its fence deadline
	// is at most one check away: the check's answer is what the decision
	// at the deadline needs, and a check that started late (a host that
	// drops packets makes it wait out its dial timeouts) would delay the
	// failover by as much.
	if p, ok := st.Members[st.Primary]; ok && st.Initialized() {
		if _, ok := fresh(in, st.Primary); !ok {
			l.mu.Lock()
			in.LeaderSince, in.PriorLeases, in.PrimaryLease = l.since, l.priorLeases, l.lastLease(st.Primary, st.Epoch)
			l.mu.Unlock()
			deadline := leaseDeadline(in, true)
			if start := deadline.Add(-a.directCheckBudget()); time.Now().Before(start) {
				a.wakeAt(ctx, start)
			} else {
				answers := a.directCheck(ctx, p)
				in.PrimaryAnswers = &answers
				// Done early: the answer serves the decision at the
				// deadline, a moment away.
				if wait := time.Until(deadline); wait > 0 {
					select {
					case <-ctx.Done():
						return
					case <-time.After(wait):
					}
				}
				// Judge the others on what they reported meanwhile, not
				// on a snapshot from before the check.
				obs = a.obs.snapshot()
				in.Observations = obs
			}
		}
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	st = a.node.State() // permits may have been granted meanwhile; decide on the newest state
	// The bookkeeping is pure (inputs); what it does not cover was gathered
	// above by I/O.
	var next Inputs
	next, l.leaderMemory = inputs(st, obs, time.Now(), l.leaderMemory)
	next.Self, next.Voters, next.NewClusterID, next.BootstrapConfig = in.Self, in.Voters, in.NewClusterID, in.BootstrapConfig
	next.Policy, next.PrimaryAnswers = in.Policy, in.PrimaryAnswers
	in = next

	plan := decide(in)
	if promotes(plan) && !st.Switchover.Active() {
		// Which standby holds every acknowledged commit is judged on
		// observations up to fence_timeout old, taken at different times:
		// ask every candidate again now that the primary is confirmed
		// down, and decide on that.
		a.repollStandbys(ctx, st)
		in.Observations = a.obs.snapshot()
		in.Now = time.Now()
		plan = decide(in)
	}
	if plan.Retry && st.Switchover.Active() && st.Switchover.To != "" {
		// The switchover waits for the candidate to have received the
		// stopped primary's last WAL: ask the candidate now instead of
		// deciding again on its observation from the last poll (up to a
		// health interval old: 0.4 s of every switchover).
		a.refresh(ctx, st, st.Switchover.To)
		in.Observations = a.obs.snapshot()
		in.Now = time.Now()
		plan = decide(in)
	}
	if plan.Waiting != l.waiting {
		if plan.Waiting != "" {
			a.log.Info("leader waiting", "epoch", st.Epoch, "reason", plan.Waiting)
		}
		l.waiting = plan.Waiting
		l.waitingNow.Store(plan.Waiting)
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

// beginTenure makes sure the leader's memory is of this tenure, the Raft
// term this node leads in now, and starts it afresh if not: on the first
// round after an election, but also on a grant that comes before that round
// (a permit granted, then forgotten by the round, would let the round fail
// over a primary whose agent is starting it), and after leadership was lost
// and won back between two rounds (another leader may have granted leases
// meanwhile that this one's memory does not hold). A new tenure first makes
// sure the FSM holds everything committed before it, so it never decides on
// a stale state. Called with mu held.
func (a *Agent) beginTenure(ctx context.Context) error {
	l := &a.lead
	term := a.node.Term()
	if !l.since.IsZero() && l.term == term {
		return nil
	}
	if err := a.node.Barrier(ctx); err != nil {
		return err
	}
	l.leaderMemory = l.elected(time.Now(), term)
	l.priorLeases = a.priorLeaseBound(ctx, term, l.since)
	a.log.Info("became Raft leader", "reason", "won an election", "term", term, "earlier_leases_before", l.since.Sub(l.priorLeases).Round(time.Millisecond))
	return nil
}

// settleLeases clears the prior fence timeout of the configuration in force
// (consensus.ClusterConfig.PriorFenceTimeout) once no lease granted under
// an earlier value can still run. Leases are granted under the value the
// granting leader has applied: this leader granted its last such lease
// before it saw the change (configSeenAt, after applying it), earlier
// leaders theirs before its tenure began (since). Each lasts at most the
// prior value; the fence margin covers the freeze, as for any lease.
func (a *Agent) settleLeases(ctx context.Context) {
	c := a.node.Config()
	l := &a.lead
	l.mu.Lock()
	if l.configSeen != c.Version || l.configSeenAt.IsZero() {
		l.configSeen, l.configSeenAt = c.Version, time.Now()
	}
	from := l.configSeenAt
	if l.since.After(from) {
		from = l.since
	}
	l.mu.Unlock()
	if c.PriorFenceTimeout == 0 {
		return
	}
	if time.Since(from) < c.PriorFenceTimeout+fenceMargin {
		return // a later pass (every health_interval) settles it
	}
	if err := a.node.Apply(ctx, consensus.SettleLeases(c.Version)); err != nil {
		a.log.Warn("could not settle the leases of an earlier fence_timeout", "version", c.Version, "err", err)
		return
	}
	a.log.Info("decision", "command", "settle_leases", "version", c.Version, "reason", fmt.Sprintf("no lease granted under the earlier fence_timeout (%s) can still run; leases are judged by %s alone now", c.PriorFenceTimeout, timingOf(c, a.cfg.Timing).FenceTimeout))
}

// verifyPrimary confirms with a quorum that this node still leads and
// returns the committed state, which must name member the primary of epoch:
// what a lease renewal and a start permit both need. Called with mu held.
func (a *Agent) verifyPrimary(ctx context.Context, member string, epoch uint64) (consensus.State, error) {
	if err := a.node.VerifyLeader(ctx); err != nil {
		return consensus.State{}, err
	}
	st := a.node.State()
	if st.Primary != member || st.Epoch != epoch {
		return st, fmt.Errorf("%w: %s is not the primary of epoch %d (the primary is %s, epoch %d)", consensus.ErrRefused, member, epoch, st.Primary, st.Epoch)
	}
	return st, nil
}

// promotes reports whether plan promotes a member.
func promotes(plan Plan) bool {
	return slices.ContainsFunc(plan.Decisions, func(d Decision) bool { return d.Command.Type == consensus.CmdPromote })
}

// repollStandbys asks every member but the primary again, at once, and
// waits for the answers (see refresh).
func (a *Agent) repollStandbys(ctx context.Context, st consensus.State) {
	var names []string
	for name := range st.Members {
		if name != st.Primary {
			names = append(names, name)
		}
	}
	a.refresh(ctx, st, names...)
}

func (a *Agent) policy() Policy {
	c := a.node.Config()
	t, f := timingOf(c, a.cfg.Timing), failoverOf(c, a.cfg.Failover)
	return Policy{
		Synchronous:          f.Synchronous(),
		MaxLagOnFailover:     f.MaximumLagOnFailover,
		FenceTimeout:         leaseJudgedBy(c, t),
		HealthInterval:       t.HealthInterval,
		PrimaryRestartWindow: f.PrimaryRestartWindow,
		SwitchoverTimeout:    t.SwitchoverTimeout,
	}
}

// directCheck asks the member's PostgreSQL itself, as the monitor role,
// whether it runs as a primary: the leader's check that a silent agent's
// database is really gone before anything is promoted.
//
// Dead means gone (DESIGN): only a server that cannot be reached (connection
// refused, no route, no answer to connect) counts as down. A server that
// accepts the connection is alive whatever follows: an error reply ("too
// many clients", a failed authentication, "starting up"), no reply in time,
// a query that times out. A server that answers it is in recovery is not a
// writer.
//
// A host that drops packets answers nothing, and a TCP connect to it waits
// out its whole timeout; one that is up answers a connect at once from its
// kernel, however loaded its postmaster. So the connect is bounded tightly
// (directDialTimeout), what follows it loosely (two seconds): a failover of
// a host cut off costs a short dial timeout and a stagger (twoTries).
func (a *Agent) directCheck(ctx context.Context, m consensus.Member) bool {
	return twoTries(ctx, directCheckStagger, func(ctx context.Context) bool { return a.directCheckOnce(ctx, m) })
}

// directCheckStagger is how long the second try of a direct check waits
// for the first before it starts too: two SYNs, so one lost does not start
// a failover, and a host that drops packets costs one dial timeout and
// this, not two dial timeouts.
const directCheckStagger = 50 * time.Millisecond

// twoTries runs try, and again stagger later or as soon as the first says
// no, whichever is first: alive if either says so (the other is cancelled),
// down only if both say down.
func twoTries(ctx context.Context, stagger time.Duration, try func(context.Context) bool) bool {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	answers := make(chan bool, 2)
	run := func() { answers <- try(ctx) }
	go run()
	second := time.NewTimer(stagger)
	defer second.Stop()
	started, pending := 1, 1
	for pending > 0 {
		select {
		case alive := <-answers:
			pending--
			if alive {
				return true
			}
		case <-second.C:
		}
		if started < 2 {
			started++
			pending++
			go run()
		}
	}
	return false
}

// directDialTimeout bounds one TCP connect of the direct check: a quarter of
// fence_timeout (the lease round trip's bound too), at least 250 ms.
func (a *Agent) directDialTimeout() time.Duration {
	return max(a.timing().FenceTimeout/4, 250*time.Millisecond)
}

// directCheckBudget is how long a direct check of a host that drops packets
// takes: the second try's connect times out last. A host that answers is
// judged sooner.
func (a *Agent) directCheckBudget() time.Duration {
	return directCheckStagger + a.directDialTimeout()
}

// wakeAt runs the leader's loop again at t.
func (a *Agent) wakeAt(ctx context.Context, t time.Time) {
	go func() {
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(t)):
			a.wake()
		}
	}()
}

func (a *Agent) directCheckOnce(ctx context.Context, m consensus.Member) bool {
	mon := a.cfg.Postgres.Monitor
	return mayBeWriter(ctx, m.PGHost, m.PGPort, mon.User, mon.Password(), a.directDialTimeout())
}

// mayBeWriter is one direct check of the PostgreSQL at host:port: false only
// when nothing accepts a TCP connection there within dialTimeout (refused,
// no route, no answer), or when the server says it is in recovery. Once the
// connection is accepted, anything else means alive and possibly writable:
// an error reply ("too many clients", a failed authentication, "starting
// up"), and also no reply at all within two seconds (a postmaster too
// loaded to fork a backend in time is alive), or a query that fails.
func mayBeWriter(ctx context.Context, host string, port int, user, password string, dialTimeout time.Duration) bool {
	dialer := &net.Dialer{Timeout: dialTimeout, KeepAlive: -1}
	return mayBeWriterVia(ctx, host, port, user, password, dialer.DialContext)
}

// errNotAccepted stops pgx from dialing again once a connect went
// unanswered.
var errNotAccepted = errors.New("the first connect was not accepted")

// mayBeWriterVia is mayBeWriter over dial. pgx dials once per fallback
// (sslmode=prefer: TLS, then plain); a host that drops packets would make
// each of them wait out the dial timeout, and the check would overrun the
// budget the leader plans for (directCheckBudget: measured at twice it on
// the network-namespace cluster). So it dials once: a connect that is not
// accepted is the answer.
func mayBeWriterVia(ctx context.Context, host string, port int, user, password string, dial pgconn.DialFunc) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d dbname=postgres sslmode=prefer connect_timeout=2", host, port))
	if err != nil {
		return true // cannot tell: never a reason to fail over
	}
	cfg.User, cfg.Password = user, password
	var accepted, unanswered atomic.Bool
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if unanswered.Load() {
			return nil, errNotAccepted
		}
		c, err := dial(ctx, network, addr)
		if err == nil {
			accepted.Store(true)
		} else {
			unanswered.Store(true)
		}
		return c, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return accepted.Load() // accepted, then an error reply or none: alive
	}
	defer conn.Close(context.Background())
	var inRecovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return true // it accepted us: alive, whatever the query did
	}
	return !inRecovery
}

// grantPermit runs on the leader: may member start (or promote) its
// PostgreSQL as the primary of epoch? Serialised with decisions, so a permit
// and a failover of the same primary can never both happen. A grant is also
// a lease renewal (the same round trip); it answers how long the permit's
// start grace has left: the agent must have its PostgreSQL up within it.
//
// The grace runs from the first permit since the member's PostgreSQL last
// ran in this epoch: an agent whose start fails over and over (its port
// taken, a full disk) cannot hold a failover back by asking again.
func (a *Agent) grantPermit(ctx context.Context, member string, epoch uint64, restart bool) (time.Duration, error) {
	if err := a.lead.lock(ctx); err != nil {
		return 0, err
	}
	defer a.lead.mu.Unlock()
	if err := a.beginTenure(ctx); err != nil {
		return 0, err
	}
	st, err := a.verifyPrimary(ctx, member, epoch)
	if err != nil {
		return 0, err
	}
	switch {
	case st.Switchover.Active():
		return 0, fmt.Errorf("%w: a switchover to %s is in progress", consensus.ErrRefused, st.Switchover.To)
	}
	if restart && st.Paused {
		// Maintenance mode: pgha changes nothing on its own, not even a
		// restart in place; the operator decides (resume, or failover).
		return 0, fmt.Errorf("%w: the cluster is paused: not restarting %s's PostgreSQL automatically", consensus.ErrRefused, member)
	}
	if restart && a.failover().PrimaryRestartWindow == 0 {
		in := Inputs{State: st, Observations: a.obs.snapshot(), Now: time.Now(), Policy: a.policy()}
		if cand, _ := chooseCandidate(in, member); cand != "" {
			a.wake() // fail over now rather than at the next tick
			return 0, fmt.Errorf("%w: PostgreSQL on %s crashed; failing over to %s instead of restarting in place (failover.primary_restart_window is 0)", consensus.ErrRefused, member, cand)
		}
	}
	now := time.Now()
	var first time.Time
	a.lead.leaderMemory, first = a.lead.notePermit(member, st.Epoch, now)
	left := first.Add(startGrace(a.policy())).Sub(now)
	if left <= 0 {
		a.wake()
		return 0, fmt.Errorf("%w: %s has not started PostgreSQL within %s of its first permit in epoch %d; failing over instead", consensus.ErrRefused, member, startGrace(a.policy()), epoch)
	}
	a.lead.leaderMemory = a.lead.noteLease(member, epoch, now)
	return left, nil
}

func newClusterID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

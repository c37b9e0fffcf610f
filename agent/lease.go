package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/pgha/pgha/consensus"
)

// The primary's lease (DESIGN "One writer").
//
// A primary may be writable only while it holds a lease, renewed by a round
// trip to the current Raft leader that names it the primary of the current
// epoch. Reaching other members is not enough: a primary cut off from the
// leader alone (one link of three) must stop while the leader, which cannot
// reach it, prepares to promote someone else.
//
//  1. The primary's agent sends a renewal at time s (its clock). The leader
//     grants it only if it is still the leader (VerifyLeader, a quorum round
//     trip) and the committed state names the member primary of that epoch,
//     and records the time r it granted it. s < r in real time.
//  2. The primary's lease lasts until s + fence_timeout. The leader
//     promotes a replacement no earlier than r + fence_timeout + a margin
//     (fenceDeadline): by then the lease has run out and the agent has
//     fenced its PostgreSQL. A new leader knows no r of the old one: it
//     counts from the latest contact with a leader that a quorum of
//     members reports, or from its election without such a quorum; both
//     come after every r of an earlier leader (priorLeaseBound).
//  3. The lease is measured on the monotonic clock. An agent that was
//     frozen (SIGSTOP, a VM pause) wakes with a lease that ran out while it
//     slept: it freezes its PostgreSQL at once, as on any lapse, then tries
//     one renewal and thaws it when that is granted, so a freeze the cluster
//     rode out (its PostgreSQL answered the leader's direct check) costs one
//     round trip of writes, not a failover; if the leader promoted someone
//     meanwhile, the renewal is refused and the server stays frozen, then
//     is killed. Nothing comes before the freeze but reading two files, so
//     the margin is the freeze's alone.
//  4. A grant of a start permit is a renewal too: it is the same round trip.
//
// A restarted agent holds the lease its previous run was granted (kept in
// its data_dir, leaseFile), not a fresh one: the leader knows only the
// renewals it granted. A server it finds running past that lease is frozen
// until the first renewal, which thaws it.

// lease is the primary's side: when its lease runs out.
type lease struct {
	mu    sync.Mutex
	until time.Time // zero: none
	epoch uint64    // the epoch it was granted for
	// changed gets a signal when until or epoch change: the fence loop
	// sleeps until the lease's end and must hear of a new one.
	changed chan struct{}
}

func (l *lease) renewed(epoch uint64, sent time.Time, d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if u := sent.Add(d); epoch != l.epoch || u.After(l.until) {
		l.until, l.epoch = u, epoch
		l.signalLocked()
	}
}

// changes returns the channel that gets a signal when the lease changes.
func (l *lease) changes() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.changed == nil {
		l.changed = make(chan struct{}, 1)
	}
	return l.changed
}

func (l *lease) signalLocked() {
	if l.changed == nil {
		l.changed = make(chan struct{}, 1)
	}
	select {
	case l.changed <- struct{}{}:
	default: // one pending signal is enough
	}
}

// end is when the lease for epoch runs out (zero: none).
func (l *lease) end(epoch uint64) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.epoch != epoch {
		return time.Time{}
	}
	return l.until
}

// anyEnd is when the last lease this agent holds, of whatever epoch, runs
// out (zero: none).
func (l *lease) anyEnd() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.until
}

// snapshot returns the lease as it stands, for persisting it.
func (l *lease) snapshot() (uint64, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.epoch, l.until
}

// leaseFile keeps the lease across restarts of the agent (DESIGN "One
// writer"): a restarted agent holds exactly the lease its previous run was
// granted, never a fresh one. Its start used to count as a renewal, which
// the leader knows nothing of: an agent dead for longer than the lease,
// restarted and cut off at once, kept its server writable for a lease the
// leader had long counted out, and the leader promoted meanwhile (two
// writable primaries in the hour-long campaign and in TestNetCluster).
const leaseFile = "lease"

// saveLease writes the lease to the agent's data_dir after a renewal. A
// lost write (a crash) only makes the next run freeze sooner.
func (a *Agent) saveLease() {
	epoch, until := a.lease.snapshot()
	b := []byte(fmt.Sprintf("%d %d\n", epoch, until.UnixNano()))
	path := filepath.Join(a.cfg.DataDir, leaseFile)
	if os.WriteFile(path+".tmp", b, 0o600) == nil {
		_ = os.Rename(path+".tmp", path)
	}
}

// loadLease restores the previous run's lease at start (none if the file
// is missing or unreadable: the server is then frozen until a renewal).
func (a *Agent) loadLease() {
	b, err := os.ReadFile(filepath.Join(a.cfg.DataDir, leaseFile))
	if err != nil {
		return
	}
	var epoch uint64
	var nanos int64
	if _, err := fmt.Sscanf(string(b), "%d %d", &epoch, &nanos); err != nil {
		return
	}
	a.lease.renewed(epoch, time.Unix(0, nanos), 0)
}

func (l *lease) remaining(epoch uint64, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.epoch != epoch {
		return 0
	}
	return l.until.Sub(now)
}

type leaseRequest struct {
	Member string `json:"member"`
	Epoch  uint64 `json:"epoch"`
}

// renewLease makes one renewal round trip for the primary of st.Epoch.
func (a *Agent) renewLease(ctx context.Context, st consensus.State) error {
	return a.renewLeaseWithin(ctx, st, a.leaseRoundTrip())
}

// renewLeaseWithin is renewLease in at most d.
func (a *Agent) renewLeaseWithin(ctx context.Context, st consensus.State, d time.Duration) error {
	if st.Primary != a.cfg.Name {
		return fmt.Errorf("%s is not the primary of epoch %d", a.cfg.Name, st.Epoch)
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	// The lease counts from before every attempt below: the leader's
	// grant comes later, so its deadline covers this one.
	sent := time.Now()
	d, err := a.askForLease(ctx, st.Epoch)
	if err != nil {
		return err
	}
	a.lease.renewed(st.Epoch, sent, d)
	a.saveLease()
	return nil
}

// leaseGrant answers a granted renewal with the lease's length: the fence
// timeout in force on the leader that granted it, which judges it by that
// length (or a longer one, see leaseJudgedBy). The primary takes the
// leader's word over its own: during a change of fence_timeout the two may
// not have applied it yet at the same moment.
type leaseGrant struct {
	Message string        `json:"message"`
	Lease   time.Duration `json:"lease_ns"`
}

// askForLease asks the Raft leader for a renewal. The local Raft's idea of
// the leader comes first. When that fails or there is none, the other
// members are asked who leads: an agent that wakes from a freeze may be a
// deposed leader that has not stepped down yet, or know no leader for
// seconds (the new leader backs off its heartbeats to a member that did
// not answer), while its PostgreSQL is still the primary the cluster kept.
// Without this it would fence on a lease that only the freeze let run out.
func (a *Agent) askForLease(ctx context.Context, epoch uint64) (time.Duration, error) {
	var d time.Duration
	var err error
	if a.node.IsLeader() {
		// Half the time at most: a deposed leader's VerifyLeader may hang.
		lctx, cancel := context.WithTimeout(ctx, a.leaseRoundTrip()/2)
		d, err = a.grantLease(lctx, a.cfg.Name, epoch)
		cancel()
	} else if base, lerr := a.leaderAPI(); lerr != nil {
		err = lerr
	} else {
		d, err = a.postLease(ctx, base, epoch)
	}
	if err == nil || errors.Is(err, consensus.ErrRefused) || ctx.Err() != nil {
		return d, err
	}
	base, ferr := a.findLeaderAPI(ctx)
	if ferr != nil {
		return 0, fmt.Errorf("%w; asking the other members: %w", err, ferr)
	}
	return a.postLease(ctx, base, epoch)
}

// postLease asks the leader at base for a renewal and returns the lease's
// length it granted.
func (a *Agent) postLease(ctx context.Context, base string, epoch uint64) (time.Duration, error) {
	body, _ := json.Marshal(leaseRequest{Member: a.cfg.Name, Epoch: epoch})
	var g leaseGrant
	if err := postJSON(ctx, a.http, base+"/internal/lease", body, &g); err != nil {
		return 0, err
	}
	if g.Lease <= 0 { // an older leader says nothing: its own file's, as this one's
		return a.timing().FenceTimeout, nil
	}
	return g.Lease, nil
}

// findLeaderAPI asks the other members at once who the Raft leader is and
// returns the API address of the first one that says it leads. Only a
// member's claim about itself counts: it is the one that must then verify
// its leadership with a quorum before it grants anything.
func (a *Agent) findLeaderAPI(ctx context.Context) (string, error) {
	st := a.node.State()
	found := make(chan string, len(st.Members))
	asked := 0
	for name, m := range st.Members {
		if name == a.cfg.Name || m.APIURL == "" {
			continue
		}
		asked++
		go func() {
			var info raftInfo
			if getJSON(ctx, a.http, m.APIURL+"/internal/raft", &info) == nil && info.State == "leader" && info.Name == name {
				found <- m.APIURL
				return
			}
			found <- ""
		}()
	}
	for range asked {
		select {
		case u := <-found:
			if u != "" {
				return u, nil
			}
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	return "", fmt.Errorf("none of the %d other members says it leads", asked)
}

// leaseRoundTrip bounds one renewal: a small part of the lease, so a slow
// leader never eats the time the fence needs.
func (a *Agent) leaseRoundTrip() time.Duration {
	return max(a.timing().FenceTimeout/4, 50*time.Millisecond)
}

// leaseInterval is how often the primary renews: often enough that a
// leader lost just after a renewal leaves most of the lease for the
// election of the next one.
func (a *Agent) leaseInterval() time.Duration {
	return max(min(a.timing().HealthInterval, a.timing().FenceTimeout/8), 20*time.Millisecond)
}

// leaseLoop renews the lease while this node is the committed primary.
func (a *Agent) leaseLoop(ctx context.Context) {
	t := newTicker(a.leaseInterval())
	defer t.Stop()
	failing := ""
	for {
		t.follow(a.leaseInterval())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st := a.node.State()
		if st.Primary != a.cfg.Name || !st.Initialized() {
			continue
		}
		err := a.renewLease(ctx, st)
		switch {
		case err != nil && err.Error() != failing:
			failing = err.Error()
			a.log.Warn("lease not renewed", "epoch", st.Epoch, "err", err, "remaining", a.lease.remaining(st.Epoch, time.Now()).Round(time.Millisecond))
		case err == nil && failing != "":
			failing = ""
			a.log.Info("lease renewed again", "epoch", st.Epoch)
		}
	}
}

// grantLease runs on the leader. It is serialised with the leader's
// decisions (lead.mu), so a renewal and a failover of the same primary
// never both succeed.
func (a *Agent) grantLease(ctx context.Context, member string, epoch uint64) (time.Duration, error) {
	if err := a.lead.lock(ctx); err != nil {
		return 0, err
	}
	defer a.lead.mu.Unlock()
	if err := a.beginTenure(ctx); err != nil {
		return 0, err
	}
	if _, err := a.verifyPrimary(ctx, member, epoch); err != nil {
		return 0, err
	}
	if first, ok := a.lead.permitsOf(epoch)[member]; ok && time.Since(first) >= startGrace(a.policy()) {
		// Its PostgreSQL did not start within the grace: the leader fails
		// it over once this lease has run out.
		return 0, fmt.Errorf("%w: %s has not started PostgreSQL within %s of its first permit", consensus.ErrRefused, member, startGrace(a.policy()))
	}
	a.lead.leaderMemory = a.lead.noteLease(member, epoch, time.Now())
	return a.timing().FenceTimeout, nil
}

// lock takes mu, or gives up when ctx ends: a renewal that waits behind a
// long decision must not hold up the fence loop that asked for it.
func (l *leader) lock(ctx context.Context) error {
	for !l.mu.TryLock() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the leader's decision in progress: %w", ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
	return nil
}

func (a *Agent) handleLease(w http.ResponseWriter, r *http.Request, body []byte) {
	var req leaseRequest
	if err := json.Unmarshal(body, &req); err != nil || req.Member == "" {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "body must be {\"member\", \"epoch\"}"})
		return
	}
	d, err := a.grantLease(r.Context(), req.Member, req.Epoch)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, leaseGrant{Message: "granted", Lease: d})
}

// priorLeaseBound bounds, on a node that has just become leader, when the
// leases that earlier leaders granted were renewed: each renewal started
// before its leader verified its leadership with a quorum, and every member
// of that quorum reports a later consensus.LeaderContact until this
// election (or its start, if it restarted; a vote in this election does not
// count, see consensus.LeaderContactBefore). Any quorum shares a member with
// it, so the latest contact that a quorum reports bounds every earlier
// renewal. That is about when the old leader was lost, where since (the
// election) is a heartbeat timeout and an election later: a primary lost
// with the leader on its host is failed over that much sooner.
//
// The others are asked at once and the answer is taken when a quorum,
// this node included, has reported; without one in a quarter of the lease,
// since. Reports are durations ("that long ago"), turned into this node's
// clock at receipt: the contact was no later than that.
func (a *Agent) priorLeaseBound(ctx context.Context, term uint64, since time.Time) time.Time {
	servers, err := a.node.Servers()
	if err != nil {
		return since
	}
	st := a.node.State()
	ctx, cancel := context.WithTimeout(ctx, a.leaseRoundTrip())
	defer cancel()
	// Only voters: the old leader's quorum was one of voters, and only a
	// quorum of voters is sure to share a member with it.
	servers = slices.DeleteFunc(servers, func(s consensus.Server) bool { return s.NonVoter })
	reports := make(chan time.Time, len(servers))
	asked := 0
	for _, s := range servers {
		m, ok := st.Members[s.ID]
		if s.ID == a.cfg.Name || !ok || m.APIURL == "" {
			continue
		}
		asked++
		go func() {
			var info raftInfo
			if getJSON(ctx, a.http, fmt.Sprintf("%s/internal/raft?term=%d", m.APIURL, term), &info) != nil || info.Name != s.ID || info.LeaderContactAgo < 0 {
				reports <- time.Time{}
				return
			}
			reports <- time.Now().Add(-info.LeaderContactAgo)
		}()
	}
	return contactBound(since, a.node.PriorLeaderContact(), len(servers), asked, reports, ctx.Done())
}

// contactBound takes the asked members' reports (a zero time: no answer)
// until, with own, a quorum of the voters have reported, and returns the
// latest; since if no quorum reports before done. Never later than since.
func contactBound(since, own time.Time, voters, asked int, reports <-chan time.Time, done <-chan struct{}) time.Time {
	quorum := voters/2 + 1
	latest, reported := own, 1
	for ; reported < quorum && asked > 0; asked-- {
		select {
		case r := <-reports:
			if r.IsZero() {
				continue
			}
			reported++
			if r.After(latest) {
				latest = r
			}
		case <-done:
			return since
		}
	}
	if reported < quorum || latest.After(since) {
		return since
	}
	return latest
}

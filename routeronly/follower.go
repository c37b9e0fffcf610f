package routeronly

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/router"
)

// confirmation is the last leader-verified topology and when the request
// that got it was sent. The router may route by it until sent plus the
// fence timeout the leader stated — the request's send time, not the
// answer's arrival, because the leader verified its leadership somewhere
// between the two; counting from the send never lets the router believe
// a state longer than the fence timeout after it was last known true.
type confirmation struct {
	topo agent.RouterTopology
	sent time.Time // local monotonic clock
}

// validUntil is when the confirmation expires; zero for none yet.
func (c confirmation) validUntil() time.Time {
	if c.sent.IsZero() {
		return time.Time{}
	}
	return c.sent.Add(c.topo.FenceTimeout)
}

// backendsAt is what the router routes by at now: the leader's backends,
// each valid until the confirmation expires (router.Backend.ValidUntil,
// which the router checks against its clock when it chooses a backend).
// Once expired, they are also marked unhealthy, so the router closes its
// connections to them, transactions in flight included: a session bound
// to a server connection (session pooling) then stops too.
//
// Every backend expires alike, standbys too: the router no longer knows
// whether a standby still replays the primary's WAL, just as the leader
// stops reading from a standby whose agent was silent for the fence
// timeout (agent.backendsOf).
func (c confirmation) backendsAt(now time.Time) []router.Backend {
	until := c.validUntil()
	bs := slices.Clone(c.topo.Backends)
	for i := range bs {
		bs[i].ValidUntil = until
		if until.IsZero() || !now.Before(until) {
			bs[i].Healthy = false
		}
	}
	return bs
}

// Follower keeps a router.BackendSet current from the agents' long poll.
// Two goroutines, both started by Run: the poll goroutine owns next and
// sends its answers to Run over a channel; Run owns last, fenced and
// problem and is the only one to publish to set.
type Follower struct {
	agents []string // base URLs
	next   int      // the agent poll asks first (poll's)
	client *http.Client
	set    *router.BackendSet
	log    *slog.Logger
	// settings is called from Run with each new cluster-wide configuration
	// (its version changed), before the backends are published.
	settings func(agent.RouterTopology)
	// turned, if set, is called each time Run's loop turns (liveness).
	turned func()

	last    confirmation
	fenced  bool // the last publish found the confirmation expired
	problem string
}

// idleTurn is the longest Run waits for nothing (for Alive).
const idleTurn = time.Second

// answer is one poll's outcome.
type answer struct {
	topo agent.RouterTopology
	sent time.Time
	from string
}

// minWait and maxWait bound the long poll's wait: short enough that a
// confirmation is renewed several times within a fence timeout when
// nothing changes, long enough not to busy the leader.
const (
	minWait = 100 * time.Millisecond
	maxWait = 5 * time.Second
)

// pollWait is how long one long poll may wait for a change: a quarter of
// the fence timeout, so three of four answers may be lost before the
// router fences.
func pollWait(fence time.Duration) time.Duration {
	if fence <= 0 {
		return time.Second // before the first answer
	}
	return min(max(fence/4, minWait), maxWait)
}

// NewFollower follows the agents at the given base URLs with client (its
// TLS and token already set) into set.
func NewFollower(agents []string, client *http.Client, set *router.BackendSet, settings func(agent.RouterTopology), log *slog.Logger) *Follower {
	return &Follower{agents: agents, client: client, set: set, settings: settings, log: log}
}

// Run follows until ctx ends.
func (f *Follower) Run(ctx context.Context) {
	answers := make(chan answer)
	go f.poll(ctx, answers)
	expiry := time.NewTimer(idleTurn)
	defer expiry.Stop()
	for {
		if f.turned != nil {
			f.turned()
		}
		select {
		case <-ctx.Done():
			return
		case a := <-answers:
			f.accept(a)
		case <-expiry.C:
		}
		f.publish(time.Now())
		if until := f.last.validUntil(); !until.IsZero() && time.Now().Before(until) {
			expiry.Reset(min(time.Until(until), idleTurn))
		} else {
			expiry.Reset(idleTurn) // expired: only an answer changes anything
		}
	}
}

// accept takes a poll's answer as the new confirmation, unless it names
// an older epoch than one already followed (a router, like an agent,
// never follows an older epoch) or is malformed.
func (f *Follower) accept(a answer) {
	t := a.topo
	switch {
	case t.FenceTimeout <= 0:
		f.complain(fmt.Sprintf("%s answered without a fence timeout; ignored", a.from))
		return
	case t.Epoch < f.last.topo.Epoch:
		f.complain(fmt.Sprintf("%s answered epoch %d, older than the %d already followed; ignored", a.from, t.Epoch, f.last.topo.Epoch))
		return
	}
	if f.last.sent.IsZero() || t.ConfigVersion != f.last.topo.ConfigVersion {
		f.settings(t)
	}
	if t.Primary != f.last.topo.Primary || t.Epoch != f.last.topo.Epoch {
		f.log.Info("following the cluster", "primary", t.Primary, "epoch", t.Epoch, "leader", t.Leader, "via", a.from, "fence_timeout", t.FenceTimeout)
	}
	f.last = confirmation{topo: t, sent: a.sent}
}

// publish hands the router the backends as of now and says once when the
// router fences itself and when it recovers.
func (f *Follower) publish(now time.Time) {
	bs := f.last.backendsAt(now)
	if !slices.Equal(bs, f.set.Backends()) {
		f.set.Set(bs...)
	}
	fenced := f.last.sent.IsZero() || !now.Before(f.last.validUntil())
	if fenced && !f.fenced && !f.last.sent.IsZero() {
		f.log.Error("router fenced: no leader-verified topology within the fence timeout; refusing writes and reads until an agent answers",
			"last_confirmed", f.last.sent.Format(time.RFC3339Nano), "fence_timeout", f.last.topo.FenceTimeout, "problem", f.problem)
	}
	if !fenced && f.fenced {
		f.log.Info("router confirmed the primary again", "primary", f.last.topo.Primary, "epoch", f.last.topo.Epoch)
	}
	f.fenced = fenced
}

func (f *Follower) complain(msg string) {
	if msg != f.problem {
		f.log.Warn("topology", "problem", msg)
	}
	f.problem = msg
}

// poll asks the agents, one at a time, starting with the one that
// answered last; on an error it moves to the next at once, and after a
// round in which none answered it waits retryPause. It sends every answer
// to Run.
func (f *Follower) poll(ctx context.Context, answers chan<- answer) {
	var version string
	var fence time.Duration // the last answer's: the next wait follows it
	failed := 0
	for ctx.Err() == nil {
		base := f.agents[f.next]
		sent := time.Now()
		t, err := f.ask(ctx, base, version, pollWait(fence), fence)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failed++
			f.next = (f.next + 1) % len(f.agents)
			if failed%len(f.agents) == 0 {
				if failed == len(f.agents) { // once per outage
					f.log.Warn("no agent answered the topology poll; trying again", "last_error", err.Error(), "agents", len(f.agents))
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(retryPause):
				}
			}
			continue
		}
		if failed >= len(f.agents) {
			f.log.Info("an agent answers the topology poll again", "agent", base)
		}
		failed = 0
		version, fence = t.Version, t.FenceTimeout
		select {
		case answers <- answer{topo: t, sent: sent, from: base}:
		case <-ctx.Done():
			return
		}
	}
}

// retryPause: after every agent failed once, how long before the next
// round (a router cut off keeps trying without spinning).
const retryPause = 200 * time.Millisecond

// ask makes one long poll. Its timeout is the wait plus half a fence
// timeout: an agent that hangs must not keep the router from asking
// another one before its confirmation runs out.
func (f *Follower) ask(ctx context.Context, base, version string, wait, fence time.Duration) (agent.RouterTopology, error) {
	var t agent.RouterTopology
	if fence <= 0 {
		fence = 2 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, wait+fence/2+500*time.Millisecond)
	defer cancel()
	q := url.Values{"wait": {wait.String()}}
	if version != "" {
		q.Set("version", version)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/router/topology?"+q.Encode(), nil)
	if err != nil {
		return t, err
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return t, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return t, fmt.Errorf("%s: %w", base, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal(body, &e)
		return t, fmt.Errorf("%s: %s: %s", base, resp.Status, e.Error)
	}
	if err := json.Unmarshal(body, &t); err != nil {
		return t, fmt.Errorf("%s: the answer is not a topology: %w", base, err)
	}
	if t.Backends == nil {
		return t, errors.New(base + ": the answer has no backends")
	}
	return t, nil
}

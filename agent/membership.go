package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/pgha/pgha/consensus"
)

// bootstrapIfNew applies the bootstrap rule. A cluster bootstraps exactly once:
//
//  1. A node with Raft state on disk never bootstraps: it was part of a cluster.
//  2. A node that is not one of cluster.members never bootstraps: it joins
//     through a member (the register loop asks the leader to add it).
//  3. An initial member with no state first asks the other initial members;
//     if any of them has Raft state, the cluster exists and this node waits to
//     be replicated to (it is in the cluster's configuration already).
//  4. Otherwise it bootstraps with the full cluster.members list. Every initial
//     member does so with the identical list, which hashicorp/raft makes safe.
//
// So a second bootstrap of a running cluster would need every reachable member
// to have lost its Raft state: a wiped node rejoins instead of forking.
func (a *Agent) bootstrapIfNew(ctx context.Context) error {
	if a.node.HasState() {
		return nil
	}
	if !a.cfg.InitialMember() {
		a.log.Info("new node: will join the cluster through an existing member", "join", a.cfg.Cluster.Join)
		return nil
	}
	for _, m := range a.cfg.Cluster.Members {
		if m.Name == a.cfg.Name {
			continue
		}
		var info raftInfo
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := getJSON(cctx, a.http, m.API+"/internal/raft", &info)
		cancel()
		if err == nil && info.HasState {
			a.log.Info("the cluster already exists: waiting to be replicated to, not bootstrapping", "peer", m.Name)
			return nil
		}
	}
	var servers []consensus.Server
	for _, m := range a.cfg.Cluster.Members {
		servers = append(servers, consensus.Server{ID: m.Name, Addr: m.Raft})
	}
	if err := a.node.Bootstrap(servers); err != nil && !errors.Is(err, consensus.ErrAlreadyBootstrapped) {
		return fmt.Errorf("bootstrap raft: %w", err)
	}
	a.log.Info("bootstrapped the Raft cluster", "members", len(servers))
	return nil
}

// raftInfo is the body of GET /internal/raft.
type raftInfo struct {
	Name     string   `json:"name"`
	HasState bool     `json:"has_state"`
	State    string   `json:"state"`
	Leader   string   `json:"leader"`
	Voters   []string `json:"voters"`
	// NonVoters are the members that receive the log without a vote.
	NonVoters []string `json:"nonvoters,omitempty"`
	// CommitIndex is the Raft commit index as this node knows it; a
	// follower compares the leader's with what it has applied.
	CommitIndex uint64 `json:"commit_index"`
	// LeaderContactAgo is how long ago this node last took part in a
	// leader's verification of its leadership (consensus.LeaderContact),
	// in nanoseconds; with ?term=, before it was asked to vote in that
	// term (LeaderContactBefore): what a new leader asks for
	// (priorLeaseBound).
	LeaderContactAgo time.Duration `json:"leader_contact_ago_ns"`
}

// selfMember is this node's record as it should be in the committed state.
func (a *Agent) selfMember() consensus.Member {
	return consensus.Member{
		Name:          a.cfg.Name,
		RaftAddr:      a.cfg.Raft.Advertise,
		APIURL:        a.cfg.API.Advertise,
		PGHost:        a.cfg.Postgres.Host,
		PGPort:        a.cfg.Postgres.Port,
		NoFailover:    a.cfg.Tags.NoFailover || !a.cfg.Voter() && !a.cfg.Tags.Candidate,
		Priority:      a.cfg.Tags.Priority,
		NoSync:        a.cfg.Tags.NoSync,
		NoLoadBalance: a.cfg.Tags.NoLoadBalance,
		CloneFrom:     a.cfg.Tags.CloneFrom,
		NonVoter:      !a.cfg.Voter(),
	}
}

// registerLoop makes sure this node is in Raft as it asks (a voter or a
// non-voter, cluster.voter) and its member record is current, asking the
// leader (through any member) until both are true.
func (a *Agent) registerLoop(ctx context.Context) {
	want := a.selfMember()
	lastErr := ""
	for {
		if a.node.RaftState() == "shutdown" || a.removed.Load() {
			return // removed from the cluster: never ask to come back on our own
		}
		if a.node.HasState() && time.Since(a.node.LastContact()) > 5*time.Second {
			a.checkRemoved(ctx) // a removed node hears nothing more from the leader
		}
		st := a.node.State()
		// The committed record shows the operator's run-time tags over the
		// file's (pgha-agent tag): compare like with like.
		if cur, ok := st.Members[want.Name]; ok && cur == st.TagOverrides[want.Name].Apply(want) {
			lastErr = ""
		} else if err := a.requestJoin(ctx, want); err != nil {
			if err.Error() != lastErr {
				a.log.Warn("join the cluster: will retry", "err", err)
				lastErr = err.Error()
			}
		} else {
			a.log.Info("registered with the cluster", "api", want.APIURL, "pg", fmt.Sprintf("%s:%d", want.PGHost, want.PGPort))
		}
		select {
		case <-ctx.Done():
			return
		case <-a.removalHint:
			a.checkRemoved(ctx)
		case <-time.After(time.Second):
		}
	}
}

// requestJoin asks the leader to add m: locally if this node leads, else
// through the leader's API (known from Raft), else through the join list.
func (a *Agent) requestJoin(ctx context.Context, m consensus.Member) error {
	if a.node.IsLeader() {
		return a.join(ctx, m)
	}
	var targets []string
	if u, err := a.leaderAPI(); err == nil {
		targets = append(targets, u)
	}
	targets = append(targets, a.cfg.Cluster.Join...)
	body, _ := json.Marshal(m)
	var errs []error
	for _, t := range targets {
		if err := postJSON(ctx, a.http, t+"/internal/join", body, nil); err != nil {
			errs = append(errs, err)
			continue
		}
		return nil
	}
	if len(errs) == 0 {
		return errors.New("no leader known and cluster.join is empty")
	}
	return errors.Join(errs...)
}

// join runs on the leader: add m to Raft as it asks, a voter or a
// non-voter (if it is not one at that address already), and commit its
// member record. A non-voter asking to vote is promoted; a voter is never
// demoted this way (taking a vote away from a running cluster is the
// operator's call: remove the member, and it joins again as a non-voter).
func (a *Agent) join(ctx context.Context, m consensus.Member) error {
	servers, err := a.node.Servers()
	if err != nil {
		return fmt.Errorf("read raft configuration: %w", err)
	}
	var cur *consensus.Server
	for _, s := range servers {
		if s.ID == m.Name {
			cur = &s
		}
	}
	switch {
	case cur != nil && m.NonVoter && !cur.NonVoter:
		return fmt.Errorf("%s asks to join as a non-voter (cluster.voter: false) but votes in Raft: remove it first (pgha-agent remove %s), then restart its agent", m.Name, m.Name)
	case cur != nil && cur.Addr == m.RaftAddr && cur.NonVoter == m.NonVoter:
		// in Raft as asked
	case m.NonVoter:
		a.log.Info("adding raft non-voter", "member", m.Name, "raft", m.RaftAddr, "reason", "join request")
		if err := a.node.AddNonvoter(ctx, m.Name, m.RaftAddr); err != nil {
			return err
		}
	default:
		a.log.Info("adding raft voter", "member", m.Name, "raft", m.RaftAddr, "reason", "join request")
		if err := a.node.AddVoter(ctx, m.Name, m.RaftAddr); err != nil {
			return fmt.Errorf("add voter %s: %w", m.Name, err)
		}
	}
	if cur, ok := a.node.State().Members[m.Name]; ok && cur == m {
		return nil
	}
	if err := a.node.Apply(ctx, consensus.UpsertMember(m)); err != nil {
		return fmt.Errorf("record member %s: %w", m.Name, err)
	}
	return nil
}

// minVoters is the fewest voters an operator may leave by taking a vote
// away: three survive the loss of one.
const minVoters = 3

// setSuffrage runs on the leader: give a registered member a vote, or take
// its vote away (pgha-agent add NODE [--nonvoter]). Raft changes the
// configuration in place, with no restart of anything. Its member record
// keeps what its own file asks (it decides promotion: a former non-voter
// stays unpromotable until tagged), so its registration never undoes this.
func (a *Agent) setSuffrage(ctx context.Context, name string, voter bool) (string, error) {
	m, ok := a.node.State().Members[name]
	if !ok {
		return "", fmt.Errorf("no member named %q (a new node joins by starting its agent)", name)
	}
	servers, err := a.node.Servers()
	if err != nil {
		return "", err
	}
	var cur *consensus.Server
	voters := 0
	for _, s := range servers {
		if s.ID == name {
			cur = &s
		}
		if !s.NonVoter {
			voters++
		}
	}
	switch {
	case cur == nil:
		return "", fmt.Errorf("%s is not in the Raft configuration yet: wait for its agent to register", name)
	case voter && !cur.NonVoter, !voter && cur.NonVoter:
		return fmt.Sprintf("%s is already a %s; %d voters", name, suffrageName(voter), voters), nil
	case voter:
		a.log.Info("giving a member a vote", "member", name, "reason", "operator request")
		if err := a.node.AddVoter(ctx, name, m.RaftAddr); err != nil {
			return "", err
		}
		voters++
	default:
		if voters-1 < minVoters {
			return "", fmt.Errorf("%w: taking %s's vote would leave %d voters; a cluster needs %d to survive the loss of one", consensus.ErrRefused, name, voters-1, minVoters)
		}
		a.log.Info("taking a member's vote", "member", name, "reason", "operator request")
		if err := a.node.DemoteVoter(ctx, name); err != nil {
			return "", err
		}
		voters--
	}
	return fmt.Sprintf("%s is a %s; %d voters, a quorum is %d", name, suffrageName(voter), voters, voters/2+1), nil
}

func suffrageName(voter bool) string {
	if voter {
		return "voter"
	}
	return "non-voter"
}

// remove runs on the leader: take away the member's Raft vote first, then
// its record (which makes the primary drop its slot). In that order the
// removed node never sees its own record disappear, so it cannot race to
// register again; its Raft shuts down when the configuration change reaches it.
func (a *Agent) remove(ctx context.Context, name string) error {
	servers, err := a.node.Servers()
	if err != nil {
		return err
	}
	for _, s := range servers {
		if s.ID == name {
			a.log.Info("removing raft voter", "member", name, "reason", "remove request")
			if err := a.node.RemoveServer(ctx, name); err != nil {
				return fmt.Errorf("remove voter %s: %w", name, err)
			}
		}
	}
	if m, ok := a.node.State().Members[name]; ok {
		go a.notifyRemoved(m.APIURL)
	}
	if name == a.cfg.Name {
		// This node was the leader and has stepped down: the new leader
		// finds a record without a voter and the operator can retry.
		return nil
	}
	if err := a.node.Apply(ctx, consensus.RemoveMember(name)); err != nil {
		return fmt.Errorf("remove member %s: %w", name, err)
	}
	return nil
}

// leaderAPI is the REST base URL of the current Raft leader.
func (a *Agent) leaderAPI() (string, error) {
	id, _ := a.node.Leader()
	if id == "" {
		return "", errors.New("no Raft leader right now")
	}
	if m, ok := a.node.State().Members[id]; ok && m.APIURL != "" {
		return m.APIURL, nil
	}
	for _, m := range a.cfg.Cluster.Members {
		if m.Name == id {
			return m.API, nil
		}
	}
	return "", fmt.Errorf("leader %s has no known API address yet", id)
}

// postJSON POSTs body and decodes a JSON answer into out (if not nil).
// Non-2xx answers become errors carrying the server's message.
func postJSON(ctx context.Context, c *http.Client, url string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		var e apiError
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s: %s", url, e.Error)
		}
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// notifyRemoved tells a removed member's agent, best effort, so it stops now
// rather than when it notices the leader's silence.
func (a *Agent) notifyRemoved(apiURL string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = postJSON(ctx, a.http, apiURL+"/internal/removed", nil, nil)
}

// checkRemoved asks the other members whether this node is still a voter.
// Raft does not tell a removed follower (the leader stops replicating to it
// before it could learn of its removal), so the agent asks; only an answer
// from the current leader counts.
func (a *Agent) checkRemoved(ctx context.Context) {
	urls := append([]string{}, a.cfg.Cluster.Join...)
	for name, m := range a.node.State().Members {
		if name != a.cfg.Name {
			urls = append(urls, m.APIURL)
		}
	}
	for _, u := range urls {
		var info raftInfo
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := getJSON(cctx, a.http, u+"/internal/raft", &info)
		cancel()
		if err != nil || info.State != "leader" {
			continue
		}
		if slices.Contains(info.Voters, a.cfg.Name) || slices.Contains(info.NonVoters, a.cfg.Name) {
			return
		}
		a.log.Warn("this node is no longer in the Raft configuration", "leader", info.Leader)
		a.removed.Store(true)
		return
	}
}

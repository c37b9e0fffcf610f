package agent

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/pgha/pgha/consensus"
)

// The initial members vote; a node added later joins as a non-voter
// unless it asks to vote; a non-voter is nofailover unless tagged
// candidate (so it is never in the synchronous set either).
func TestVoterDefaultsAndCandidateTag(t *testing.T) {
	a := unstartedAgent(t, t.TempDir(), "node1")
	if !a.cfg.Voter() {
		t.Fatal("an initial member does not vote by default")
	}
	if m := a.selfMember(); m.NonVoter || m.NoFailover {
		t.Fatalf("initial member's record: nonvoter %v nofailover %v", m.NonVoter, m.NoFailover)
	}
	a.cfg.Name = "node4" // not in cluster.members: a node added later
	if a.cfg.Voter() {
		t.Fatal("a node added later votes by default")
	}
	if m := a.selfMember(); !m.NonVoter || !m.NoFailover || m.SyncEligible() {
		t.Fatalf("non-voter's record: nonvoter %v nofailover %v sync-eligible %v", m.NonVoter, m.NoFailover, m.SyncEligible())
	}
	a.cfg.Tags.Candidate = true
	if m := a.selfMember(); !m.NonVoter || m.NoFailover || !m.SyncEligible() {
		t.Fatalf("candidate non-voter's record: nonvoter %v nofailover %v sync-eligible %v", m.NonVoter, m.NoFailover, m.SyncEligible())
	}
	yes := true
	a.cfg.Cluster.Voter, a.cfg.Tags.Candidate = &yes, false
	if m := a.selfMember(); m.NonVoter || m.NoFailover {
		t.Fatalf("added voter's record: nonvoter %v nofailover %v", m.NonVoter, m.NoFailover)
	}
}

// The leader adds a member as it asks: a non-voter joins Raft without a
// vote; a voter is never demoted by its own request (that would shrink the
// quorum behind the operator's back).
func TestJoinAsNonVoter(t *testing.T) {
	a, _ := restAgent(t)
	ctx := context.Background()
	m := consensus.Member{Name: "node4", RaftAddr: "127.0.0.1:1", APIURL: "http://127.0.0.1:1", PGHost: "127.0.0.1", PGPort: 5, NonVoter: true, NoFailover: true}
	if err := a.join(ctx, m); err != nil {
		t.Fatal(err)
	}
	servers, err := a.node.Servers()
	if err != nil {
		t.Fatal(err)
	}
	suffrage := map[string]bool{}
	for _, s := range servers {
		suffrage[s.ID] = s.NonVoter
	}
	if nv, ok := suffrage["node4"]; !ok || !nv || suffrage["node1"] {
		t.Fatalf("raft configuration after the join: %+v, want node4 a non-voter beside the voter node1", servers)
	}
	if got := a.node.State().Members["node4"]; got != m {
		t.Fatalf("member record %+v, want %+v", got, m)
	}
	// Again, as its register loop does: nothing changes.
	if err := a.join(ctx, m); err != nil {
		t.Fatal(err)
	}
	self := a.node.State().Members["node1"]
	self.NonVoter = true
	err = a.join(ctx, self)
	if err == nil || !strings.Contains(err.Error(), "remove it first") {
		t.Fatalf("a voter asking to be a non-voter: %v, want a refusal", err)
	}
	if v := a.node.State().Members["node1"]; v.NonVoter {
		t.Fatal("the refused request changed node1's record")
	}
	// /cluster and the voters command read the suffrage from Raft.
	for _, mv := range a.clusterView().Members {
		want := map[string]string{"node1": "voter", "node4": "nonvoter"}[mv.Name]
		if mv.RaftSuffrage != want {
			t.Errorf("%s: raft_suffrage %q, want %q", mv.Name, mv.RaftSuffrage, want)
		}
	}
}

// pgha-agent add NODE [--nonvoter] on the leader: what it refuses. (Giving
// a vote is TestNonVoters': a vote for an agent that answers.)
func TestSetSuffrageRefusals(t *testing.T) {
	a, _ := restAgent(t)
	ctx := context.Background()
	if _, err := a.setSuffrage(ctx, "node9", true); err == nil || !strings.Contains(err.Error(), "no member") {
		t.Fatalf("a vote for no member: %v", err)
	}
	m := consensus.Member{Name: "node4", RaftAddr: "127.0.0.1:1", APIURL: "http://127.0.0.1:1", PGHost: "127.0.0.1", PGPort: 5, NonVoter: true, NoFailover: true}
	if err := a.join(ctx, m); err != nil {
		t.Fatal(err)
	}
	if msg, err := a.setSuffrage(ctx, "node4", false); err != nil || !strings.Contains(msg, "already a non-voter") {
		t.Fatalf("taking a non-voter's vote: %q, %v", msg, err)
	}
	// The only voter: taking its vote would leave none.
	_, err := a.setSuffrage(ctx, "node1", false)
	if err == nil || !errors.Is(err, consensus.ErrRefused) || !strings.Contains(err.Error(), "would leave 0 voters") {
		t.Fatalf("taking the last voter's vote: %v", err)
	}
	servers, _ := a.node.Servers()
	for _, s := range servers {
		if s.ID == "node1" && s.NonVoter {
			t.Fatal("node1 lost its vote")
		}
	}
}

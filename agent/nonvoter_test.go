package agent

import (
	"context"
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

package consensus

import (
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// A follower applies an entry as soon as the leader's Apply returns, not at
// raft's next idle round: a member named the primary acts on the promotion
// only once its own copy of the state has it (Node.pushCommit). With a
// CommitTimeout far longer than the wait below, only the push can tell the
// follower in time.
func TestApplyPushesCommitToFollowers(t *testing.T) {
	if testing.Short() {
		t.Skip("real raft over TCP")
	}
	const commitTimeout = 20 * time.Second
	base := t.TempDir()
	var nodes []*Node
	var servers []Server
	for _, id := range []string{"n1", "n2"} {
		cfg := testConfig(id, filepath.Join(base, id), "127.0.0.1:0")
		cfg.CommitTimeout = commitTimeout
		n, err := Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		nodes = append(nodes, n)
		servers = append(servers, Server{ID: id, Addr: n.Addr()})
	}
	for _, n := range nodes {
		if err := n.Bootstrap(servers); err != nil && !errors.Is(err, ErrAlreadyBootstrapped) {
			t.Fatal(err)
		}
	}
	leader := waitLeader(t, nodes...)
	follower := others(nodes, leader)[0]

	for i, name := range []string{"a", "b", "c"} {
		mustApply(t, leader, UpsertMember(Member{Name: name, RaftAddr: "127.0.0.1:1", APIURL: "http://127.0.0.1:1", PGHost: "127.0.0.1", PGPort: 5432 + i}))
		applied := time.Now()
		deadline := applied.Add(commitTimeout / 4)
		for _, ok := follower.State().Members[name]; !ok; _, ok = follower.State().Members[name] {
			if time.Now().After(deadline) {
				t.Fatalf("the follower had not applied entry %d %s after the leader's Apply returned (CommitTimeout %s): the commit was not pushed", i+1, time.Since(applied).Round(time.Millisecond), commitTimeout)
			}
			time.Sleep(time.Millisecond)
		}
		t.Logf("entry %d applied on the follower %s after the leader's Apply returned", i+1, time.Since(applied).Round(100*time.Microsecond))
	}
}

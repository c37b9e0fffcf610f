package consensus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// Timeouts for tests: short enough for fast elections, long enough not to
// flap on a loaded machine. Lease < election, as Validate requires.
const (
	testHeartbeat = 300 * time.Millisecond
	testLease     = 150 * time.Millisecond
	waitTimeout   = 15 * time.Second
)

// waitFor polls cond until it returns nil or timeout passes, then fails the
// test with cond's last error.
func waitFor(t *testing.T, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func testConfig(id, dir, bind string) Config {
	return Config{
		ID:                 id,
		BindAddr:           bind,
		Dir:                dir,
		Logger:             testLogger(),
		HeartbeatTimeout:   testHeartbeat,
		ElectionTimeout:    testHeartbeat,
		LeaderLeaseTimeout: testLease,
		CommitTimeout:      5 * time.Millisecond,
	}
}

// openNode opens a node; bind "127.0.0.1:0" picks a free port. The node is
// closed at cleanup (Close is idempotent, so tests may close it earlier).
func openNode(t *testing.T, id, dir, bind string) *Node {
	t.Helper()
	n, err := Open(testConfig(id, dir, bind))
	if err != nil {
		t.Fatalf("open %s: %v", id, err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close %s: %v", id, err)
		}
	})
	return n
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// waitLeader waits until exactly one of nodes leads and all of them know it.
func waitLeader(t *testing.T, nodes ...*Node) *Node {
	t.Helper()
	var leader *Node
	waitFor(t, waitTimeout, func() error {
		leader = nil
		for _, n := range nodes {
			if n.IsLeader() {
				if leader != nil {
					return fmt.Errorf("two leaders: %s and %s", leader.ID(), n.ID())
				}
				leader = n
			}
		}
		if leader == nil {
			return errors.New("no leader")
		}
		for _, n := range nodes {
			if id, addr := n.Leader(); id != leader.ID() || addr != leader.Addr() {
				return fmt.Errorf("%s thinks the leader is %q at %q, want %s", n.ID(), id, addr, leader.ID())
			}
		}
		return nil
	})
	return leader
}

// waitSameState waits until every node's State equals want.
func waitSameState(t *testing.T, want State, nodes ...*Node) {
	t.Helper()
	waitFor(t, waitTimeout, func() error {
		for _, n := range nodes {
			if got := n.State(); !reflect.DeepEqual(got, want) {
				return fmt.Errorf("%s state:\n got %+v\nwant %+v", n.ID(), got, want)
			}
		}
		return nil
	})
}

func mustApply(t *testing.T, n *Node, cs ...Command) {
	t.Helper()
	for _, c := range cs {
		if err := n.Apply(ctxT(t), c); err != nil {
			t.Fatalf("apply %s on %s: %v", c.Type, n.ID(), err)
		}
	}
}

func serverIDs(t *testing.T, n *Node) []string {
	t.Helper()
	srv, err := n.Servers()
	if err != nil {
		t.Fatalf("servers on %s: %v", n.ID(), err)
	}
	var ids []string
	for _, s := range srv {
		ids = append(ids, s.ID)
	}
	slices.Sort(ids)
	return ids
}

func others(all []*Node, n *Node) []*Node {
	return slices.DeleteFunc(slices.Clone(all), func(m *Node) bool { return m == n })
}

func TestThreeNodeCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("real raft over TCP")
	}
	base := t.TempDir()
	var nodes []*Node
	var servers []Server
	for _, id := range []string{"n1", "n2", "n3"} {
		n := openNode(t, id, filepath.Join(base, id), "127.0.0.1:0")
		if n.HasState() {
			t.Fatalf("%s: fresh node has state", id)
		}
		nodes = append(nodes, n)
		servers = append(servers, Server{ID: id, Addr: n.Addr()})
	}

	// Every initial member bootstraps with the identical list, in any order.
	for i, n := range nodes {
		list := slices.Clone(servers)
		if i%2 == 1 {
			slices.Reverse(list)
		}
		// A member a fast leader already reached has state: that is the
		// documented benign answer.
		if err := n.Bootstrap(list); err != nil && !errors.Is(err, ErrAlreadyBootstrapped) {
			t.Fatalf("bootstrap %s: %v", n.ID(), err)
		}
	}
	leader := waitLeader(t, nodes...)
	followers := others(nodes, leader)
	t.Logf("leader %s", leader.ID())

	if got := leader.RaftState(); got != "leader" {
		t.Errorf("leader RaftState = %q", got)
	}
	if got := followers[0].RaftState(); got != "follower" {
		t.Errorf("follower RaftState = %q", got)
	}
	if got := serverIDs(t, followers[0]); !reflect.DeepEqual(got, []string{"n1", "n2", "n3"}) {
		t.Errorf("servers = %v", got)
	}
	if s := leader.Stats(); s["state"] != "Leader" || s["num_peers"] != "2" {
		t.Errorf("stats state=%q num_peers=%q", s["state"], s["num_peers"])
	}

	// A node with state never bootstraps again.
	for _, n := range nodes {
		if !n.HasState() {
			t.Errorf("%s: HasState false after bootstrap", n.ID())
		}
		if err := n.Bootstrap(servers); !errors.Is(err, ErrAlreadyBootstrapped) {
			t.Errorf("second bootstrap on %s: err = %v, want ErrAlreadyBootstrapped", n.ID(), err)
		}
	}

	// Apply on the leader replicates to every follower.
	watch, unwatch := followers[0].Watch()
	defer unwatch()
	var cmds []Command
	for _, n := range nodes {
		cmds = append(cmds, UpsertMember(Member{Name: n.ID(), RaftAddr: n.Addr(), PGHost: "127.0.0.1", PGPort: 5432}))
	}
	cmds = append(cmds, InitCluster("c1", leader.ID()), SetSystemID(7301))
	mustApply(t, leader, cmds...)
	want := leader.State()
	if want.ClusterID != "c1" || want.Primary != leader.ID() || want.Epoch != 1 || len(want.Members) != 3 || want.SystemID != 7301 {
		t.Fatalf("leader state = %+v", want)
	}
	waitSameState(t, want, nodes...)
	select {
	case <-watch:
	case <-time.After(waitTimeout):
		t.Fatal("follower's Watch got no signal after replication")
	}
	if lc := followers[0].LastContact(); time.Since(lc) > 5*time.Second {
		t.Errorf("follower LastContact = %v", lc)
	}

	// The FSM's verdict comes back to the caller of Apply.
	if err := leader.Apply(ctxT(t), InitCluster("c2", leader.ID())); !errors.Is(err, ErrRefused) {
		t.Errorf("second InitCluster: err = %v, want ErrRefused", err)
	}
	if err := leader.Apply(ctxT(t), Promote(followers[0].ID(), 1)); !errors.Is(err, ErrRefused) {
		t.Errorf("stale Promote: err = %v, want ErrRefused", err)
	}
	if err := leader.Apply(ctxT(t), Command{Type: "frobnicate", Version: 1, Data: struct{}{}}); !errors.Is(err, ErrUnknownCommand) {
		t.Errorf("unknown command: err = %v, want ErrUnknownCommand", err)
	}

	// Apply on a follower: ErrNotLeader, naming the leader.
	for _, f := range followers {
		err := f.Apply(ctxT(t), SetPaused(true))
		if !errors.Is(err, ErrNotLeader) {
			t.Fatalf("apply on follower %s: err = %v, want ErrNotLeader", f.ID(), err)
		}
		if !strings.Contains(err.Error(), leader.Addr()) {
			t.Errorf("ErrNotLeader %q does not name the leader %s", err, leader.Addr())
		}
		if err := f.Barrier(ctxT(t)); !errors.Is(err, ErrNotLeader) {
			t.Errorf("barrier on follower: err = %v, want ErrNotLeader", err)
		}
		if err := f.AddVoter(ctxT(t), "x", "127.0.0.1:1"); !errors.Is(err, ErrNotLeader) {
			t.Errorf("add voter on follower: err = %v, want ErrNotLeader", err)
		}
	}

	// A cancelled context is honoured before anything is written.
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := leader.Apply(cancelled, SetPaused(true)); !errors.Is(err, context.Canceled) {
		t.Errorf("apply with cancelled ctx: err = %v", err)
	}

	// Close and reopen a follower: its state comes back from its own disk.
	f := followers[0]
	mustApply(t, leader, SetPaused(true))
	waitSameState(t, leader.State(), f)
	if err := f.Snapshot(); err != nil {
		t.Fatalf("snapshot on %s: %v", f.ID(), err)
	}
	atSnapshot := f.State()
	fID, fAddr, fDir := f.ID(), f.Addr(), filepath.Join(base, f.ID())
	if err := f.Close(); err != nil {
		t.Fatalf("close %s: %v", fID, err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
	if got := f.RaftState(); got != "shutdown" {
		t.Errorf("RaftState after close = %q", got)
	}
	mustApply(t, leader, SetPaused(false)) // committed by the two others while f is down

	f = openNode(t, fID, fDir, fAddr)
	if got := f.State(); !reflect.DeepEqual(got, atSnapshot) {
		t.Errorf("state right after reopen (from the snapshot):\n got %+v\nwant %+v", got, atSnapshot)
	}
	if !f.HasState() {
		t.Error("reopened node: HasState false")
	}
	if err := f.Bootstrap(servers); !errors.Is(err, ErrAlreadyBootstrapped) {
		t.Errorf("bootstrap of reopened node: err = %v, want ErrAlreadyBootstrapped", err)
	}
	nodes = []*Node{leader, followers[1], f}
	waitSameState(t, leader.State(), nodes...)

	// AddVoter: a fresh 4th node (never bootstrapped) receives the state.
	n4 := openNode(t, "n4", filepath.Join(base, "n4"), "127.0.0.1:0")
	if err := leader.AddVoter(ctxT(t), n4.ID(), n4.Addr()); err != nil {
		t.Fatalf("add voter: %v", err)
	}
	mustApply(t, leader, UpsertMember(Member{Name: "n4", RaftAddr: n4.Addr()}))
	waitSameState(t, leader.State(), n4)
	if got := serverIDs(t, leader); !reflect.DeepEqual(got, []string{"n1", "n2", "n3", "n4"}) {
		t.Errorf("servers after AddVoter = %v", got)
	}
	waitFor(t, waitTimeout, func() error {
		if id, _ := n4.Leader(); id != leader.ID() {
			return fmt.Errorf("n4 thinks the leader is %q", id)
		}
		return nil
	})

	// RemoveServer takes it out again.
	if err := leader.RemoveServer(ctxT(t), n4.ID()); err != nil {
		t.Fatalf("remove server: %v", err)
	}
	mustApply(t, leader, RemoveMember("n4"))
	for _, n := range nodes {
		waitFor(t, waitTimeout, func() error {
			if got := serverIDs(t, n); !reflect.DeepEqual(got, []string{"n1", "n2", "n3"}) {
				return fmt.Errorf("servers on %s = %v", n.ID(), got)
			}
			return nil
		})
	}
	if err := n4.Close(); err != nil {
		t.Errorf("close n4: %v", err)
	}

	// Leader Close: the remaining two elect a new leader, which serves.
	oldState := leader.State()
	if err := leader.Close(); err != nil {
		t.Fatalf("close leader: %v", err)
	}
	rest := others(nodes, leader)
	newLeader := waitLeader(t, rest...)
	t.Logf("new leader %s", newLeader.ID())
	if err := newLeader.Barrier(ctxT(t)); err != nil {
		t.Fatalf("barrier: %v", err)
	}
	if got := newLeader.State(); !reflect.DeepEqual(got, oldState) {
		t.Errorf("new leader lost state:\n got %+v\nwant %+v", got, oldState)
	}
	mustApply(t, newLeader, Promote(newLeader.ID(), oldState.Epoch+1))
	waitSameState(t, newLeader.State(), rest...)
	if s := newLeader.State(); s.Primary != newLeader.ID() || s.Epoch != 2 {
		t.Errorf("after promote: primary %q epoch %d", s.Primary, s.Epoch)
	}
}

// TestSingleNodeRestartFromDisk restarts a whole (one-node) cluster: with no
// peer to copy from, the state can only come from bolt and the snapshot.
func TestSingleNodeRestartFromDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("real raft over TCP")
	}
	dir := t.TempDir()
	n := openNode(t, "solo", dir, "127.0.0.1:0")
	leaderCh := n.LeaderCh()
	watch, unwatch := n.Watch()
	defer unwatch()
	if v := <-leaderCh; v {
		t.Fatal("LeaderCh primed with true before bootstrap")
	}
	if err := n.Bootstrap([]Server{{ID: "solo", Addr: n.Addr()}}); err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	select {
	case v := <-leaderCh:
		if !v {
			t.Fatal("LeaderCh: false, want true")
		}
	case <-time.After(waitTimeout):
		t.Fatal("LeaderCh: no signal on election")
	}
	if !n.IsLeader() {
		t.Fatal("LeaderCh said true but IsLeader is false")
	}
	waitFor(t, waitTimeout, func() error {
		select {
		case <-watch:
			if n.IsLeader() {
				return nil
			}
			return errors.New("Watch signalled but node is not leader")
		default:
			return errors.New("no Watch signal on gaining leadership")
		}
	})
	if v := <-n.LeaderCh(); !v {
		t.Error("a new LeaderCh is not primed with the current value")
	}

	mustApply(t, n, with(initialised, SetSystemID(42))...)
	if err := n.Snapshot(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	atSnapshot := n.State()
	mustApply(t, n, Promote("b", 2), SetSyncStandbys([]string{"c"}, 2)) // only in the bolt log
	want := n.State()
	addr := n.Addr()
	if err := n.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	select {
	case v := <-leaderCh:
		if v {
			t.Error("LeaderCh after Close: true, want false")
		}
	case <-time.After(waitTimeout):
		t.Error("LeaderCh: no signal on Close")
	}
	snaps, _ := filepath.Glob(filepath.Join(dir, "snapshots", "*", "state.bin"))
	if len(snaps) != 1 {
		t.Errorf("snapshots on disk: %v", snaps)
	}

	n = openNode(t, "solo", dir, addr)
	if got := n.State(); !reflect.DeepEqual(got, atSnapshot) {
		t.Errorf("state right after reopen:\n got %+v\nwant %+v (the snapshot)", got, atSnapshot)
	}
	if err := n.Bootstrap([]Server{{ID: "solo", Addr: addr}}); !errors.Is(err, ErrAlreadyBootstrapped) {
		t.Errorf("bootstrap after restart: err = %v, want ErrAlreadyBootstrapped", err)
	}
	waitLeader(t, n)
	if err := n.Barrier(ctxT(t)); err != nil {
		t.Fatalf("barrier: %v", err)
	}
	if got := n.State(); !reflect.DeepEqual(got, want) {
		t.Errorf("state after replay:\n got %+v\nwant %+v", got, want)
	}
}

func TestBootstrapRejectsBadLists(t *testing.T) {
	if testing.Short() {
		t.Skip("real raft over TCP")
	}
	n := openNode(t, "n1", t.TempDir(), "127.0.0.1:0")
	tests := []struct {
		name    string
		servers []Server
	}{
		{"empty", nil},
		{"without this node", []Server{{ID: "n2", Addr: "127.0.0.1:1"}}},
		{"this node at another address", []Server{{ID: "n1", Addr: "127.0.0.1:1"}}},
		{"missing address", []Server{{ID: "n1", Addr: n.Addr()}, {ID: "n2"}}},
		{"duplicate id", []Server{{ID: "n1", Addr: n.Addr()}, {ID: "n1", Addr: "127.0.0.1:1"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := n.Bootstrap(tt.servers); err == nil || errors.Is(err, ErrAlreadyBootstrapped) {
				t.Errorf("Bootstrap = %v, want a validation error", err)
			}
		})
	}
	if n.HasState() {
		t.Error("a rejected bootstrap left state behind")
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{ID: "n1", BindAddr: "127.0.0.1:0", Dir: "/tmp/x"}
	if err := ok.Validate(); err != nil {
		t.Fatalf("minimal config: %v", err)
	}
	tests := []struct {
		name, wantKey string
		mod           func(*Config)
	}{
		{"no id", "ID", func(c *Config) { c.ID = "" }},
		{"no bind", "BindAddr", func(c *Config) { c.BindAddr = "" }},
		{"no dir", "Dir", func(c *Config) { c.Dir = "" }},
		{"lease equals election", "LeaderLeaseTimeout", func(c *Config) {
			c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = time.Second, time.Second, time.Second
		}},
		{"election below heartbeat", "ElectionTimeout", func(c *Config) {
			c.HeartbeatTimeout, c.ElectionTimeout = 2*time.Second, time.Second
		}},
		{"negative", "timeouts", func(c *Config) { c.CommitTimeout = -1 }},
		{"bad log level", "RaftLogLevel", func(c *Config) { c.RaftLogLevel = "loud" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.mod(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.wantKey) {
				t.Errorf("Validate = %v, want an error naming %s", err, tt.wantKey)
			}
			if _, err := Open(c); err == nil {
				t.Error("Open accepted an invalid config")
			}
		})
	}
}

func TestOpenErrors(t *testing.T) {
	if testing.Short() {
		t.Skip("real raft over TCP")
	}
	dir := t.TempDir()
	n := openNode(t, "n1", dir, "127.0.0.1:0")

	// A second process on the same Dir fails on bolt's lock instead of hanging.
	if m, err := Open(testConfig("n1", dir, "127.0.0.1:0")); err == nil {
		m.Close()
		t.Error("second Open on the same Dir succeeded")
	}
	// The port is taken.
	if m, err := Open(testConfig("n2", t.TempDir(), n.Addr())); err == nil {
		m.Close()
		t.Error("Open on a taken port succeeded")
	}
	// 0.0.0.0 cannot be advertised.
	if m, err := Open(testConfig("n3", t.TempDir(), "0.0.0.0:0")); err == nil {
		m.Close()
		t.Error("Open advertising 0.0.0.0 succeeded")
	}
	// The failed Opens released what they opened: the first node still works.
	if err := n.Bootstrap([]Server{{ID: "n1", Addr: n.Addr()}}); err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	waitLeader(t, n)
}

// TestBootstrapWithHostName: the server list may name this node by host
// name while the transport advertises the resolved address.
func TestBootstrapWithHostName(t *testing.T) {
	if testing.Short() {
		t.Skip("real raft over TCP")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cfg := testConfig("n1", t.TempDir(), fmt.Sprintf("127.0.0.1:%d", port))
	cfg.AdvertiseAddr = fmt.Sprintf("localhost:%d", port)
	n, err := Open(cfg)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { n.Close() })
	if err := n.Bootstrap([]Server{{ID: "n1", Addr: cfg.AdvertiseAddr}}); err != nil {
		t.Fatalf("bootstrap naming this node %s (advertised %s): %v", cfg.AdvertiseAddr, n.Addr(), err)
	}
	waitLeader(t, n)
}

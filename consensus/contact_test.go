package consensus

import (
	"fmt"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// Every leadership verification is acknowledged by a quorum, and every
// member of it reports a LeaderContact no earlier than the verification
// until a later leader reaches it: the bound a new leader uses for the
// leases the old one granted (agent/lease.go). Checked here on real raft
// over TCP: the followers that acknowledged, and the deposed leader itself
// once it has stepped down, all report no earlier than the last verification.
func TestLeaderContactCoversVerifications(t *testing.T) {
	if testing.Short() {
		t.Skip("real raft over TCP")
	}
	nodes := bootstrappedThree(t)
	leader := waitLeader(t, nodes...)
	asked := time.Now() // a lease's renewal starts before the verification
	if err := leader.VerifyLeader(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	verified := time.Now()
	if lc := leader.LeaderContact(); lc.Before(verified) {
		t.Errorf("the leader reports contact %v before its own verification at %v", lc, verified)
	}
	if prior := leader.PriorLeaderContact(); !prior.Before(verified) {
		t.Errorf("the leader's contact before its election (%v) is after its verification (%v)", prior, verified)
	}

	// Cut the leader off: both followers stop. The verification above was
	// acknowledged by at least one of them after it was asked for, so the
	// latest of the two covers it.
	var latest time.Time
	for _, f := range others(nodes, leader) {
		if lc := f.LeaderContact(); lc.After(latest) {
			latest = lc
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if latest.Before(asked) {
		t.Errorf("the followers' latest contact %v is before the verification was asked for at %v", latest, asked)
	}
	waitFor(t, waitTimeout, func() error {
		if leader.IsLeader() {
			return fmt.Errorf("%s still leads", leader.ID())
		}
		return nil
	})
	stepped := leader.LeaderContact()
	if stepped.Before(verified) {
		t.Errorf("the deposed leader reports contact %v, before its last verification at %v", stepped, verified)
	}
	if time.Since(stepped) > waitTimeout {
		t.Errorf("the deposed leader reports contact %v, not its step-down", stepped)
	}
}

// When the leader is lost, the member that voted for the new one reports
// its contact from before the vote (raft counts the vote itself as
// contact): with the new leader's own, it still covers the old leader's
// last verification, and it lies before the old leader was lost, not at
// the election a heartbeat timeout later.
func TestLeaderContactBeforeTheVote(t *testing.T) {
	if testing.Short() {
		t.Skip("real raft over TCP")
	}
	nodes := bootstrappedThree(t)
	old := waitLeader(t, nodes...)
	asked := time.Now()
	if err := old.VerifyLeader(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	lost := time.Now()
	survivors := others(nodes, old)
	leader := waitLeader(t, survivors...)
	term := leader.Term()
	voter := others(survivors, leader)[0]

	before := voter.LeaderContactBefore(term)
	if own := leader.PriorLeaderContact(); own.After(before) {
		before = own
	}
	if before.Before(asked) {
		t.Errorf("the survivors report contact %v, before the old leader's verification was asked for at %v", before, asked)
	}
	// A heartbeat in flight when the old leader closed may land just
	// after; the election comes a heartbeat timeout later.
	if got := voter.LeaderContactBefore(term); got.After(lost.Add(testHeartbeat / 2)) {
		t.Errorf("%s reports contact %v before term %d, %v after the old leader was lost: the vote counted", voter.ID(), got, term, got.Sub(lost))
	}
	if got := voter.LeaderContact(); !got.After(lost) {
		t.Errorf("%s's contact %v is not after the new leader's election", voter.ID(), got)
	}
	if got := voter.LeaderContactBefore(term + 1); !got.After(lost) {
		t.Errorf("asked about a later term, %s reports %v, from before the election", voter.ID(), got)
	}
}

// bootstrappedThree opens n1, n2 and n3 on loopback and bootstraps them as
// one cluster from n1.
func bootstrappedThree(t *testing.T) []*Node {
	t.Helper()
	base := t.TempDir()
	var nodes []*Node
	var servers []Server
	for _, id := range []string{"n1", "n2", "n3"} {
		n := openNode(t, id, filepath.Join(base, id), "127.0.0.1:0")
		nodes = append(nodes, n)
		servers = append(servers, Server{ID: id, Addr: n.Addr()})
	}
	if err := nodes[0].Bootstrap(servers); err != nil {
		t.Fatal(err)
	}
	return nodes
}

// Raft counts towards a verification the acknowledgement of a request sent
// before it was asked for, if it arrives after. With every answer delayed
// on the wire (a slow link, not a lost one) there is nearly always such a
// request in flight; VerifyLeader must still return only once a quorum
// handled one sent after the call, or the followers' LeaderContact would
// not cover it. Fails with raft's VerifyLeader alone.
func TestVerifyLeaderWaitsForRequestsSentAfterIt(t *testing.T) {
	if testing.Short() {
		t.Skip("real raft over TCP")
	}
	const delay = 30 * time.Millisecond
	base := t.TempDir()
	var nodes []*Node
	var servers []Server
	for _, id := range []string{"n1", "n2", "n3"} {
		bind := freeLoopbackAddr(t)
		proxy := delayAnswers(t, bind, delay)
		cfg := testConfig(id, filepath.Join(base, id), bind)
		cfg.AdvertiseAddr = proxy
		n, err := Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Close() })
		nodes = append(nodes, n)
		servers = append(servers, Server{ID: id, Addr: proxy})
	}
	if err := nodes[0].Bootstrap(servers); err != nil {
		t.Fatal(err)
	}
	leader := waitLeader(t, nodes...)
	followers := others(nodes, leader)
	for i := range 20 {
		asked := time.Now()
		if err := leader.VerifyLeader(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		latest := followers[0].LeaderContact()
		if lc := followers[1].LeaderContact(); lc.After(latest) {
			latest = lc
		}
		if latest.Before(asked) {
			t.Fatalf("verification %d: the followers' latest contact is %v before it was asked for", i, asked.Sub(latest))
		}
		// Different phases against the heartbeats (pacing, not waiting
		// for anything).
		time.Sleep(time.Duration(i%4) * 7 * time.Millisecond)
	}
}

// freeLoopbackAddr returns a loopback address with a port free just now.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// delayAnswers listens on a new loopback port and forwards each connection
// to target; what target sends back arrives delay later, in order.
func delayAnswers(t *testing.T, target string, delay time.Duration) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			t.Cleanup(func() { _, _ = c.Close(), s.Close() })
			go func() { _, _ = io.Copy(s, c) }()
			go copyLate(c, s, delay)
		}
	}()
	return l.Addr().String()
}

// copyLate copies src to dst, each chunk delay after it was read.
func copyLate(dst io.Writer, src io.Reader, delay time.Duration) {
	type chunk struct {
		b  []byte
		at time.Time
	}
	chunks := make(chan chunk, 1024)
	go func() {
		defer close(chunks)
		for {
			b := make([]byte, 32<<10)
			n, err := src.Read(b)
			if n > 0 {
				chunks <- chunk{b[:n], time.Now().Add(delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range chunks {
		time.Sleep(time.Until(c.at))
		if _, err := dst.Write(c.b); err != nil {
			return
		}
	}
}

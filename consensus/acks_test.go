package consensus

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// A member that restarted leaves the transport's pooled connections to it
// dead; the next vote request must reach the new process, not fail on one
// of them (the candidate would lose the election round). Real transports
// over TCP; the voter is replaced by a new one on the same address.
func TestVoteRequestSurvivesARestartedMember(t *testing.T) {
	voter := func(addr string) *raft.NetworkTransport {
		tr, err := raft.NewTCPTransportWithConfig(addr, nil, &raft.NetworkTransportConfig{MaxPool: transportMaxPool, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for rpc := range tr.Consumer() {
				rpc.Respond(&raft.RequestVoteResponse{Granted: true}, nil)
			}
		}()
		return tr
	}
	first := voter("127.0.0.1:0")
	addr := first.LocalAddr()

	raw, err := raft.NewTCPTransportWithConfig("127.0.0.1:0", nil, &raft.NetworkTransportConfig{MaxPool: transportMaxPool, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	candidate := newAckTransport(raw)
	defer candidate.Close()
	ask := func() error {
		var resp raft.RequestVoteResponse
		err := candidate.RequestVote("voter", addr, &raft.RequestVoteRequest{Term: 1}, &resp)
		if err == nil && !resp.Granted {
			t.Fatal("vote not granted")
		}
		return err
	}
	// Pooled connections to the first process: several at once, as raft's
	// heartbeat, replication and vote goroutines use them.
	errs := make(chan error, transportMaxPool)
	for range transportMaxPool {
		go func() { errs <- ask() }()
	}
	for range transportMaxPool {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}

	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	second := voter(string(addr))
	defer second.Close()
	if err := ask(); err != nil {
		t.Fatalf("vote request to the restarted member: %v", err)
	}
}

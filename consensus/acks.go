package consensus

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
)

// ackTransport is raft's network transport that also records, for each
// peer, when the latest request it accepted from this node as leader was
// sent. VerifyLeader needs it: raft counts towards a verification any
// acknowledgement that arrives after it was asked for, including one of a
// heartbeat sent before, so the followers that acknowledged may have last
// heard from this leader before the verification began. A lease renewed on
// such a verification would start later than the contact the followers
// report to the next leader (agent/lease.go), which would then count that
// lease out too early. With the send times here, VerifyLeader waits until a
// quorum accepted a request sent after it was asked for: each of those
// followers sets its LeaderContact when it handles the request, so after
// the call began.
//
// Pipelined replication is off (MaxRPCsInFlight 1 in newTransport): its
// responses reach raft without passing through here. Every other request
// that acknowledges leadership (AppendEntries, a heartbeat, InstallSnapshot)
// does.
type ackTransport struct {
	*raft.NetworkTransport

	mu      sync.Mutex
	sent    map[raft.ServerID]time.Time // per peer: the latest accepted request's send time
	changed chan struct{}               // closed when sent changes, then replaced
}

func newAckTransport(t *raft.NetworkTransport) *ackTransport {
	return &ackTransport{NetworkTransport: t, sent: map[raft.ServerID]time.Time{}, changed: make(chan struct{})}
}

func (t *ackTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	sent := time.Now()
	err := t.NetworkTransport.AppendEntries(id, target, args, resp)
	if err == nil && resp.Success {
		t.accepted(id, sent)
	}
	return err
}

func (t *ackTransport) InstallSnapshot(id raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	sent := time.Now()
	err := t.NetworkTransport.InstallSnapshot(id, target, args, resp, data)
	if err == nil && resp.Success {
		t.accepted(id, sent)
	}
	return err
}

// AppendEntriesPipeline refuses, as the transport does with one request in
// flight; raft then replicates with AppendEntries. Repeated here so that
// nothing bypasses the record even if the transport's setting changes.
func (t *ackTransport) AppendEntriesPipeline(raft.ServerID, raft.ServerAddress) (raft.AppendPipeline, error) {
	return nil, raft.ErrPipelineReplicationNotSupported
}

func (t *ackTransport) accepted(id raft.ServerID, sent time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if sent.After(t.sent[id]) {
		t.sent[id] = sent
		close(t.changed)
		t.changed = make(chan struct{})
	}
}

// waitAccepted waits until at least need of peers have accepted a request
// sent at or after since.
func (t *ackTransport) waitAccepted(ctx context.Context, since time.Time, peers []raft.ServerID, need int) error {
	for {
		t.mu.Lock()
		n := 0
		for _, id := range peers {
			if !t.sent[id].Before(since) {
				n++
			}
		}
		changed := t.changed
		t.mu.Unlock()
		if n >= need {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// RequestVote and RequestPreVote try again when the connection broke under
// them. The transport pools connections, and a member that restarted left
// every pooled connection to it dead: the first vote request of an
// election went out on one, failed at once, and the candidate lost the
// round (an election timeout, 0.5-1 s, with the primary's host lost).
// A repeated vote request is harmless: a member grants one vote per term.
func (t *ackTransport) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	return retryBroken(func() error { return t.NetworkTransport.RequestVote(id, target, args, resp) })
}

func (t *ackTransport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	return retryBroken(func() error { return t.NetworkTransport.RequestPreVote(id, target, args, resp) })
}

// retryBroken runs rpc until it does not fail on a broken connection, at
// most once per pooled connection and once on a new one. A timeout is not
// retried: the member does not answer.
func retryBroken(rpc func() error) error {
	var err error
	for range transportMaxPool + 1 {
		if err = rpc(); err == nil || !brokenConn(err) {
			return err
		}
	}
	return err
}

// brokenConn reports whether err is a connection closed by the other side.
// The transport's decoder does not always wrap what it read, so the text
// is checked too.
func brokenConn(err error) bool {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	msg := err.Error()
	return strings.HasSuffix(msg, "EOF") || strings.Contains(msg, "connection reset by peer") || strings.Contains(msg, "broken pipe")
}

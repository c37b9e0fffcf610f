package consensus

import (
	"context"
	"io"
	"sync"
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

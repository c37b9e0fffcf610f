package consensus

import (
	"sync"

	"github.com/hashicorp/raft"
)

// closableStable is the Raft stable store (current term, vote) that
// survives a write racing its Close. hashicorp/raft answers heartbeats on
// the transport's goroutines (processHeartbeat), which check for shutdown
// only before they start: a heartbeat from a leader of a newer term that
// arrives as Node.Close runs may call SetUint64(CurrentTerm) after
// Shutdown returned and the bolt file was closed, and raft panics on that
// error ("failed to save current term: database not open",
// hashicorp/raft#717), killing the agent as it stops. Such a write is
// dropped: a stopped node that forgets a term it learned in its last
// instant is one that never got that heartbeat. Votes never take this path
// (they go through the stopped main loop), nor do log entries (LogStore).
type closableStable struct {
	raft.StableStore
	close func() error

	mu     sync.RWMutex
	closed bool
}

func (s *closableStable) Set(key, val []byte) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil
	}
	return s.StableStore.Set(key, val)
}

func (s *closableStable) SetUint64(key []byte, val uint64) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil
	}
	return s.StableStore.SetUint64(key, val)
}

// Close waits for writes in progress, then closes the store under them.
func (s *closableStable) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return s.close()
}

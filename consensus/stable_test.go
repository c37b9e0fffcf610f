package consensus

import (
	"path/filepath"
	"testing"

	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// A term written after Close (a heartbeat racing Node.Close,
// hashicorp/raft#717) is dropped instead of failing, since raft panics on
// that failure; before Close it is stored, and Close closes the file.
func TestStableStoreWriteAfterClose(t *testing.T) {
	bolt, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(t.TempDir(), "raft.db")})
	if err != nil {
		t.Fatal(err)
	}
	s := &closableStable{StableStore: bolt, close: bolt.Close}
	key := []byte("CurrentTerm")
	if err := s.SetUint64(key, 7); err != nil {
		t.Fatal(err)
	}
	if v, err := s.GetUint64(key); v != 7 || err != nil {
		t.Fatalf("GetUint64 = %d, %v; want 7", v, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := bolt.SetUint64(key, 8); err == nil {
		t.Fatal("the bolt store still takes writes after Close: Close did not close it")
	}
	if err := s.SetUint64(key, 8); err != nil {
		t.Errorf("SetUint64 after Close = %v; raft would panic on it", err)
	}
	if err := s.Set(key, []byte("x")); err != nil {
		t.Errorf("Set after Close = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

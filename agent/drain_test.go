package agent

import (
	"testing"
	"time"

	"github.com/pgha/pgha/router"
)

// A drain is a lease: an agent that died in the middle of its restart
// does not keep its standby out of the reads after the lease, and a
// primary is never marked draining (its pools would refuse every write).
func TestDrainIsALease(t *testing.T) {
	now := time.Now()
	f := &front{drained: map[string]time.Time{
		"node1": now.Add(time.Minute), // the primary by now
		"node2": now.Add(-time.Second),
		"node3": now.Add(time.Minute),
	}}
	bs := f.markDrainingLocked([]router.Backend{
		{Name: "node1", Primary: true, Healthy: true},
		{Name: "node2", Healthy: true},
		{Name: "node3", Healthy: true},
	}, now)
	if bs[0].Draining {
		t.Error("the primary is marked draining")
	}
	if bs[1].Draining {
		t.Error("node2 is draining after its lease ended")
	}
	if _, ok := f.drained["node2"]; ok {
		t.Error("node2's ended drain is still recorded")
	}
	if !bs[2].Draining {
		t.Error("node3 is not draining within its lease")
	}
}

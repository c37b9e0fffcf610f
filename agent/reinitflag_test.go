package agent

import (
	"context"
	"testing"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
)

// A reinit request pending when this node becomes the committed primary is
// dropped: it was meant for the standby the node was, and must never fire
// after the node has been primary and is demoted (it would wipe the former
// primary's data instead of rewinding it). convergePrimary clears it first
// thing; here it then stops at once (an empty data directory in an
// initialised cluster), without touching any process.
func TestReinitRequestDroppedOnBecomingPrimary(t *testing.T) {
	a := &Agent{cfg: &Config{Name: "n1"}}
	a.cfg.Postgres.DataDir = "/nonexistent/pgdata"
	a.reinit.Store(true)
	st := consensus.State{Members: members("n1", "n2", "n3"), Primary: "n1", Epoch: 3, SystemID: 7}
	if err := a.convergePrimary(context.Background(), st, postgres.DataDirEmpty); err == nil {
		t.Fatal("convergePrimary with an empty data directory in an initialised cluster: want an error")
	}
	if a.reinit.Load() {
		t.Error("the reinit request survived this node becoming the primary")
	}
}

package agent

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/consensus"
)

// A permit granted by a new leader before its first round is remembered
// by that round: the round must not fail over a primary whose agent was
// just allowed to start it (before beginTenure, the round's election
// bookkeeping forgot it, and the primary looked stopped with no permit).
func TestPermitBeforeFirstRoundIsKept(t *testing.T) {
	a, _ := restAgent(t)
	ctx := context.Background()
	if err := a.node.Apply(ctx, consensus.SetSystemID(7)); err != nil { // the first primary ran
		t.Fatal(err)
	}
	st := a.node.State()
	if _, err := a.grantPermit(ctx, st.Primary, st.Epoch, false); err != nil {
		t.Fatal(err)
	}
	a.leadOnce(ctx)
	a.lead.mu.Lock()
	defer a.lead.mu.Unlock()
	if _, ok := a.lead.permitsOf(st.Epoch)[st.Primary]; !ok {
		t.Fatalf("the leader's first round forgot the permit it granted before it: permits %v", a.lead.permits)
	}
	if got := a.lead.waiting; !strings.Contains(got, "is starting PostgreSQL") {
		t.Errorf("the first round waits for %q, want the primary starting PostgreSQL", got)
	}
}

// A leader whose memory is of an earlier term (it lost leadership and won
// it back between two rounds; another leader may have granted leases
// meanwhile) starts afresh: its lease bookkeeping counts from now.
func TestNewTermStartsAfresh(t *testing.T) {
	a, _ := restAgent(t)
	ctx := context.Background()
	st := a.node.State()
	a.lead.mu.Lock()
	defer a.lead.mu.Unlock()
	if err := a.beginTenure(ctx); err != nil {
		t.Fatal(err)
	}
	term := a.lead.term
	if term == 0 || term != a.node.Term() {
		t.Fatalf("tenure term %d, raft term %d", term, a.node.Term())
	}
	old := time.Now().Add(-time.Hour)
	a.lead.since = old
	a.lead.leaderMemory = a.lead.noteLease(st.Primary, st.Epoch, old)
	if err := a.beginTenure(ctx); err != nil {
		t.Fatal(err)
	}
	if !a.lead.since.Equal(old) || a.lead.lastLease(st.Primary, st.Epoch).IsZero() {
		t.Fatalf("the same term started a new tenure: since %v, lease %v", a.lead.since, a.lead.lastLease(st.Primary, st.Epoch))
	}
	a.lead.term = term - 1 // as if it had led in an earlier term
	if err := a.beginTenure(ctx); err != nil {
		t.Fatal(err)
	}
	if a.lead.since.Equal(old) || !a.lead.lastLease(st.Primary, st.Epoch).IsZero() || a.lead.term != term {
		t.Fatalf("a tenure of an earlier term was kept: since %v, lease %v, term %d", a.lead.since, a.lead.lastLease(st.Primary, st.Epoch), a.lead.term)
	}
}

package agent

import (
	"reflect"
	"testing"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
)

// A standby only judges its WAL against the primary's timeline history when
// that primary's agent published it while running as the primary of the
// committed epoch: an old or half-promoted primary's timeline would make a
// standby that is merely behind look forked.
func TestPrimaryTimeline(t *testing.T) {
	hist := []postgres.TimelineSwitch{{Timeline: 1, Switch: 0x3000158}}
	st := consensus.State{Members: members("n1", "n2"), Primary: "n1", Epoch: 2}
	primary := func(change func(*memberView)) memberView {
		v := seen("valid", postgres.Status{Running: true, Timeline: 2})
		v.obs.Epoch, v.obs.TimelineHistory = 2, hist
		if change != nil {
			change(&v)
		}
		return v
	}
	for _, c := range []struct {
		name string
		obs  memberView
		ok   bool
	}{
		{"running primary of this epoch", primary(nil), true},
		{"unreachable", primary(func(v *memberView) { v.reachable = false }), false},
		{"an older epoch", primary(func(v *memberView) { v.obs.Epoch = 1 }), false},
		{"still in recovery (being promoted)", primary(func(v *memberView) { v.obs.Postgres.InRecovery = true }), false},
		{"not running", primary(func(v *memberView) { v.obs.Postgres.Running = false }), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := &Agent{obs: newObservations()}
			a.obs.set("n1", c.obs)
			tli, h, ok := a.primaryTimeline(st)
			if ok != c.ok || (ok && (tli != 2 || !reflect.DeepEqual(h, hist))) {
				t.Errorf("primaryTimeline = %d, %v, %v; want ok=%v", tli, h, ok, c.ok)
			}
		})
	}
}

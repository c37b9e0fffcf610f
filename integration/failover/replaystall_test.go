package failover

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/internal/itest"
	"github.com/pgha/pgha/internal/wait"
)

// A standby that receives WAL but does not replay it is not a streaming
// standby (issue 17, 2b): here its replay is paused (pg_wal_replay_pause(),
// as a startup process stuck on a record it cannot apply would leave it)
// while the primary writes. Within seconds its /replica answers 503, list
// shows it in archive recovery with the reason, and once replay resumes it
// is streaming and 200 again.
func TestReplayStalledStandbyServesNoReads(t *testing.T) {
	lc := itest.NewCluster(t, agentBinary, 3)
	if err := lc.StartAll(); err != nil {
		t.Fatal(err)
	}
	v := itest.WaitHealthy(t, lc, 3, 90*time.Second)
	primary := itest.PrimaryOf(t, v)
	var standby string
	for _, m := range v.Members {
		if m.Name != primary.Name {
			standby = m.Name
		}
	}
	ns := lc.Node(standby)
	replica := func() int {
		resp, err := http.Get(ns.APIURL + "/replica")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	state := func() (string, string) {
		v, err := lc.View(context.Background())
		if err != nil {
			return "", err.Error()
		}
		for _, m := range v.Members {
			if m.Name == standby {
				return m.State, m.Problem
			}
		}
		return "", "not listed"
	}
	wait.For(t, 30*time.Second, standby+"'s /replica to answer 200", func() (bool, string) { c := replica(); return c == http.StatusOK, fmt.Sprint(c) })

	pp, ps := itest.Connect(t, primary.Port), itest.Connect(t, ns.PGPort)
	mustExec(t, pp, "CREATE TABLE replay_stall (id serial PRIMARY KEY, at timestamptz DEFAULT now())")
	mustExec(t, ps, "SELECT pg_wal_replay_pause()")
	paused := time.Now()
	write := func() { mustExec(t, pp, "INSERT INTO replay_stall DEFAULT VALUES") }
	wait.For(t, 30*time.Second, standby+" to stop counting as a streaming standby", func() (bool, string) {
		write()
		st, problem := state()
		c := replica()
		return c == http.StatusServiceUnavailable && st == "in archive recovery" && strings.Contains(problem, "replay stands still"),
			fmt.Sprintf("/replica %d, state %q, problem %q", c, st, problem)
	})
	t.Logf("%s stopped counting as streaming %.1fs after its replay was paused", standby, time.Since(paused).Seconds())
	mustExec(t, ps, "SELECT pg_wal_replay_resume()")
	wait.For(t, 30*time.Second, standby+" streaming and 200 again", func() (bool, string) {
		st, problem := state()
		c := replica()
		return c == http.StatusOK && st == "streaming", fmt.Sprintf("/replica %d, state %q, problem %q", c, st, problem)
	})
}

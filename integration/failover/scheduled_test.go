package failover

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/internal/itest"
	"github.com/pgha/pgha/internal/localcluster"
	"github.com/pgha/pgha/internal/wait"
)

// A switchover scheduled for later is kept in Raft: list shows it, flush
// cancels it, and one that is due after the leader that accepted it has
// gone is started by the next leader, not before its time.
func TestScheduledSwitchover(t *testing.T) {
	lc := itest.NewCluster(t, agentBinary, 3)
	if err := lc.StartAll(); err != nil {
		t.Fatal(err)
	}
	v := itest.WaitHealthy(t, lc, 3, 90*time.Second)
	old := itest.PrimaryOf(t, v).Name

	later := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	cli(t, lc, "switchover", "--scheduled", later.Format(time.RFC3339))
	// Any member answers list; a follower shows the schedule once it has
	// applied the entry the leader committed.
	wait.For(t, 10*time.Second, "list to show the scheduled switchover", func() (bool, string) {
		out := cli(t, lc, "list")
		return strings.Contains(out, "switchover scheduled at "+later.Format(time.RFC3339)), out
	})
	if out, err := cliErr(lc, "switchover", "--scheduled", later.Add(time.Minute).Format(time.RFC3339)); err == nil || !strings.Contains(out, "already scheduled") {
		t.Errorf("a second schedule was not refused: %v\n%s", err, out)
	}
	cli(t, lc, "flush")
	wait.For(t, 10*time.Second, "the flushed switchover to be gone", func() (bool, string) {
		v, err := lc.View(context.Background())
		return err == nil && v.ScheduledSwitchover == nil, fmt.Sprintf("%+v, %v", v.ScheduledSwitchover, err)
	})

	// Due in a few seconds; the leader's agent dies meanwhile.
	at := time.Now().Add(6 * time.Second)
	cli(t, lc, "switchover", "--scheduled", at.UTC().Format(time.RFC3339Nano))
	leader := lc.Node(v.RaftLeader)
	lc.KillAgent(leader)
	wait.For(t, 30*time.Second, "another leader", func() (bool, string) {
		v, err := lc.View(context.Background())
		if err != nil {
			return false, err.Error()
		}
		return v.RaftLeader != "" && v.RaftLeader != leader.Name, "leader " + v.RaftLeader
	})
	if err := lc.Start(leader); err != nil {
		t.Fatal(err)
	}
	var switched time.Time
	wait.For(t, 60*time.Second, "the scheduled switchover", func() (bool, string) {
		v, err := lc.View(context.Background())
		if err != nil {
			return false, err.Error()
		}
		for _, m := range v.Members {
			if m.Role == "leader" && m.State == "running" && m.Name != old {
				switched = time.Now()
				return true, ""
			}
		}
		return false, itest.Describe(v)
	})
	var h []agent.HistoryEntry
	if err := json.Unmarshal([]byte(cli(t, lc, "history", "--format", "json")), &h); err != nil {
		t.Fatal(err)
	}
	if len(h) == 0 || h[len(h)-1].Kind != "switchover" || h[len(h)-1].From != old {
		t.Fatalf("history does not end with the switchover from %s: %+v", old, h)
	}
	if e := h[len(h)-1]; e.At.Before(at) {
		t.Errorf("switched over at %s, before its time %s", e.At, at)
	}
	t.Logf("scheduled for %s, promoted at %s (seen %s)", at.Format(time.RFC3339Nano), h[len(h)-1].At.Format(time.RFC3339Nano), switched.Format(time.RFC3339Nano))
	scheduledRestarts(t, lc, itest.WaitHealthy(t, lc, 3, 60*time.Second))
}

// scheduledRestarts: restarts scheduled for later are kept in Raft, shown
// by list, cancelled by flush restart, and run at their time by the
// leader: the standbys restart (new postmasters, not before the time), a
// primary scheduled with --pending and nothing pending does not.
func scheduledRestarts(t *testing.T, lc *localcluster.Cluster, v agent.ClusterView) {
	primary := itest.PrimaryOf(t, v).Name
	var standbys []string
	for _, m := range v.Members {
		if m.Name != primary {
			standbys = append(standbys, m.Name)
		}
	}
	later := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	if out, err := cliErr(lc, "restart", "--scheduled", later.Format(time.RFC3339)); err == nil || !strings.Contains(out, "is the primary") {
		t.Errorf("a scheduled restart of the primary without --no-switchover was not refused: %v\n%s", err, out)
	}
	cli(t, lc, "restart", standbys[0], "--scheduled", later.Format(time.RFC3339))
	wait.For(t, 10*time.Second, "list to show the scheduled restart", func() (bool, string) {
		out := cli(t, lc, "list")
		return strings.Contains(out, standbys[0]+" restart scheduled at "+later.Format(time.RFC3339)), out
	})
	cli(t, lc, "flush", "restart")
	wait.For(t, 10*time.Second, "the flushed restart to be gone", func() (bool, string) {
		v, err := lc.View(context.Background())
		return err == nil && memberOf(v, standbys[0]).ScheduledRestart == nil, fmt.Sprintf("%v", err)
	})

	pids := map[string]int{}
	for _, m := range v.Members {
		pids[m.Name] = lc.Node(m.Name).PostmasterPID()
	}
	at := time.Now().Add(4 * time.Second)
	cli(t, lc, "restart", "--role", "replica", "--scheduled", at.UTC().Format(time.RFC3339Nano))
	cli(t, lc, "restart", primary, "--pending", "--no-switchover", "--scheduled", at.UTC().Format(time.RFC3339Nano))
	for _, name := range standbys {
		wait.For(t, 60*time.Second, name+"'s scheduled restart", func() (bool, string) {
			pid := lc.Node(name).PostmasterPID()
			if pid != 0 && pid != pids[name] {
				if now := time.Now(); now.Before(at) {
					t.Errorf("%s restarted at %s, before its time %s", name, now.Format(time.RFC3339Nano), at.Format(time.RFC3339Nano))
				}
				return true, ""
			}
			return false, fmt.Sprintf("postmaster %d", pid)
		})
	}
	wait.For(t, 30*time.Second, "every scheduled restart to be done", func() (bool, string) {
		v, err := lc.View(context.Background())
		if err != nil {
			return false, err.Error()
		}
		for _, m := range v.Members {
			if m.ScheduledRestart != nil {
				return false, m.Name + " still scheduled"
			}
		}
		return true, ""
	})
	if pid := lc.Node(primary).PostmasterPID(); pid != pids[primary] {
		t.Errorf("the primary %s restarted (postmaster %d, was %d) though nothing was pending", primary, pid, pids[primary])
	}
	itest.WaitHealthy(t, lc, 3, 60*time.Second)
}

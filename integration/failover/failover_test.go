// Package failover tests automatic failover, switchover, rejoin, pause and
// synchronous-standby loss end to end: real agents, real PostgreSQL, a writer
// recording every acknowledged insert. Each scenario asserts that no
// acknowledged write is lost and that exactly one primary remains.
package failover

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/internal/itest"
	"github.com/pgha/pgha/internal/localcluster"
	"github.com/pgha/pgha/internal/wait"
	"github.com/pgha/pgha/postgres/pgtest"
)

var agentBinary string

func TestMain(m *testing.M) { itest.Main(m, &agentBinary) }

// scenario runs one fault with a writer running, then checks the invariants.
type scenario struct {
	t      *testing.T
	lc     *localcluster.Cluster
	w      *itest.Writer
	before agent.ClusterView
}

func start(t *testing.T, lc *localcluster.Cluster, table string) *scenario {
	t.Helper()
	v := itest.WaitHealthy(t, lc, 3, 90*time.Second)
	w, err := itest.StartWriter(context.Background(), itest.LoopbackTargets(lc), itest.WriterOptions{
		Table: table, Conns: 1, Interval: 20 * time.Millisecond, Timeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	// Some acknowledged writes before the fault.
	wait.For(t, 20*time.Second, "the writer's first acknowledgements", func() (bool, string) {
		return len(w.Acks()) >= 10, w.Status()
	})
	return &scenario{t: t, lc: lc, w: w, before: v}
}

// awaitNewWrites waits until the writer has acknowledgements after t (from
// a node other than notOn, if given: a killed postmaster's backends may
// still acknowledge a write or two, which a standby holds in sync mode).
func (s *scenario) awaitNewWrites(after time.Time, timeout time.Duration, notOn ...string) itest.Ack {
	s.t.Helper()
	var ack itest.Ack
	wait.For(s.t, timeout, "writes to resume", func() (bool, string) {
		for _, a := range s.w.Acks() {
			if a.At.After(after) && !slices.Contains(notOn, a.Host) {
				ack = a
				return true, ""
			}
		}
		return false, s.w.Status()
	})
	return ack
}

// finish stops the writer and checks: healthy again, one primary, nothing
// acknowledged missing on the final primary or on any standby.
func (s *scenario) finish() agent.ClusterView {
	s.t.Helper()
	// A few more acknowledged writes on the final primary.
	s.awaitNewWrites(time.Now(), 30*time.Second)
	s.w.Stop()
	v := itest.WaitHealthy(s.t, s.lc, 3, 90*time.Second)
	if ps := itest.WritablePrimaries(s.lc); len(ps) != 1 {
		s.t.Fatalf("writable primaries: %v, want exactly one", ps)
	}
	last := s.w.Acks()[len(s.w.Acks())-1].ID
	for _, m := range v.Members {
		// Standbys catch up to the last acknowledged row; then compare.
		name := m.Name
		wait.For(s.t, 30*time.Second, m.Name+" to hold every acknowledged row", func() (bool, string) {
			missing, err := s.w.Missing(context.Background(), name)
			if err != nil {
				return false, err.Error()
			}
			return len(missing) == 0, fmt.Sprintf("%d of %d acknowledged rows missing (last id %d), e.g. %v", len(missing), len(s.w.Acks()), last, head(missing))
		})
	}
	s.t.Logf("writer: %s; now %s", s.w.Status(), itest.Describe(v))
	return v
}

func head(ids []int64) []int64 {
	if len(ids) > 5 {
		return ids[:5]
	}
	return ids
}

func memberOf(v agent.ClusterView, name string) agent.MemberStatus {
	for _, m := range v.Members {
		if m.Name == name {
			return m
		}
	}
	return agent.MemberStatus{}
}

func cli(t *testing.T, lc *localcluster.Cluster, args ...string) string {
	t.Helper()
	out, err := cliErr(lc, args...)
	if err != nil {
		t.Fatalf("pgha-agent %v: %v\n%s", args, err, out)
	}
	return out
}

// cliErr runs the CLI against every member's API. Control commands
// authenticate with PGHA_TOKEN_FILE, which itest.NewCluster sets.
func cliErr(lc *localcluster.Cluster, args ...string) (string, error) {
	var apis []string
	for _, n := range lc.Nodes() {
		apis = append(apis, n.APIURL)
	}
	out, err := exec.Command(agentBinary, append(args, "--api", strings.Join(apis, ","))...).CombinedOutput()
	return string(out), err
}

// stable asserts that for d the primary and epoch do not change. Only
// answers prove that, so it looks until it has stableViews views, the last
// one taken after d, and fails if the API has not given them by d +
// stableGrace: a cluster nobody can ask has not shown that it kept still.
func stable(t *testing.T, lc *localcluster.Cluster, d time.Duration, primary string, epoch uint64) {
	t.Helper()
	start := time.Now()
	views, failed := 0, 0
	var lastErr error
	for {
		v, err := lc.View(context.Background())
		at := time.Now()
		if err != nil {
			failed++
			lastErr = err
		} else {
			if v.Epoch != epoch || itest.PrimaryOf(t, v).Name != primary {
				t.Fatalf("failover happened: %s (before: %s, epoch %d)", itest.Describe(v), primary, epoch)
			}
			views++
			if views >= stableViews && at.Sub(start) >= d {
				return
			}
		}
		if at.Sub(start) >= d+stableGrace {
			t.Fatalf("cannot tell whether %s stayed primary at epoch %d: %d views in %s (want %d, the last after %s), %d failed, last error: %v",
				primary, epoch, views, at.Sub(start).Round(time.Millisecond), stableViews, d, failed, lastErr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stable's demands: this many views, the last after the period checked;
// it gives up this long after the period.
const (
	stableViews = 3
	stableGrace = 10 * time.Second
)

// skip skips a scenario that cannot run this time, except in CI (CI=true),
// where a scenario that did not run is a failure.
func skip(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("scenario did not run and CI=true: %s", why)
	}
	t.Skip(why)
}

// must runs a scenario and stops the test at the first failing one: later
// scenarios start from a healthy cluster, which a failure does not leave.
func must(t *testing.T, name string, f func(t *testing.T)) {
	t.Helper()
	if !t.Run(name, f) {
		t.FailNow()
	}
}

func TestFailover(t *testing.T) {
	cb := newCallbackRecorder(t)
	lc := itest.NewCluster(t, agentBinary, 3, func(o *localcluster.Options) { o.ExtraConfig = cb.config })
	if err := lc.StartAll(); err != nil {
		t.Fatal(err)
	}

	must(t, "kill -9 of the primary's postgres: a standby is promoted, the old primary rejoins by rewind", func(t *testing.T) {
		calls := cb.mark()
		s := start(t, lc, "w_pgkill")
		old := itest.PrimaryOf(t, s.before)
		logFrom := map[string]int64{}
		for _, m := range s.before.Members {
			if fi, err := os.Stat(lc.Node(m.Name).PGData + ".log"); err == nil {
				logFrom[m.Name] = fi.Size()
			}
		}
		killed := time.Now()
		if err := lc.KillPostgres(lc.Node(old.Name)); err != nil {
			t.Fatal(err)
		}
		ack := s.awaitNewWrites(killed, 30*time.Second, old.Name)
		t.Logf("writes resumed on %s %.2fs after the kill", ack.Host, ack.At.Sub(killed).Seconds())
		// The new primary's on_role_change callback hangs (sleep 1000):
		// the failover above did not wait for it, it is still running.
		cb.awaitHanging(t, calls, ack.Host)
		v := s.finish()
		// The standbys find their replication slots on the new primary at
		// once (created ahead on every standby): none is refused and made
		// to retry while the first commits wait for a synchronous standby.
		newPrimary := itest.PrimaryOf(t, v).Name
		if b, err := os.ReadFile(lc.Node(newPrimary).PGData + ".log"); err != nil {
			t.Error(err)
		} else {
			for _, line := range strings.Split(string(b[min(logFrom[newPrimary], int64(len(b))):]), "\n") {
				if strings.Contains(line, "replication slot") && strings.Contains(line, "does not exist") {
					t.Errorf("a standby asked the new primary %s for a slot it did not have yet: %s", newPrimary, line)
				}
			}
		}
		if v.Epoch <= s.before.Epoch {
			t.Errorf("epoch %d did not increase from %d", v.Epoch, s.before.Epoch)
		}
		if m := memberOf(v, old.Name); m.RejoinedBy != "rewind" {
			t.Errorf("old primary rejoined by %q, want rewind", m.RejoinedBy)
		}
	})

	must(t, "host loss of the primary: failover, then the host returns and rejoins", func(t *testing.T) {
		s := start(t, lc, "w_hostloss")
		old := itest.PrimaryOf(t, s.before)
		n := lc.Node(old.Name)
		killed := time.Now()
		lc.KillHost(n)
		ack := s.awaitNewWrites(killed, 30*time.Second, old.Name)
		t.Logf("writes resumed on %s %.2fs after the host loss", ack.Host, ack.At.Sub(killed).Seconds())
		if err := lc.Start(n); err != nil {
			t.Fatal(err)
		}
		v := s.finish()
		if itest.PrimaryOf(t, v).Name == old.Name {
			t.Errorf("the lost host is primary again")
		}
	})

	must(t, "kill of the primary's agent only: no failover", func(t *testing.T) {
		s := start(t, lc, "w_agentkill")
		old := itest.PrimaryOf(t, s.before)
		n := lc.Node(old.Name)
		lc.KillAgent(n)
		// Past the fence deadline, the leader still sees PostgreSQL answer.
		stable(t, lc, 4*time.Second, old.Name, s.before.Epoch)
		// An operator's failover is refused too: the server still answers,
		// so it may still be writable.
		var cand string
		for _, m := range s.before.Members {
			if m.Name != old.Name {
				cand = m.Name
			}
		}
		if out, err := cliErr(lc, "failover", "--candidate", cand); err == nil || !strings.Contains(out, "may still be writable") {
			t.Errorf("failover while %s's PostgreSQL still answers was not refused without --force: %v\n%s", old.Name, err, out)
		}
		if err := lc.Start(n); err != nil {
			t.Fatal(err)
		}
		v := s.finish()
		if v.Epoch != s.before.Epoch || itest.PrimaryOf(t, v).Name != old.Name {
			t.Errorf("primary/epoch changed: %s", itest.Describe(v))
		}
	})

	must(t, "switchover there and back", func(t *testing.T) {
		calls := cb.mark()
		s := start(t, lc, "w_switchover")
		old := itest.PrimaryOf(t, s.before)
		var cand string
		for _, m := range s.before.Members {
			if m.Name != old.Name {
				cand = m.Name
				break
			}
		}
		oldLog := lc.Node(old.Name).PGData + ".log"
		var logFrom int64
		if fi, err := os.Stat(oldLog); err == nil {
			logFrom = fi.Size()
		}
		candLog := lc.Node(cand).PGData + ".log"
		var candFrom int64
		if fi, err := os.Stat(candLog); err == nil {
			candFrom = fi.Size()
		}
		out := cli(t, lc, "switchover", "--candidate", cand)
		t.Logf("switchover: %s", strings.TrimSpace(out))
		v := itest.WaitHealthy(t, lc, 3, 60*time.Second)
		if p := itest.PrimaryOf(t, v); p.Name != cand {
			t.Fatalf("primary after switchover is %s, want %s", p.Name, cand)
		}
		// The leader had the old primary checkpoint while it still took
		// writes, so its shutdown checkpoint had little left to write.
		if b, err := os.ReadFile(oldLog); err != nil {
			t.Error(err)
		} else {
			tail := string(b[min(logFrom, int64(len(b))):])
			checkpoint := strings.Index(tail, "checkpoint starting: immediate force wait")
			shutdown := strings.Index(tail, "received fast shutdown request")
			if checkpoint < 0 || shutdown < 0 || checkpoint > shutdown {
				t.Errorf("old primary %s: no CHECKPOINT before its fast shutdown (at %d and %d in its log since the switchover began)", old.Name, checkpoint, shutdown)
			}
		}
		// The standby kept synchronous_standby_names naming every other
		// member, so its promotion needed no write and reload of it
		// between the leader's decision and the promote request.
		if b, err := os.ReadFile(candLog); err != nil {
			t.Error(err)
		} else {
			tail := string(b[min(candFrom, int64(len(b))):])
			promote := strings.Index(tail, "received promote request")
			if changed := strings.Index(tail, `parameter "synchronous_standby_names" changed`); promote < 0 || changed >= 0 && changed < promote {
				t.Errorf("candidate %s: synchronous_standby_names reloaded before its promotion (at %d, promote request at %d in its log since the switchover began)", cand, changed, promote)
			}
		}
		if m := memberOf(v, old.Name); m.State != "streaming" {
			t.Fatalf("old primary %s is %s", old.Name, m.State)
		}
		// A clean switchover leaves the old primary's WAL ending at the
		// fork: it follows the new timeline without pg_rewind.
		if m := memberOf(v, old.Name); m.RejoinedBy != "follow" {
			t.Errorf("old primary %s rejoined by %q, want follow (no pg_rewind after a clean switchover)", old.Name, m.RejoinedBy)
		}
		cli(t, lc, "switchover", "--candidate", old.Name)
		v = itest.WaitHealthy(t, lc, 3, 60*time.Second)
		if p := itest.PrimaryOf(t, v); p.Name != old.Name {
			t.Fatalf("primary after switching back is %s, want %s", p.Name, old.Name)
		}
		if m := memberOf(v, cand); m.RejoinedBy != "follow" {
			t.Errorf("%s, primary before switching back, rejoined by %q, want follow", cand, m.RejoinedBy)
		}
		s.finish()
		// Callbacks with Patroni's arguments: the candidate became the
		// primary and the old primary a replica, then back.
		for _, want := range []string{
			cand + " on_role_change primary itest epoch=", old.Name + " on_role_change replica itest",
			old.Name + " on_role_change primary itest", cand + " on_role_change replica itest",
		} {
			cb.await(t, calls, want)
		}
	})

	must(t, "kill of the Raft leader's agent while it is not the primary: no failover", func(t *testing.T) {
		s := start(t, lc, "w_leaderkill")
		primary := itest.PrimaryOf(t, s.before)
		leader := s.before.RaftLeader
		if leader == primary.Name {
			var other string
			for _, m := range s.before.Members {
				if m.Name != primary.Name {
					other = m.Name
					break
				}
			}
			cli(t, lc, "switchover", "--candidate", other)
			v := itest.WaitHealthy(t, lc, 3, 60*time.Second)
			primary = itest.PrimaryOf(t, v)
			s.before = v
			leader = v.RaftLeader
		}
		if leader == primary.Name {
			skip(t, "the Raft leader is the primary again after a switchover away from it: no Raft leader apart from the primary to kill")
		}
		lc.KillAgent(lc.Node(leader))
		wait.For(t, 10*time.Second, "a new Raft leader", func() (bool, string) {
			v, err := lc.View(context.Background())
			return err == nil && v.RaftLeader != "" && v.RaftLeader != leader, fmt.Sprint(err)
		})
		stable(t, lc, 3*time.Second, primary.Name, s.before.Epoch)
		if err := lc.Start(lc.Node(leader)); err != nil {
			t.Fatal(err)
		}
		s.finish()
	})

	must(t, "pause prevents failover, resume restores it", func(t *testing.T) {
		s := start(t, lc, "w_pause")
		old := itest.PrimaryOf(t, s.before)
		cli(t, lc, "pause")
		wait.For(t, 5*time.Second, "list to show the pause", func() (bool, string) {
			out := cli(t, lc, "list")
			return strings.Contains(out, "PAUSED"), out
		})
		if out, err := cliErr(lc, "switchover"); err == nil || !strings.Contains(out, "paused") {
			t.Errorf("switchover while paused was not refused as it should: %v\n%s", err, out)
		}
		if err := lc.KillPostgres(lc.Node(old.Name)); err != nil {
			t.Fatal(err)
		}
		stable(t, lc, 4*time.Second, old.Name, s.before.Epoch)
		v, err := lc.View(context.Background())
		if err != nil || !strings.Contains(v.Waiting, "paused") {
			t.Errorf("/cluster does not say why nothing happens: waiting=%q err=%v", v.Waiting, err)
		}
		resumed := time.Now()
		cli(t, lc, "resume")
		s.awaitNewWrites(resumed, 30*time.Second)
		s.finish()
	})

	must(t, "loss of the synchronous standby moves the sync set, writes go on", func(t *testing.T) {
		s := start(t, lc, "w_syncloss")
		var syncName string
		wait.For(t, 20*time.Second, "exactly one synchronous standby", func() (bool, string) {
			v, err := lc.View(context.Background())
			if err != nil {
				return false, err.Error()
			}
			if len(v.SyncStandbys) == 1 {
				syncName = v.SyncStandbys[0]
				return true, ""
			}
			return false, fmt.Sprint(v.SyncStandbys)
		})
		n := lc.Node(syncName)
		killed := time.Now()
		lc.KillHost(n)
		ack := s.awaitNewWrites(killed, 30*time.Second)
		t.Logf("writes went on %.2fs after the synchronous standby %s was lost", ack.At.Sub(killed).Seconds(), syncName)
		wait.For(t, 20*time.Second, "the sync set to move", func() (bool, string) {
			v, err := lc.View(context.Background())
			if err != nil {
				return false, err.Error()
			}
			return len(v.SyncStandbys) == 1 && v.SyncStandbys[0] != syncName, fmt.Sprint(v.SyncStandbys)
		})
		if err := lc.Start(n); err != nil {
			t.Fatal(err)
		}
		s.finish()
	})

	must(t, "rejoin falls back to a clone when rewind is impossible", func(t *testing.T) {
		s := start(t, lc, "w_clone")
		old := itest.PrimaryOf(t, s.before)
		n := lc.Node(old.Name)
		killed := time.Now()
		lc.KillHost(n)
		s.awaitNewWrites(killed, 30*time.Second, old.Name)
		// Without its WAL, pg_rewind cannot find where the timelines forked.
		walDir := filepath.Join(n.PGData, "pg_wal")
		entries, err := os.ReadDir(walDir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if !e.IsDir() && len(e.Name()) == 24 {
				if err := os.Remove(filepath.Join(walDir, e.Name())); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := lc.Start(n); err != nil {
			t.Fatal(err)
		}
		v := s.finish()
		if m := memberOf(v, old.Name); m.RejoinedBy != "clone" {
			t.Errorf("old primary rejoined by %q, want clone", m.RejoinedBy)
		}
		// The replaced data directory is kept aside as evidence (one copy
		// by default), and nothing else is left beside it.
		if kept, _ := filepath.Glob(n.PGData + ".pgha-*"); len(kept) != 1 || !strings.Contains(kept[0], ".pgha-replaced-") {
			t.Errorf("beside the data directory: %v, want the one kept copy", kept)
		} else if m := memberOf(v, old.Name); !slices.Contains(m.KeptDataDirs, kept[0]) {
			t.Errorf("/cluster shows kept data directories %v, want %s", m.KeptDataDirs, kept[0])
		}
		if !slices.Contains([]string{"streaming"}, memberOf(v, old.Name).State) {
			t.Errorf("old primary is %s", memberOf(v, old.Name).State)
		}
	})

	must(t, "forced failover while paused, and switchover refusals", func(t *testing.T) {
		s := start(t, lc, "w_forced")
		old := itest.PrimaryOf(t, s.before)
		if out, err := cliErr(lc, "switchover", "--candidate", "nosuchnode"); err == nil || !strings.Contains(out, "not a member") {
			t.Errorf("switchover to a non-member was not refused: %v\n%s", err, out)
		}
		var anyStandby string
		for _, m := range s.before.Members {
			if m.Name != old.Name {
				anyStandby = m.Name
			}
		}
		if out, err := cliErr(lc, "failover", "--candidate", anyStandby); err == nil || !strings.Contains(out, "healthy") {
			t.Errorf("failover with a healthy primary was not refused: %v\n%s", err, out)
		}
		cli(t, lc, "pause")
		if err := lc.KillPostgres(lc.Node(old.Name)); err != nil {
			t.Fatal(err)
		}
		var down agent.ClusterView
		wait.For(t, 10*time.Second, "the cluster to see the primary down", func() (bool, string) {
			v, err := lc.View(context.Background())
			if err != nil {
				return false, err.Error()
			}
			down = v
			return memberOf(v, old.Name).State == "stopped", itest.Describe(v)
		})
		// The synchronous standby holds every acknowledged commit; the other
		// may not, and a failover to it needs --force. The set is read now,
		// with the primary down and the cluster paused: the leader may have
		// moved it since the scenario started (CI once read a stale one and
		// asked to force the standby that was by then synchronous).
		if len(down.SyncStandbys) != 1 {
			t.Fatalf("want one synchronous standby, got %v", down.SyncStandbys)
		}
		cand := down.SyncStandbys[0]
		var other string
		for _, m := range down.Members {
			if m.Name != old.Name && m.Name != cand {
				other = m.Name
			}
		}
		if out, err := cliErr(lc, "failover", "--candidate", other); err == nil || !strings.Contains(out, "may lack acknowledged commits") {
			t.Errorf("failover to %s, outside the synchronous set, was not refused without --force: %v\n%s", other, err, out)
		}
		out := cli(t, lc, "failover", "--candidate", cand)
		t.Logf("forced failover: %s", strings.TrimSpace(out))
		v := itest.WaitHealthy(t, lc, 3, 60*time.Second)
		if p := itest.PrimaryOf(t, v); p.Name != cand {
			t.Fatalf("primary after forced failover is %s, want %s", p.Name, cand)
		}
		cli(t, lc, "resume")
		s.finish()
	})

	must(t, "reinit re-clones a standby on demand, from the member tagged clonefrom, showing progress", func(t *testing.T) {
		v := itest.WaitHealthy(t, lc, 3, 60*time.Second)
		var standby, source string
		for _, m := range v.Members {
			if m.Role != "leader" {
				source, standby = standby, m.Name
			}
		}
		// The other standby is the preferred source of base backups.
		cli(t, lc, "tag", source, "clonefrom=true")
		defer cli(t, lc, "tag", source, "clonefrom=")
		wait.For(t, 10*time.Second, source+" tagged clonefrom in /cluster", func() (bool, string) {
			v := itest.WaitHealthy(t, lc, 3, 10*time.Second)
			return memberOf(v, source).CloneFrom, ""
		})
		logFrom := fileSize(lc.Node(standby).Log)
		n := lc.Node(standby)
		marker := filepath.Join(n.PGData, "pgha-test-marker")
		if err := os.WriteFile(marker, []byte("old data"), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := cliErr(lc, "reinit", itest.PrimaryOf(t, v).Name); err == nil || !strings.Contains(out, "primary") {
			t.Errorf("reinit of the primary was not refused: %v\n%s", err, out)
		}
		out := cli(t, lc, "reinit", standby)
		t.Logf("reinit output:\n%s", out)
		if !strings.Contains(out, "reinit") || !strings.Contains(out, "streaming again") {
			t.Errorf("reinit did not show its progress:\n%s", out)
		}
		if _, err := os.Stat(marker); !os.IsNotExist(err) {
			t.Errorf("the standby's data directory was not replaced (marker still there: %v)", err)
		}
		if b, err := os.ReadFile(lc.Node(standby).Log); err != nil {
			t.Error(err)
		} else if log := string(b[min(logFrom, int64(len(b))):]); !strings.Contains(log, `msg="re-clone finished" node=`+standby+` from=`+source) {
			t.Errorf("%s was not re-cloned from %s, tagged clonefrom; its log since:\n%s", standby, source, itest.TailLines(log, 20))
		}
		// The replaced directory is kept aside (postgres.keep_replaced_data_dirs, 1 by default).
		if kept, _ := filepath.Glob(n.PGData + ".pgha-*"); len(kept) != 1 {
			t.Errorf("beside the data directory: %v, want the one kept copy", kept)
		} else if b, err := os.ReadFile(filepath.Join(kept[0], "pgha-test-marker")); err != nil || string(b) != "old data" {
			t.Errorf("the kept copy %s does not hold the old data: %q, %v", kept[0], b, err)
		}
		itest.WaitHealthy(t, lc, 3, 60*time.Second)
	})

	must(t, "history lists every promotion above with its kind and reason", func(t *testing.T) {
		v := itest.WaitHealthy(t, lc, 3, 60*time.Second)
		var h []agent.HistoryEntry
		if err := json.Unmarshal([]byte(cli(t, lc, "history", "--format", "json")), &h); err != nil {
			t.Fatal(err)
		}
		// Epoch 1 is the first primary's; every later one is a promotion.
		if len(h) != int(v.Epoch-1) {
			t.Fatalf("%d entries for epoch %d: %+v", len(h), v.Epoch, h)
		}
		var kinds []string
		for i, e := range h {
			kinds = append(kinds, e.Kind)
			if e.Epoch != uint64(i+2) || e.Reason == "" || e.From == "" || e.From == e.Primary || e.LSN == "" || e.At.IsZero() {
				t.Errorf("entry %d: %+v", i, e)
			}
			if i > 0 && (e.Timeline <= h[i-1].Timeline || e.At.Before(h[i-1].At) || e.From != h[i-1].Primary) {
				t.Errorf("entry %d does not follow entry %d: %+v after %+v", i, i-1, e, h[i-1])
			}
		}
		// The subtests above: a postmaster kill and a host loss (failovers),
		// a switchover there and back, a forced failover while paused.
		want := []string{"failover", "failover", "switchover", "switchover"}
		if len(kinds) < len(want)+1 || !slices.Equal(kinds[:len(want)], want) || !slices.Contains(kinds, "forced failover") {
			t.Errorf("kinds %v, want %v first and a forced failover later", kinds, want)
		}
		if e := h[2]; !strings.Contains(e.Reason, "switchover") {
			t.Errorf("the switchover's reason: %q", e.Reason)
		}
		table := cli(t, lc, "history")
		t.Logf("history:\n%s", table)
		if !strings.Contains(table, "forced failover") || strings.Count(table, "\n") != len(h)+1 {
			t.Errorf("history table:\n%s", table)
		}
	})
}

// callbackRecorder configures every agent's callbacks with a script that
// records each call (node, arguments, epoch and primary from PGHA_*). Its
// on_role_change to primary hangs, as a broken hook would.
type callbackRecorder struct {
	dir, log string
}

func newCallbackRecorder(t *testing.T) *callbackRecorder {
	dir := pgtest.TempDir(t) // readable and writable by the agents' user
	cb := &callbackRecorder{dir: dir, log: filepath.Join(dir, "calls")}
	script := "#!/bin/sh\n" +
		"echo \"$PGHA_NODE $* epoch=$PGHA_EPOCH primary=$PGHA_PRIMARY\" >> " + cb.log + "\n" +
		"if [ \"$1 $2\" = \"on_role_change primary\" ]; then echo $$ >> " + dir + "/hang.$PGHA_NODE; exec sleep 1000; fi\n"
	if err := os.WriteFile(filepath.Join(dir, "cb.sh"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	// An agent killed with SIGKILL leaves its callbacks running (they have
	// their own process group, as on a real host until it goes down): end
	// the hanging ones with the test.
	t.Cleanup(func() {
		files, _ := filepath.Glob(filepath.Join(dir, "hang.*"))
		for _, f := range files {
			b, _ := os.ReadFile(f)
			for _, line := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(line); err == nil && pid > 0 {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	})
	return cb
}

func (cb *callbackRecorder) config(string) string {
	sh := filepath.Join(cb.dir, "cb.sh")
	return fmt.Sprintf("callbacks:\n  on_start: %s\n  on_stop: %s\n  on_role_change: %s\n  timeout: 10m\n", sh, sh, sh)
}

// mark is where the calls recorded from now on begin.
func (cb *callbackRecorder) mark() int {
	b, _ := os.ReadFile(cb.log)
	return len(b)
}

// await waits until a call recorded after mark from contains want.
func (cb *callbackRecorder) await(t *testing.T, from int, want string) {
	t.Helper()
	wait.For(t, 30*time.Second, "callback "+want, func() (bool, string) {
		b, _ := os.ReadFile(cb.log)
		b = b[min(from, len(b)):]
		return strings.Contains(string(b), want), "calls since the step began:\n" + string(b)
	})
}

// awaitHanging waits until node's on_role_change to primary runs, and
// checks that it still runs.
func (cb *callbackRecorder) awaitHanging(t *testing.T, from int, node string) {
	t.Helper()
	cb.await(t, from, node+" on_role_change primary itest")
	var pid int
	wait.For(t, 10*time.Second, "the hanging callback's pid", func() (bool, string) {
		b, err := os.ReadFile(filepath.Join(cb.dir, "hang."+node))
		if pids := strings.Fields(string(b)); len(pids) > 0 {
			pid, _ = strconv.Atoi(pids[len(pids)-1]) // the latest
		}
		return err == nil && pid > 0, fmt.Sprint(err)
	})
	if err := syscall.Kill(pid, 0); err != nil {
		t.Errorf("%s's on_role_change callback (pid %d) is not running any more: %v", node, pid, err)
	}
}

// fileSize is the size of the file at path, 0 if it cannot be read.
func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

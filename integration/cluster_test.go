package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/internal/itest"
	"github.com/pgha/pgha/internal/wait"
	"github.com/pgha/pgha/postgres"
	"github.com/pgha/pgha/postgres/pgtest"
)

// TestLoopbackCluster is the foundation end to end: three agents bootstrap a
// cluster, replicate, answer the REST API, survive a restart of all three
// with the same primary and epoch, and take a fourth node in and out again.
func TestLoopbackCluster(t *testing.T) {
	lc := itest.NewCluster(t, agentBinary, 3)
	start := time.Now()
	if err := lc.StartAll(); err != nil {
		t.Fatal(err)
	}
	v := itest.WaitHealthy(t, lc, 3, 90*time.Second)
	t.Logf("healthy after %s: %s", time.Since(start).Round(time.Millisecond), itest.Describe(v))

	if v.Epoch != 1 {
		t.Errorf("epoch after bootstrap = %d, want 1", v.Epoch)
	}
	if v.ClusterID == "" || v.SystemID == "" {
		t.Errorf("cluster_id %q / system_identifier %q must both be set", v.ClusterID, v.SystemID)
	}
	leaders := 0
	for _, m := range v.Members {
		if m.RaftRole == "leader" {
			leaders++
		}
		if m.Timeline != 1 {
			t.Errorf("%s timeline = %d, want 1", m.Name, m.Timeline)
		}
	}
	if leaders != 1 {
		t.Errorf("%d members report Raft leader, want exactly 1: %s", leaders, itest.Describe(v))
	}
	primary := itest.PrimaryOf(t, v)

	t.Run("replicates writes to both standbys", func(t *testing.T) {
		pc := itest.Connect(t, primary.Port)
		ctx := context.Background()
		if _, err := pc.Exec(ctx, "CREATE TABLE IF NOT EXISTS itest (id int PRIMARY KEY, note text)"); err != nil {
			t.Fatal(err)
		}
		if _, err := pc.Exec(ctx, "INSERT INTO itest SELECT g, 'row ' || g FROM generate_series(1, 500) g ON CONFLICT DO NOTHING"); err != nil {
			t.Fatal(err)
		}
		for _, m := range v.Members {
			if m.Name == primary.Name {
				continue
			}
			sc := itest.Connect(t, m.Port)
			wait.For(t, 20*time.Second, m.Name+" to replay 500 rows", func() (bool, string) {
				var n int64
				err := sc.QueryRow(ctx, "SELECT count(*) FROM itest").Scan(&n)
				if err != nil {
					return false, err.Error()
				}
				return n == 500, fmt.Sprintf("%d rows", n)
			})
			if _, err := sc.Exec(ctx, "INSERT INTO itest VALUES (9999, 'x')"); err == nil || !strings.Contains(err.Error(), "read-only") {
				t.Errorf("%s accepted a write or failed oddly: %v", m.Name, err)
			}
		}
		// After the write the standbys catch up to zero lag.
		wait.For(t, 20*time.Second, "zero lag on both standbys", func() (bool, string) {
			cv, err := lc.View(ctx)
			if err != nil {
				return false, err.Error()
			}
			zero := 0
			var lags []string
			for _, m := range cv.Members {
				if m.Role != "leader" && m.Lag != nil && !m.Lag.Unknown && m.Lag.Bytes == 0 {
					zero++
				}
				lags = append(lags, m.Name+"="+m.Lag.String())
			}
			return zero == 2, strings.Join(lags, " ")
		})
		// pg_stat_replication on the primary lists both standbys, by member name.
		var names []string
		rows, err := pc.Query(ctx, "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' ORDER BY 1")
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var n string
			if err := rows.Scan(&n); err != nil {
				t.Fatal(err)
			}
			names = append(names, n)
		}
		if len(names) != 2 {
			t.Errorf("pg_stat_replication streaming standbys = %v, want the two standbys", names)
		}
		// Each standby streams through its own slot.
		if n := itest.QueryInt(t, pc, "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pgha_%' AND active"); n != 2 {
			t.Errorf("active pgha slots on the primary = %d, want 2", n)
		}
	})

	t.Run("REST endpoints answer with Patroni's codes", func(t *testing.T) {
		for _, m := range v.Members {
			isPrimary := m.Name == primary.Name
			want := map[string]int{
				"/primary":         pick(isPrimary, 200, 503),
				"/leader":          pick(isPrimary, 200, 503),
				"/master":          pick(isPrimary, 200, 503),
				"/replica":         pick(isPrimary, 503, 200),
				"/replica?lag=1MB": pick(isPrimary, 503, 200),
				"/read-only":       200,
				"/health":          200,
				"/liveness":        200,
				"/readiness":       200,
				"/cluster":         200,
				"/replica?lag=xyz": 400,
				"/no-such-thing":   404,
			}
			for path, code := range want {
				if got := httpStatus(t, "GET", m.APIURL+path); got != code {
					t.Errorf("%s GET %s = %d, want %d", m.Name, path, got, code)
				}
			}
			// HAProxy's Patroni configs check with OPTIONS.
			if got := httpStatus(t, "OPTIONS", m.APIURL+"/primary"); got != pick(isPrimary, 200, 503) {
				t.Errorf("%s OPTIONS /primary = %d", m.Name, got)
			}
			if got := httpStatus(t, "POST", m.APIURL+"/primary"); got != 405 {
				t.Errorf("%s POST /primary = %d, want 405", m.Name, got)
			}
			// /cluster has Patroni's member fields on every member.
			var raw struct {
				Members []map[string]any `json:"members"`
			}
			getJSON(t, m.APIURL+"/cluster", &raw)
			if len(raw.Members) != 3 {
				t.Fatalf("%s /cluster has %d members", m.Name, len(raw.Members))
			}
			for _, mm := range raw.Members {
				for _, key := range []string{"name", "role", "state", "api_url", "host", "port", "timeline", "epoch", "raft_role", "lsn"} {
					if _, ok := mm[key]; !ok {
						t.Errorf("%s /cluster member %v lacks %q", m.Name, mm["name"], key)
					}
				}
				if mm["role"] != "leader" {
					if _, ok := mm["lag"]; !ok {
						t.Errorf("/cluster replica %v lacks lag", mm["name"])
					}
				}
			}
		}
	})

	t.Run("list prints the cluster", func(t *testing.T) {
		var apis []string
		for _, n := range lc.Nodes() {
			apis = append(apis, n.APIURL)
		}
		out, err := exec.Command(agentBinary, "list", "--api", strings.Join(apis, ",")).CombinedOutput()
		if err != nil {
			t.Fatalf("list: %v\n%s", err, out)
		}
		for _, want := range []string{"Member", "Lag (bytes)", "epoch 1", "Primary", "streaming", "node1", "node2", "node3", primary.Name} {
			if !strings.Contains(string(out), want) {
				t.Errorf("list output lacks %q:\n%s", want, out)
			}
		}
		out, err = exec.Command(agentBinary, "list", "--api", apis[0], "--format", "json").Output()
		if err != nil {
			t.Fatalf("list --format json: %v", err)
		}
		var jv agent.ClusterView
		if err := json.Unmarshal(out, &jv); err != nil || len(jv.Members) != 3 {
			t.Fatalf("list --format json: %v, %d members", err, len(jv.Members))
		}
	})

	t.Run("restart of all agents keeps primary and epoch", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := lc.StopAll(ctx); err != nil {
			t.Fatal(err)
		}
		for _, n := range lc.Nodes() {
			if pid := n.PostmasterPID(); pid != 0 && itest.ProcessAlive(pid) {
				t.Fatalf("%s: PostgreSQL still running after its agent stopped", n.Name)
			}
		}
		if err := lc.StartAll(); err != nil {
			t.Fatal(err)
		}
		v2 := itest.WaitHealthy(t, lc, 3, 90*time.Second)
		if p := itest.PrimaryOf(t, v2); p.Name != primary.Name || v2.Epoch != v.Epoch || v2.ClusterID != v.ClusterID {
			t.Fatalf("after restart primary %s epoch %d cluster %s; before %s %d %s", p.Name, v2.Epoch, v2.ClusterID, primary.Name, v.Epoch, v.ClusterID)
		}
		pc := itest.Connect(t, primary.Port)
		if n := itest.QueryInt(t, pc, "SELECT count(*) FROM itest"); n != 500 {
			t.Fatalf("rows after restart = %d, want 500", n)
		}
	})

	t.Run("a fourth node joins, clones, streams and is removed", func(t *testing.T) {
		n4, err := lc.AddNode("node4", pgtest.FreePort(t), pgtest.FreePort(t), pgtest.FreePort(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := lc.Start(n4); err != nil {
			t.Fatal(err)
		}
		itest.WaitHealthy(t, lc, 4, 90*time.Second)
		c4 := itest.Connect(t, n4.PGPort)
		if n := itest.QueryInt(t, c4, "SELECT count(*) FROM itest"); n != 500 {
			t.Fatalf("node4 has %d rows, want 500", n)
		}
		pc := itest.Connect(t, primary.Port)
		if n := itest.QueryInt(t, pc, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgha_node4'"); n != 1 {
			t.Fatalf("primary has no slot for node4")
		}
		// Remove it through a member that is not necessarily the leader
		// (authenticated by PGHA_TOKEN_FILE, which NewCluster sets).
		out, err := exec.Command(agentBinary, "remove", "node4", "--api", lc.Node("node2").APIURL).CombinedOutput()
		if err != nil {
			t.Fatalf("remove node4: %v\n%s", err, out)
		}
		select {
		case <-n4.Exited():
		case <-time.After(30 * time.Second):
			t.Fatal("node4's agent did not exit after removal")
		}
		wait.For(t, 30*time.Second, "three members and no slot for node4", func() (bool, string) {
			cv, err := lc.View(context.Background())
			if err != nil {
				return false, err.Error()
			}
			slots := itest.QueryInt(t, pc, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgha_node4'")
			return len(cv.Members) == 3 && slots == 0, fmt.Sprintf("%s, node4 slots %d", itest.Describe(cv), slots)
		})
		if pid := n4.PostmasterPID(); pid != 0 && itest.ProcessAlive(pid) {
			t.Errorf("node4's PostgreSQL still runs after removal")
		}
		itest.WaitHealthy(t, lc, 3, 30*time.Second)
	})

	t.Run("a data directory of another cluster is reported and never touched", func(t *testing.T) {
		n5, err := lc.AddNode("node5", pgtest.FreePort(t), pgtest.FreePort(t), pgtest.FreePort(t))
		if err != nil {
			t.Fatal(err)
		}
		foreign := pgtest.NewInstance(t, "foreign")
		if err := foreign.Initdb(context.Background()); err != nil {
			t.Fatal(err)
		}
		foreignID, err := foreign.SystemID(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(foreign.Config().DataDir, n5.PGData); err != nil {
			t.Fatal(err)
		}
		marker := filepath.Join(n5.PGData, "operator-file")
		if err := os.WriteFile(marker, []byte("keep me"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := lc.Start(n5); err != nil {
			t.Fatal(err)
		}
		wait.For(t, 60*time.Second, "node5 to report the foreign data directory", func() (bool, string) {
			cv, err := lc.View(context.Background())
			if err != nil {
				return false, err.Error()
			}
			for _, m := range cv.Members {
				if m.Name == "node5" {
					return strings.Contains(m.Problem, "belongs to another cluster"), m.State + " " + m.Problem
				}
			}
			return false, "node5 not registered"
		})
		inst, err := postgres.New(postgres.Config{BinDir: pgtest.BinDir(t), DataDir: n5.PGData, Port: n5.PGPort, SocketDir: n5.SocketDir, RunAs: pgtest.RunAs()})
		if err != nil {
			t.Fatal(err)
		}
		if id, err := inst.SystemID(context.Background()); err != nil || id != foreignID {
			t.Fatalf("foreign data dir changed: system id %d (%v), want %d", id, err, foreignID)
		}
		if b, err := os.ReadFile(marker); err != nil || string(b) != "keep me" {
			t.Fatalf("operator's file in the foreign data dir was touched: %q %v", b, err)
		}
		if pid := n5.PostmasterPID(); pid != 0 && itest.ProcessAlive(pid) {
			t.Fatalf("the foreign data directory was started")
		}
		authorised(t, http.DefaultClient, "DELETE", n5.APIURL+"/members/node5", lc.Token())
		select {
		case <-n5.Exited():
		case <-time.After(30 * time.Second):
			t.Fatal("node5's agent did not exit after removal")
		}
		itest.WaitHealthy(t, lc, 3, 30*time.Second)
	})
}

func pick(cond bool, a, b int) int {
	if cond {
		return a
	}
	return b
}

// TestRunRefusesBadConfig: a config with a wrong key fails at start with an
// error naming it, and nothing is created.
func TestRunRefusesBadConfig(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(cfg, []byte("name: node1\ndata_dir: "+dir+"/agent\nposgres: {}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(agentBinary, "run", "--config", cfg).CombinedOutput()
	if err == nil {
		t.Fatalf("agent started with a bad config:\n%s", out)
	}
	if !strings.Contains(string(out), "posgres") {
		t.Errorf("error does not name the unknown key:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(dir, "agent")); !os.IsNotExist(err) {
		t.Errorf("a refused config still created the data directory")
	}
}

package failover

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/internal/itest"
	"github.com/pgha/pgha/internal/localcluster"
	"github.com/pgha/pgha/internal/wait"
)

// The cluster-wide configuration in Raft (issue 19), on three real
// servers: the first leader's file becomes version 1 even where another
// node's file disagrees; a reloadable parameter changed with edit-config
// reaches every server without a restart; a parameter that needs one is
// pending_restart on every member and restarts nothing; a bad edit is
// refused with its key named and changes nothing. Timing too: two files
// that disagree on fence_timeout act on the one replicated value, and a
// change reaches every agent; after a shorter one, leases are judged by
// the longer until they have all ended.
func TestClusterConfig(t *testing.T) {
	lc := itest.NewCluster(t, agentBinary, 3, func(o *localcluster.Options) {
		o.Parameters = func(name string) map[string]string {
			if name == "node3" {
				return map[string]string{"work_mem": "7MB"} // one file disagrees
			}
			return nil
		}
		o.FenceTimeout = func(name string) time.Duration {
			if name == "node3" {
				return 3 * time.Second // and on fence_timeout
			}
			return 0 // the default, 1s
		}
	})
	if err := lc.StartAll(); err != nil {
		t.Fatal(err)
	}
	itest.WaitHealthy(t, lc, 3, 90*time.Second)

	show := func(name, setting string) string {
		var v string
		conn := itest.Connect(t, lc.Node(name).PGPort)
		if err := conn.QueryRow(context.Background(), "SELECT current_setting($1)", setting).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	startedAt := func(name string) string {
		var v string
		conn := itest.Connect(t, lc.Node(name).PGPort)
		if err := conn.QueryRow(context.Background(), "SELECT pg_postmaster_start_time()::text").Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	config := func() agent.ConfigView {
		var v agent.ConfigView
		if err := json.Unmarshal([]byte(cli(t, lc, "show-config", "--format", "json")), &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	var v1 agent.ConfigView
	wait.For(t, 30*time.Second, "version 1 of the cluster-wide configuration", func() (bool, string) {
		v1 = config()
		return v1.Version >= 1, fmt.Sprintf("%+v", v1)
	})
	// Version 1 is the first leader's file: node3's work_mem if it led,
	// else none (the server's default). Either way all three agree.
	want := v1.PostgreSQL.Parameters["work_mem"]
	if want == "" {
		want = show("node1", "work_mem") // the server default
	}
	wait.For(t, 30*time.Second, "every server on the replicated work_mem", func() (bool, string) {
		var got []string
		for _, n := range lc.Nodes() {
			got = append(got, show(n.Name, "work_mem"))
		}
		return slices.Equal(got, []string{want, want, want}), fmt.Sprintf("work_mem %v, want %s everywhere (version 1: %v)", got, want, v1.PostgreSQL.Parameters)
	})

	// Every agent acts on version 1's fence_timeout (the first leader's
	// file: 1s, or node3's 3s if it led), whatever its own file says.
	fenceTimeouts := func() []string {
		var out []string
		for _, n := range lc.Nodes() {
			var o agent.Observation
			if err := getJSON(n.APIURL+"/internal/observation", &o); err != nil || o.Safety == nil {
				out = append(out, fmt.Sprintf("%s: %v", n.Name, err))
				continue
			}
			out = append(out, o.Safety.FenceTimeout.String())
		}
		return out
	}
	ft := v1.Timing.FenceTimeout
	if ft != "1s" && ft != "3s" {
		t.Fatalf("version 1's fence_timeout %q is neither file's", ft)
	}
	wait.For(t, 30*time.Second, "every agent on the replicated fence_timeout", func() (bool, string) {
		got := fenceTimeouts()
		return slices.Equal(got, []string{ft, ft, ft}), fmt.Sprintf("%v, want %s on every agent", got, ft)
	})
	if v, err := lc.View(context.Background()); err != nil || slices.ContainsFunc(v.Problems, func(p string) bool { return strings.Contains(p, "disagree") }) {
		t.Errorf("/cluster reports disagreeing members although they act alike: %v %v", err, v.Problems)
	}
	cli(t, lc, "edit-config", "--set", "timing.fence_timeout=2s")
	wait.For(t, 30*time.Second, "every agent on fence_timeout 2s", func() (bool, string) {
		got := fenceTimeouts()
		return slices.Equal(got, []string{"2s", "2s", "2s"}), fmt.Sprint(got)
	})
	// From 3s (node3 led first) to 2s was shorter already: wait until
	// those leases are settled.
	wait.For(t, 15*time.Second, "no lease judged by an earlier fence_timeout", func() (bool, string) {
		c := config()
		return c.PriorFenceTimeout == "", fmt.Sprintf("%+v", c)
	})
	// Shorter: leases granted under 2s may still run for 2s, and are
	// judged so (prior_fence_timeout) until the leader settles them.
	cli(t, lc, "edit-config", "--set", "timing.fence_timeout=1500ms")
	var shorter agent.ConfigView
	wait.For(t, 2*time.Second, "the member show-config asks to apply the change", func() (bool, string) {
		shorter = config()
		return shorter.Timing.FenceTimeout == "1.5s", fmt.Sprintf("%+v", shorter)
	})
	if shorter.PriorFenceTimeout != "2s" {
		t.Errorf("after a shorter fence_timeout: %+v, want the prior 2s kept", shorter)
	}
	wait.For(t, 15*time.Second, "the leases under 2s to be settled", func() (bool, string) {
		c := config()
		return c.PriorFenceTimeout == "" && c.Timing.FenceTimeout == "1.5s", fmt.Sprintf("%+v", c)
	})
	for _, bad := range []struct{ arg, key string }{
		{"timing.fence_timeout=100ms", "timing.fence_timeout"},
		{"timing.fence_timeout=500ms", "raft.election_timeout"},
		{"timing.loop_interval=fast", "timing.loop_interval"},
		{"failover.maximum_lag_on_failover=-1", "failover.maximum_lag_on_failover"},
	} {
		before := config()
		out, err := cliErr(lc, "edit-config", "--set", "timing.health_interval=200ms", "--set", bad.arg)
		if err == nil || !strings.Contains(out, bad.key) {
			t.Errorf("edit-config --set %s: %v, want a refusal naming %s:\n%s", bad.arg, err, bad.key, out)
		}
		if after := config(); after.Version != before.Version || after.Timing != before.Timing {
			t.Errorf("a refused edit changed the configuration: %+v -> %+v", before, after)
		}
	}

	started := map[string]string{}
	for _, n := range lc.Nodes() {
		started[n.Name] = startedAt(n.Name)
	}
	out := cli(t, lc, "edit-config", "--pg", "work_mem=12MB")
	t.Logf("edit-config: %s", out)
	wait.For(t, 30*time.Second, "work_mem 12MB on every server", func() (bool, string) {
		var got []string
		for _, n := range lc.Nodes() {
			got = append(got, show(n.Name, "work_mem"))
		}
		return slices.Equal(got, []string{"12MB", "12MB", "12MB"}), fmt.Sprint(got)
	})

	// reload: an ALTER SYSTEM on one server takes effect there when the
	// operator reloads it, as with pg_ctl reload.
	if _, err := itest.Connect(t, lc.Node("node1").PGPort).Exec(context.Background(), "ALTER SYSTEM SET work_mem = '13MB'"); err != nil {
		t.Fatal(err)
	}
	if out := cli(t, lc, "reload", "node1"); !strings.Contains(out, "reloaded node1") {
		t.Errorf("reload node1: %s", out)
	}
	wait.For(t, 10*time.Second, "node1's ALTER SYSTEM in force", func() (bool, string) {
		return show("node1", "work_mem") == "13MB", show("node1", "work_mem")
	})
	if _, err := itest.Connect(t, lc.Node("node1").PGPort).Exec(context.Background(), "ALTER SYSTEM RESET work_mem"); err != nil {
		t.Fatal(err)
	}
	if out := cli(t, lc, "reload"); !strings.Contains(out, "reloaded node1, node2, node3") {
		t.Errorf("reload of every member: %s", out)
	}
	wait.For(t, 10*time.Second, "node1 back on the cluster-wide work_mem", func() (bool, string) {
		return show("node1", "work_mem") == "12MB", show("node1", "work_mem")
	})

	cli(t, lc, "edit-config", "--pg", "shared_buffers=48MB")
	wait.For(t, 30*time.Second, "shared_buffers pending restart on every member", func() (bool, string) {
		v, err := lc.View(context.Background())
		if err != nil {
			return false, err.Error()
		}
		n := 0
		for _, m := range v.Members {
			if slices.Contains(m.PendingRestart, "shared_buffers") {
				n++
			}
		}
		return n == 3, itest.Describe(v)
	})
	wait.For(t, 10*time.Second, "list to say who needs a restart", func() (bool, string) {
		out := cli(t, lc, "list") // any member answers, from its own polls
		return strings.Count(out, "needs a restart for: shared_buffers") == 3, out
	})
	for _, n := range lc.Nodes() {
		if at := startedAt(n.Name); at != started[n.Name] {
			t.Errorf("%s restarted (postmaster started %s, before %s): pgha must leave that to the operator", n.Name, at, started[n.Name])
		}
	}

	// pg_hba lines for every member, after pgha's own, in force at once.
	rule := "host all pgha_test_nobody 127.0.0.1/32 reject"
	cli(t, lc, "edit-config", "--hba-add", rule)
	wait.For(t, 30*time.Second, "the pg_hba line on every server", func() (bool, string) {
		n := 0
		for _, node := range lc.Nodes() {
			var found bool
			err := itest.Connect(t, node.PGPort).QueryRow(context.Background(),
				"SELECT count(*) > 0 FROM pg_hba_file_rules WHERE 'pgha_test_nobody' = ANY(user_name) AND auth_method = 'reject' AND error IS NULL").Scan(&found)
			if err == nil && found {
				n++
			}
		}
		return n == 3, fmt.Sprintf("%d of 3", n)
	})
	if out, err := cliErr(lc, "edit-config", "--hba-add", "hots all all 10.0.0.0/8 trust"); err == nil || !strings.Contains(out, "connection type") {
		t.Errorf("a bad pg_hba line was not refused: %v\n%s", err, out)
	}
	cli(t, lc, "edit-config", "--hba-remove", rule)

	// Tags at run time: noloadbalance on a standby makes its /replica 503,
	// and removing it (back to the file's value) makes it 200 again.
	v := itest.WaitHealthy(t, lc, 3, 60*time.Second)
	var standby string
	for _, m := range v.Members {
		if m.Role != "leader" {
			standby = m.Name
		}
	}
	replica := func() int {
		resp, err := http.Get(lc.Node(standby).APIURL + "/replica")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := replica(); code != http.StatusOK {
		t.Fatalf("/replica on %s: %d before any tag", standby, code)
	}
	cli(t, lc, "tag", standby, "noloadbalance=true")
	wait.For(t, 10*time.Second, standby+"'s /replica to answer 503", func() (bool, string) { c := replica(); return c == http.StatusServiceUnavailable, fmt.Sprint(c) })
	if out, err := cliErr(lc, "tag", standby, "nofailover=perhaps"); err == nil || !strings.Contains(out, "nofailover") {
		t.Errorf("a bad tag value was not refused: %v\n%s", err, out)
	}
	cli(t, lc, "tag", standby, "noloadbalance=")
	wait.For(t, 10*time.Second, standby+"'s /replica to answer 200 again", func() (bool, string) { c := replica(); return c == http.StatusOK, fmt.Sprint(c) })

	before := config()
	for _, bad := range []struct{ arg, key string }{
		{"port=6000", `"port"`},
		{"synchronous_standby_names=*", `"synchronous_standby_names"`},
		{"bad name=1", `"bad name"`},
		{"synchronous_commit=local", `"synchronous_commit"`},
	} {
		out, err := cliErr(lc, "edit-config", "--pg", "work_mem=1MB", "--pg", bad.arg)
		if err == nil || !strings.Contains(out, bad.key) {
			t.Errorf("edit-config --pg %s: %v, want a refusal naming %s:\n%s", bad.arg, err, bad.key, out)
		}
	}
	if after := config(); after.Version != before.Version || after.PostgreSQL.Parameters["work_mem"] != "12MB" {
		t.Errorf("a refused edit changed the configuration: %+v -> %+v", before, after)
	}
}

// getJSON decodes the body of a GET of url into v.
func getJSON(url string, v any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

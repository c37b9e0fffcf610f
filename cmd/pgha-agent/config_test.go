package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/pgha/pgha/agent"
)

// edit-config shows what it changes and sends only that: changed values,
// and null for the removed ones (a JSON merge patch).
func TestConfigDiffAndPatch(t *testing.T) {
	cur := map[string]string{"work_mem": "4MB", "old": "x", "same": "1"}
	next := map[string]string{"work_mem": "8MB", "new": "y", "same": "1"}
	diff := strings.Join(configDiff(cur, next), "\n")
	want := "+ postgresql.parameters.new: y\n~ postgresql.parameters.work_mem: 4MB -> 8MB\n- postgresql.parameters.old (was x)"
	if diff != want {
		t.Errorf("diff:\n%s\nwant:\n%s", diff, want)
	}
	p := mergePatch(cur, next)
	if len(p) != 3 || p["work_mem"] != "8MB" || p["new"] != "y" || p["old"] != nil {
		t.Errorf("patch %v", p)
	}
	if _, ok := p["old"]; !ok {
		t.Error("the removed parameter is not in the patch as null")
	}
	out := renderConfig(agent.ConfigView{Version: 7, PostgreSQL: agent.ConfigPostgresView{Parameters: next}})
	if !strings.Contains(out, "version 7") || !strings.Contains(out, "work_mem: 8MB") {
		t.Errorf("show-config:\n%s", out)
	}
}

// --set changes timing and failover settings by SECTION.KEY, typed as the
// current value; the patch holds only what changed, in its section.
func TestSetSettings(t *testing.T) {
	cur := agent.ConfigView{
		Timing:   agent.TimingView{LoopInterval: "1s", HealthInterval: "100ms", FenceTimeout: "1s", SwitchoverTimeout: "15s"},
		Failover: agent.FailoverView{SynchronousMode: true, MaximumLagOnFailover: 1048576, MaximumLagOnSwitchover: 16777216, PrimaryRestartWindow: "0s"},
	}
	next := settingsOf(cur)
	for _, kv := range []string{"timing.fence_timeout=2s", "failover.synchronous_mode=false", "failover.maximum_lag_on_failover=2097152"} {
		if err := setSetting(next, kv); err != nil {
			t.Fatalf("--set %s: %v", kv, err)
		}
	}
	patch, lines := settingsDiff(settingsOf(cur), next)
	want := "~ failover.maximum_lag_on_failover: 1048576 -> 2097152\n~ failover.synchronous_mode: true -> false\n~ timing.fence_timeout: 1s -> 2s"
	if got := strings.Join(lines, "\n"); got != want {
		t.Errorf("diff:\n%s\nwant:\n%s", got, want)
	}
	b, _ := json.Marshal(patch)
	if got := string(b); got != `{"failover":{"maximum_lag_on_failover":2097152,"synchronous_mode":false},"timing":{"fence_timeout":"2s"}}` {
		t.Errorf("patch %s", got)
	}
	for kv, want := range map[string]string{
		"timing.fence=2s":                      "unknown key",
		"fence_timeout=2s":                     "unknown key",
		"failover.synchronous_mode=yes":        "not true or false",
		"failover.maximum_lag_on_failover=1MB": "not a whole number",
		"timing.fence_timeout":                 "want SECTION.KEY=VALUE",
	} {
		if err := setSetting(settingsOf(cur), kv); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("--set %s: %v, want an error saying %q", kv, err, want)
		}
	}
	// Lists: comma-separated, or JSON for lines with commas or spaces.
	cur.Router = agent.RouterView{WriteFunctions: []string{"nextval"}, HBA: []string{}}
	next = settingsOf(cur)
	for _, kv := range []string{"router.write_functions=nextval, setval", `router.hba=["host all all 10.0.0.0/8 scram-sha-256"]`} {
		if err := setSetting(next, kv); err != nil {
			t.Fatalf("--set %s: %v", kv, err)
		}
	}
	patch, _ = settingsDiff(settingsOf(cur), next)
	b, _ = json.Marshal(patch["router"])
	if got := string(b); got != `{"hba":["host all all 10.0.0.0/8 scram-sha-256"],"write_functions":["nextval","setval"]}` {
		t.Errorf("router patch %s", got)
	}
	out := renderConfig(cur)
	if !strings.Contains(out, "fence_timeout: 1s") || !strings.Contains(out, "synchronous_mode: true") {
		t.Errorf("show-config:\n%s", out)
	}
}

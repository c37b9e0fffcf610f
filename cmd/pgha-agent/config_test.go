package main

import (
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

package agent

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
)

// The Grafana dashboard queries only metrics that pgha exports, under the
// names it exports them, and is JSON Grafana can import.
func TestGrafanaDashboardMetricsExist(t *testing.T) {
	raw, err := os.ReadFile("../examples/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title  string
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	if d.Title == "" || len(d.Panels) == 0 {
		t.Fatal("dashboard without title or panels")
	}
	var exported strings.Builder
	for _, f := range []string{"metrics.go", "../router/metrics.go"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		exported.Write(b)
	}
	name := regexp.MustCompile(`pgha_[a-z_]+`)
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			for _, m := range name.FindAllString(tg.Expr, -1) {
				if !strings.Contains(exported.String(), `"`+m+`"`) && !strings.Contains(exported.String(), `"`+strings.TrimPrefix(m, "pgha_router_")+`"`) {
					t.Errorf("panel %q queries %s, which pgha does not export", p.Title, m)
				}
			}
		}
	}
}

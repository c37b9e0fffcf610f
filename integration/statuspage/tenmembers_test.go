package statuspage

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/agent/statuspage"
	"github.com/pgha/pgha/internal/wait"
)

// The page stays usable with ten members (the bound): every member
// is drawn, no two boxes overlap, every arrow is there (cascading standbys
// included), every standby has its lag chart, and nothing scrolls
// sideways. The page's own files are served with a /status of ten members
// that this test makes up: a ten-node loopback cluster would cost CI
// minutes for what is a question of layout.
func TestStatusPageTenMembers(t *testing.T) {
	chrome := chromium(t)
	now := time.Now()
	rep := agent.StatusReport{Node: "node01", AgentStarted: now.Add(-time.Hour), LagWindow: 3600, Lag: map[string][]agent.LagPoint{},
		Cluster: agent.ClusterView{Scope: "ten", Epoch: 7, RaftLeader: "node01", RaftTerm: 12, SyncStandbys: []string{"node02"}}}
	arrows := 0
	for i := 1; i <= 10; i++ {
		m := agent.MemberStatus{Name: fmt.Sprintf("node%02d", i), Role: "replica", State: "streaming", Reachable: true, RaftRole: "follower", RaftSuffrage: "voter", Timeline: 3, Lag: &agent.Lag{Bytes: int64(i) << 20}}
		switch {
		case i == 1:
			m.Role, m.State, m.RaftRole, m.Lag = "leader", "running", "leader", nil
		case i <= 7:
			m.Upstream = "node01"
		case i <= 9:
			m.Upstream = "node02" // cascading
		default:
			m.Reachable, m.State, m.Fenced, m.RaftRole, m.Lag = false, "unknown", true, "unknown", &agent.Lag{Unknown: true}
		}
		if i == 2 {
			m.Role = "sync_standby"
		}
		if i == 3 {
			m.RaftSuffrage, m.PendingRestart = "nonvoter", []string{"shared_buffers"}
		}
		if m.Upstream != "" {
			arrows++
		}
		rep.Cluster.Members = append(rep.Cluster.Members, m)
		if i > 1 {
			for s := 0; s < 600; s++ {
				rep.Lag[m.Name] = append(rep.Lag[m.Name], agent.LagPoint{At: now.Add(time.Duration(s-600) * time.Second).UnixMilli(), Bytes: int64(s * i), Seconds: float64(s%60) / 10})
			}
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { w.Write(statuspage.Index()) })
	mux.HandleFunc("GET /ui/{file}", func(w http.ResponseWriter, r *http.Request) {
		b, ct, ok := statuspage.Asset(r.PathValue("file"))
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", ct)
		w.Write(b)
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) { json.NewEncoder(w).Encode(rep) })
	srv := httptest.NewServer(mux)
	defer srv.Close()

	b := newBrowser(t, chrome)
	b.do(t, chromedp.Navigate(srv.URL+"/"))
	type box struct {
		Name, Role string
		X, Y, W, H float64
	}
	type layout struct {
		Boxes          []box
		Edges, LagRows int
		Scroll, Width  float64
	}
	var l layout
	wait.For(t, 10*time.Second, "ten members drawn", func() (bool, string) {
		l = evaluate[layout](t, b, `(() => ({
			boxes: Array.from(document.querySelectorAll("#members .member")).map(g => {
				const r = g.querySelector("rect").getBoundingClientRect();
				return {name: g.dataset.name, role: g.dataset.role, x: r.x, y: r.y, w: r.width, h: r.height};
			}),
			edges: document.querySelectorAll("#members line.edge").length,
			lagRows: Array.from(document.querySelectorAll("#lag .lag-row")).filter(r => Number(r.dataset.points) > 0).length,
			scroll: document.documentElement.scrollWidth, width: window.innerWidth,
		}))()`)
		return len(l.Boxes) == 10, fmt.Sprintf("%+v", l)
	})
	for i, a := range l.Boxes {
		if a.W < 150 { // 190 px in a 1280 px window; all ten on one row would be about 110
			t.Errorf("%s drawn %.0f px wide: too small to read", a.Name, a.W)
		}
		for _, c := range l.Boxes[i+1:] {
			if a.X < c.X+c.W && c.X < a.X+a.W && a.Y < c.Y+c.H && c.Y < a.Y+a.H {
				t.Errorf("%s and %s overlap: %+v %+v", a.Name, c.Name, a, c)
			}
		}
	}
	if l.Edges != arrows || l.LagRows != 9 || l.Scroll > l.Width {
		t.Errorf("%d arrows (want %d), %d lag charts with points (want 9), page %.0f px wide in a %.0f px window", l.Edges, arrows, l.LagRows, l.Scroll, l.Width)
	}
	b.screenshot(t)
	if errs := b.jsErrors(); len(errs) > 0 {
		t.Errorf("the page's script threw: %v", errs)
	}
}

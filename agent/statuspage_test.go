package agent

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/pgha/pgha/agent/statuspage"
)

// GET / is the page and only exactly "/": every other unknown path keeps
// the JSON 404; the page's files and its JSON are served; the page loads
// nothing from outside this agent.
func TestStatusPageRoutes(t *testing.T) {
	_, h := restAgent(t)
	get := func(method, path string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(method, path, nil))
		return w
	}
	page := get("GET", "/")
	if page.Code != 200 || !strings.HasPrefix(page.Header().Get("Content-Type"), "text/html") || !strings.Contains(page.Body.String(), `src="/ui/app.js"`) {
		t.Fatalf("GET /: %d %q %.200s", page.Code, page.Header().Get("Content-Type"), page.Body)
	}
	if csp := page.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Errorf("GET /: Content-Security-Policy %q", csp)
	}
	for path, ct := range map[string]string{"/ui/app.js": "text/javascript", "/ui/style.css": "text/css"} {
		if w := get("GET", path); w.Code != 200 || !strings.HasPrefix(w.Header().Get("Content-Type"), ct) || w.Body.Len() == 0 {
			t.Errorf("GET %s: %d %q", path, w.Code, w.Header().Get("Content-Type"))
		}
	}
	for _, c := range []struct{ method, path string }{
		{"GET", "/nope"}, {"GET", "/index.html"}, {"GET", "/ui/nope.js"}, {"GET", "/ui/statuspage.go"},
		{"GET", "/ui/index.html"}, {"POST", "/"}, {"GET", "/status/x"},
	} {
		w := get(c.method, c.path)
		var body apiError
		if w.Code != 404 || !strings.HasPrefix(w.Header().Get("Content-Type"), "application/json") || json.Unmarshal(w.Body.Bytes(), &body) != nil || body.Error == "" {
			t.Errorf("%s %s: %d %q %s, want the JSON 404", c.method, c.path, w.Code, w.Header().Get("Content-Type"), w.Body)
		}
	}
	for _, m := range []string{"GET", "HEAD", "OPTIONS"} {
		if w := get(m, "/liveness"); w.Code == 404 || w.Code == 405 {
			t.Errorf("%s /liveness: %d", m, w.Code)
		}
		if w := get(m, "/health"); w.Code != 503 { // no PostgreSQL runs here
			t.Errorf("%s /health: %d, want 503", m, w.Code)
		}
	}

	st := get("GET", "/status?since=0")
	var rep StatusReport
	if st.Code != 200 || json.Unmarshal(st.Body.Bytes(), &rep) != nil {
		t.Fatalf("GET /status: %d %s", st.Code, st.Body)
	}
	if rep.Node != "node1" || !rep.AuthRequired || len(rep.Cluster.Members) != 1 || rep.Cluster.Members[0].RaftSuffrage != "voter" || rep.Cluster.RaftTerm == 0 || rep.Lag == nil || rep.LagWindow != 3600 {
		t.Fatalf("GET /status: %+v", rep)
	}

	// Nothing external: the only URL in the page's files is SVG's namespace
	// (an identifier, never fetched).
	url := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}`)
	files := map[string][]byte{"index.html": statuspage.Index()}
	for _, f := range []string{"app.js", "style.css"} {
		files[f], _, _ = statuspage.Asset(f)
	}
	for name, b := range files {
		for _, u := range url.FindAllString(string(b), -1) {
			if u != "http://www.w3.org" {
				t.Errorf("%s refers to %s: the page must work with no internet", name, u)
			}
		}
	}
}

// The page is readable where /cluster is: open without TLS, with TLS only
// with a cluster certificate or the token.
func TestStatusPageReadableWhereClusterIs(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})
	for _, withTLS := range []bool{false, true} {
		for _, cred := range []string{"", "peer", "token", "wrong token"} {
			code := func(path string) int {
				r := httptest.NewRequest("GET", path, nil)
				switch cred {
				case "peer":
					r = withPeer(r, "node2")
				case "token":
					r.Header.Set("Authorization", "Bearer "+testToken)
				case "wrong token":
					r.Header.Set("Authorization", "Bearer nope")
				}
				w := httptest.NewRecorder()
				authAgent(testToken, withTLS).guardInternal(ok).ServeHTTP(w, r)
				return w.Code
			}
			want := code("/cluster")
			for _, path := range []string{"/", "/status", "/ui/app.js", "/ui/style.css"} {
				if got := code(path); got != want {
					t.Errorf("tls=%v credentials %q: GET %s %d, GET /cluster %d", withTLS, cred, path, got, want)
				}
			}
			if withTLS && cred == "" && want != http.StatusUnauthorized {
				t.Errorf("tls without credentials: /cluster %d, want 401", want)
			}
		}
	}
}

// The page's actions are the control endpoints, with their authentication:
// without the token (or with a wrong one) they are refused and change
// nothing; with it they work.
func TestStatusPageActionsNeedToken(t *testing.T) {
	a, h := restAgent(t)
	app, _, _ := statuspage.Asset("app.js")
	for _, call := range []string{`control("POST", "/switchover"`, `control("POST", "/pause")`, `control("POST", "/resume")`} {
		if !strings.Contains(string(app), call) {
			t.Fatalf("app.js does not call %s: the test below would not cover the page's actions", call)
		}
	}
	do := func(path, auth, body string) int {
		r := httptest.NewRequest("POST", path, strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	before := a.node.State()
	for _, c := range []struct {
		path, auth, body string
		want             int
	}{
		{"/switchover", "", `{"leader": "node1", "candidate": "node2"}`, 401},
		{"/switchover", "Bearer wrong", `{"leader": "node1", "candidate": "node2"}`, 403},
		{"/pause", "", "", 401},
		{"/pause", "Bearer wrong", "", 403},
		{"/resume", "", "", 401},
	} {
		if got := do(c.path, c.auth, c.body); got != c.want {
			t.Errorf("POST %s with %q: %d, want %d", c.path, c.auth, got, c.want)
		}
	}
	if after := a.node.State(); after.Paused != before.Paused || after.Epoch != before.Epoch || after.Switchover != before.Switchover {
		t.Fatalf("refused calls changed the cluster: %+v -> %+v", before, after)
	}
	token := "Bearer " + a.cfg.API.Token()
	// Another site's page, in a browser that holds the credentials (a
	// cluster certificate is attached by the browser itself): refused
	// whatever it carries, before the credentials are looked at.
	for _, h2 := range []map[string]string{
		{"Sec-Fetch-Site": "cross-site"},
		{"Origin": "https://evil.example"},
	} {
		r := httptest.NewRequest("POST", "/pause", nil)
		r.Header.Set("Authorization", token)
		for k, v := range h2 {
			r.Header.Set(k, v)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != 403 || !strings.Contains(w.Body.String(), "cross-origin") || a.node.State().Paused {
			t.Fatalf("POST /pause from another site (%v): %d %s, paused %v", h2, w.Code, w.Body.String(), a.node.State().Paused)
		}
	}
	// The page's own calls are same-origin.
	r := httptest.NewRequest("POST", "http://agent:8008/pause", nil)
	r.Header.Set("Authorization", token)
	r.Header.Set("Sec-Fetch-Site", "same-origin")
	r.Header.Set("Origin", "http://agent:8008")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 200 || !a.node.State().Paused {
		t.Fatalf("POST /pause from the page itself: %d %s, paused %v", w.Code, w.Body.String(), a.node.State().Paused)
	}
}

// Package statuspage drives the agents' status page (GET /) in a real
// headless Chromium against a loopback cluster of real agents and real
// PostgreSQL servers: what an operator sees, and what its buttons do.
package statuspage

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/internal/itest"
	"github.com/pgha/pgha/internal/wait"
)

var agentBinary string

func TestMain(m *testing.M) { itest.Main(m, &agentBinary) }

// pageState is what the page shows, read from its DOM: the picture's
// members (data-role is what the box says), its arrows, the lag rows, the
// timeline, the last action's answer and the router's route table.
type pageState struct {
	Members []struct{ Name, Role string }
	Edges   []struct{ From, To string }
	Lag     []struct {
		Member  string
		Points  int
		Bytes   float64 // -1: no sample yet
		Seconds float64
	}
	Events []struct{ Kind, Member, Source, Text string }
	Result struct{ Status, Text string }
	Routes [][]string // the route table's rows: route, per second, bar, total
	Error  string     // the banner shown when the agent does not answer
}

const readPage = `(() => {
  const q = s => Array.from(document.querySelectorAll(s));
  const num = v => v === undefined || v === "" ? -1 : Number(v);
  return {
    members: q("#members .member").map(g => ({name: g.dataset.name, role: g.dataset.role})),
    edges: q("#members line.edge").map(l => ({from: l.dataset.from, to: l.dataset.to})),
    lag: q("#lag .lag-row").map(r => ({member: r.dataset.member, points: Number(r.dataset.points), bytes: num(r.dataset.bytes), seconds: num(r.dataset.seconds)})),
    events: q("#events li").map(li => ({kind: li.dataset.kind, member: li.dataset.member, source: li.dataset.source, text: li.textContent})),
    result: {status: document.getElementById("action-result").dataset.status || "", text: document.getElementById("action-result").textContent},
    routes: q("#routes tr").map(tr => Array.from(tr.children).map(c => c.textContent)),
    error: document.getElementById("fetch-error").hidden ? "" : document.getElementById("fetch-error").textContent,
  };
})()`

func (p pageState) role(name string) string {
	for _, m := range p.Members {
		if m.Name == name {
			return m.Role
		}
	}
	return ""
}

func (p pageState) String() string {
	var ms []string
	for _, m := range p.Members {
		ms = append(ms, m.Name+"="+m.Role)
	}
	return fmt.Sprintf("members %v edges %v lag %+v result %+v error %q, %d events", ms, p.Edges, p.Lag, p.Result, p.Error, len(p.Events))
}

// pictureRole is the role the page must draw for a member of /cluster.
func pictureRole(m agent.MemberStatus) string {
	switch m.Role {
	case "leader":
		return "primary"
	case "sync_standby":
		return "sync_standby"
	}
	return "replica"
}

// TestStatusPage runs one cluster and one browser for every subtest (CI's
// budget: about half a minute in all).
func TestStatusPage(t *testing.T) {
	chrome := chromium(t)
	lc := itest.NewCluster(t, agentBinary, 3)
	if err := lc.StartAll(); err != nil {
		t.Fatal(err)
	}
	v := itest.WaitHealthy(t, lc, 3, 90*time.Second)
	primary := itest.PrimaryOf(t, v).Name
	var standbys []string
	for _, m := range v.Members {
		if m.Name != primary {
			standbys = append(standbys, m.Name)
		}
	}
	// The page is served by an agent that is not the Raft leader, so the
	// router's counters come through it from the leader.
	host := lc.Node(standbys[0])
	for _, m := range v.Members {
		if m.Name != v.RaftLeader {
			host = lc.Node(m.Name)
		}
	}
	target, lagging := standbys[0], standbys[1] // the switchover's candidate; the standby whose replay is paused
	t.Logf("primary %s, standbys %v, Raft leader %s, page served by %s", primary, standbys, v.RaftLeader, host.Name)

	b := newBrowser(t, chrome)
	started := time.Now()
	b.do(t, chromedp.Navigate(host.APIURL+"/"))
	read := func() pageState { return evaluate[pageState](t, b, readPage) }

	t.Run("ThreeMembersWithRoles", func(t *testing.T) {
		wait.For(t, 15*time.Second, "the page to draw the cluster as /cluster shows it", func() (bool, string) {
			p := read()
			v, err := lc.View(context.Background())
			if err != nil {
				return false, err.Error()
			}
			if len(p.Members) != 3 || p.role(primary) != "primary" {
				return false, p.String()
			}
			for _, m := range v.Members {
				if p.role(m.Name) != pictureRole(m) {
					return false, fmt.Sprintf("%s drawn %q, /cluster says %s; %s", m.Name, p.role(m.Name), m.Role, p)
				}
			}
			arrows := 0
			for _, e := range p.Edges {
				if e.From == primary {
					arrows++
				}
			}
			return arrows == 2, p.String() // each standby streams from the primary
		})
		t.Logf("page showed the cluster %.1fs after navigating", time.Since(started).Seconds())
	})

	t.Run("SwitchoverRefusedWithoutToken", func(t *testing.T) {
		before, err := lc.View(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		b.do(t, chromedp.SetValue(chromedp.ID("candidate"), target), chromedp.Click(chromedp.ID("switchover")),
			chromedp.WaitVisible(chromedp.ID("confirm")), chromedp.Click(chromedp.ID("confirm-yes")))
		wait.For(t, 10*time.Second, "the page to show the refusal", func() (bool, string) {
			p := read()
			return p.Result.Status == "401" && strings.Contains(p.Result.Text, "authentication required"), fmt.Sprintf("%+v", p.Result)
		})
		after, err := lc.View(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if itest.Primary(after) != primary || after.Epoch != before.Epoch {
			t.Fatalf("a refused switchover changed the cluster: %s -> %s", itest.Describe(before), itest.Describe(after))
		}
	})

	t.Run("LaggingStandbyShowsGrowingLag", func(t *testing.T) {
		// Writes go through the router, so the page's router table counts them.
		_, port, _ := net.SplitHostPort(lc.RouterAddr())
		rp, _ := strconv.Atoi(port)
		writer := itest.Connect(t, rp)
		mustExec(t, writer, "CREATE TABLE statuspage_lag (id serial PRIMARY KEY, pad text)")
		replica := itest.Connect(t, lc.Node(lagging).PGPort)
		mustExec(t, replica, "SELECT pg_wal_replay_pause()")
		resumed := false
		resume := func() {
			if !resumed {
				mustExec(t, replica, "SELECT pg_wal_replay_resume()")
				resumed = true
			}
		}
		t.Cleanup(resume)
		write := func() {
			mustExec(t, writer, "INSERT INTO statuspage_lag (pad) SELECT repeat('x', 1000) FROM generate_series(1, 20)")
		}
		var first pageState
		firstLag := func(p pageState) (float64, float64, int) {
			for _, l := range p.Lag {
				if l.Member == lagging {
					return l.Bytes, l.Seconds, l.Points
				}
			}
			return -1, -1, 0
		}
		wait.For(t, 15*time.Second, lagging+"'s lag to show on the page", func() (bool, string) {
			write()
			first = read()
			bytes, secs, _ := firstLag(first)
			return bytes > 0 && secs > 0, first.String()
		})
		b0, s0, _ := firstLag(first)
		wait.For(t, 15*time.Second, lagging+"'s lag to grow on the page", func() (bool, string) {
			write()
			p := read()
			bytes, secs, points := firstLag(p)
			return bytes > b0 && secs > s0+1 && points >= 3, fmt.Sprintf("from %.0f B %.1f s: %s", b0, s0, p)
		})
		p := read()
		bytes, secs, points := firstLag(p)
		t.Logf("%s's lag on the page grew from %.0f B / %.1f s to %.0f B / %.1f s (%d points)", lagging, b0, s0, bytes, secs, points)
		wait.For(t, 10*time.Second, "the router's writes to show on the page", func() (bool, string) {
			p := read()
			for _, r := range p.Routes {
				if len(r) == 4 && r[0] == "writes → primary" {
					n, err := strconv.Atoi(r[3])
					return err == nil && n > 0, fmt.Sprint(r)
				}
			}
			return false, fmt.Sprint(p.Routes)
		})
		resume()
		itest.WaitHealthy(t, lc, 3, 30*time.Second)
	})

	t.Run("SwitchoverWithToken", func(t *testing.T) {
		b.do(t, chromedp.SendKeys(chromedp.ID("token"), lc.Token()), chromedp.SetValue(chromedp.ID("candidate"), target),
			chromedp.Click(chromedp.ID("switchover")), chromedp.WaitVisible(chromedp.ID("confirm")))
		asked := time.Now()
		b.do(t, chromedp.Click(chromedp.ID("confirm-yes")))
		wait.For(t, 10*time.Second, "the picture and the timeline to show "+target+" as the new primary", func() (bool, string) {
			p := read()
			if p.role(target) != "primary" {
				return false, p.String()
			}
			for _, e := range p.Events {
				if e.Kind == "switchover" && e.Member == target && e.Source == "history" && strings.Contains(e.Text, primary+" → "+target) {
					return true, ""
				}
			}
			return false, fmt.Sprintf("no switchover to %s in the timeline: %+v", target, p.Events)
		})
		t.Logf("the page showed %s as primary, with the switchover in its timeline, %.1fs after the confirmation", target, time.Since(asked).Seconds())
		wait.For(t, 10*time.Second, "the page to report the switchover done", func() (bool, string) {
			p := read()
			return p.Result.Status == "200", fmt.Sprintf("%+v", p.Result)
		})
		v, err := lc.View(context.Background())
		if err != nil || itest.Primary(v) != target {
			t.Fatalf("/cluster after the page's switchover: %s %v", itest.Describe(v), err)
		}
		// The old primary rejoins as a standby: wait, so the screenshot shows a converged cluster.
		itest.WaitHealthy(t, lc, 3, 30*time.Second)
		wait.For(t, 10*time.Second, "the page to show "+primary+" as a standby", func() (bool, string) {
			p := read()
			return p.role(primary) == "replica" || p.role(primary) == "sync_standby", p.String()
		})
	})

	b.screenshot(t)
	if errs := b.jsErrors(); len(errs) > 0 {
		t.Errorf("the page's script threw: %v", errs)
	}
	t.Logf("TestStatusPage's browser part took %.1fs", time.Since(started).Seconds())
}

// chromium is the browser's path. Outside CI a missing browser skips the
// test; under CI=true it fails it (.ci/run installs Debian's chromium).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no chromium on PATH and CI=true: the status page's test must run in CI (apt-get install chromium)")
	}
	t.Skip("no chromium on PATH (apt-get install --no-install-recommends chromium)")
	return ""
}

// browser is one headless Chromium tab and the script errors it reported.
type browser struct {
	ctx  context.Context
	mu   sync.Mutex
	errs []string
}

func newBrowser(t *testing.T, path string) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox, // the tests run as root, where Chromium's sandbox refuses to start
		chromedp.DisableGPU,
		chromedp.WindowSize(1280, 1024),
	)
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	b := &browser{ctx: ctx}
	// The first call starts the browser: no timeout on it (it would stop the browser).
	if err := chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*runtime.EventExceptionThrown); ok && e.ExceptionDetails != nil {
			d := e.ExceptionDetails
			msg := fmt.Sprintf("%s at %s:%d:%d", d.Text, d.URL, d.LineNumber+1, d.ColumnNumber+1)
			if d.Exception != nil && d.Exception.Description != "" {
				msg += ": " + d.Exception.Description
			}
			b.mu.Lock()
			b.errs = append(b.errs, msg)
			b.mu.Unlock()
		}
	}); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return b
}

func (b *browser) jsErrors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.errs...)
}

func (b *browser) do(t *testing.T, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 15*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("browser: %v", err)
	}
}

func evaluate[T any](t *testing.T, b *browser, expr string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate in the page: %v", err)
	}
	return v
}

// screenshot saves the whole page as a PNG, a test artifact: in
// $PGHA_TEST_ARTIFACTS if set, else the temporary directory; the path is
// logged.
func (b *browser) screenshot(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 15*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Errorf("screenshot: %v", err)
		return
	}
	dir := os.Getenv("PGHA_TEST_ARTIFACTS")
	if dir == "" {
		dir = os.TempDir()
	}
	path := filepath.Join(dir, fmt.Sprintf("pgha-%s-%s.png", strings.ReplaceAll(t.Name(), "/", "-"), time.Now().Format("20060102-150405")))
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Errorf("save screenshot: %v", err)
		return
	}
	t.Logf("screenshot of the status page: %s (%d kB)", path, len(png)/1024)
}

func mustExec(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

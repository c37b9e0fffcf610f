package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgha/pgha/internal/localcluster"
	"github.com/pgha/pgha/postgres/pgtest"
)

// TestDemo runs the README's main command as a user would: the demo comes up
// with one primary and two streaming standbys on the documented ports, the
// psql command it prints works as printed, Ctrl-C leaves nothing running, and
// running it again on the same --dir resumes the same cluster.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test; skipped with -short")
	}
	bin := pgtest.BinDir(t)
	dir := pgtest.TempDir(t)
	for _, port := range []int{8008, 8009, 8010, 8300, 8301, 8302, 5433, 5434, 5435} {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatalf("the demo's port %d is taken on this machine: %v", port, err)
		}
		ln.Close()
	}

	first := runDemoUntilReady(t, dir, bin)
	psqlLine := regexp.MustCompile(`psql -h 127\.0\.0\.1 -p (\d+) -U postgres`).FindString(first)
	if psqlLine == "" {
		t.Fatalf("the demo printed no psql command:\n%s", first)
	}
	// The first screen says ready only once nothing is waited for.
	if strings.Contains(first, "commits wait") || strings.Contains(first, "  leader: ") {
		t.Errorf("the demo said ready while the leader still waits:\n%s", first)
	}
	for _, want := range []string{"http://127.0.0.1:8008", "http://127.0.0.1:8009", "http://127.0.0.1:8010", "streaming", "Primary",
		"export PGHA_TOKEN_FILE=" + filepath.Join(dir, "secrets", "api.token")} {
		if !strings.Contains(first, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	args := strings.Fields(psqlLine)
	psql := exec.Command(args[0], append(args[1:], "-X", "-A", "-t", "-c", "SELECT 40 + 2")...)
	out, err := psql.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "42" {
		t.Fatalf("the printed psql command failed: %v\n%s", err, out)
	}
	v1, err := localcluster.FetchView(context.Background(), "http://127.0.0.1:8008")
	if err != nil {
		t.Fatal(err)
	}
	stopDemo(t)
	assertNothingListening(t)

	second := runDemoUntilReady(t, dir, bin)
	if !strings.Contains(second, "Resuming") {
		t.Errorf("second start did not say it resumes:\n%s", second)
	}
	v2, err := localcluster.FetchView(context.Background(), "http://127.0.0.1:8009")
	if err != nil {
		t.Fatal(err)
	}
	if v2.ClusterID != v1.ClusterID || v2.SystemID != v1.SystemID {
		t.Errorf("resumed a different cluster: %s/%s, first %s/%s", v2.ClusterID, v2.SystemID, v1.ClusterID, v1.SystemID)
	}
	stopDemo(t)
	assertNothingListening(t)
}

// demo is the running `pgha-agent demo` process.
type demo struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited

	rest    strings.Builder // what it printed after the ready block
	drained chan struct{}   // closed when rest is complete: read rest after it
}

var demoProc *demo

// runDemoUntilReady starts `pgha-agent demo` and returns its output up to and
// including the "ready" block.
func runDemoUntilReady(t *testing.T, dir, bin string) string {
	t.Helper()
	cmd := exec.Command(agentBinary, "demo", "--dir", dir, "--pg-bin", bin)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &demo{cmd: cmd, done: make(chan struct{}), drained: make(chan struct{})}
	demoProc = d
	go func() { _ = cmd.Wait(); pw.Close(); close(d.done) }()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			_ = cmd.Process.Signal(syscall.SIGINT)
			select {
			case <-d.done:
			case <-time.After(90 * time.Second):
				_ = cmd.Process.Kill()
			}
		}
	})
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var b strings.Builder
	timeout := time.After(2 * time.Minute)
	ready := false
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("the demo exited before it was ready:\n%s", b.String())
			}
			b.WriteString(line + "\n")
			if strings.Contains(line, "The cluster is ready") {
				ready = true
			}
			if ready && strings.Contains(line, "Press Ctrl-C") {
				go func() {
					defer close(d.drained)
					for line := range lines { // keep draining so the demo never blocks on output
						d.rest.WriteString(line + "\n")
					}
				}()
				return b.String()
			}
		case <-timeout:
			t.Fatalf("the demo was not ready in 2 minutes:\n%s", b.String())
		}
	}
}

// stopDemo sends Ctrl-C (SIGINT) and waits for the demo to exit cleanly.
func stopDemo(t *testing.T) {
	t.Helper()
	if err := demoProc.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	select {
	case <-demoProc.done:
	case <-time.After(90 * time.Second):
		t.Fatal("the demo did not exit within 90 s of Ctrl-C")
	}
	// Fast shutdowns take a second or two; a node that holds out is named
	// with what it still runs, and stopped in immediate mode after 10s.
	<-demoProc.drained
	out := demoProc.rest.String()
	if strings.Contains(out, "has not stopped") {
		t.Errorf("the demo took %s to stop after Ctrl-C:\n%s", time.Since(start).Round(time.Millisecond), out)
	}
	if code := demoProc.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("the demo exited with %d after Ctrl-C", code)
	}
}

// assertNothingListening checks that no agent or PostgreSQL of the demo is left.
func assertNothingListening(t *testing.T) {
	t.Helper()
	for _, port := range []int{8008, 8009, 8010, 8300, 8301, 8302, 5433, 5434, 5435} {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
			t.Errorf("something still listens on 127.0.0.1:%d after the demo stopped", port)
		}
	}
}

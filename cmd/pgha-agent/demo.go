package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/internal/localcluster"
	"github.com/pgha/pgha/postgres"
)

func demoCmd() *cobra.Command {
	var dir, pgBin string
	var timeout time.Duration
	var withTLS bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a three-node cluster on this machine (agents on 127.0.0.1:8008-8010); Ctrl-C stops it, running it again resumes it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pgBin == "" {
				var err error
				if pgBin, err = findPostgresBin(); err != nil {
					return err
				}
			}
			return runDemo(cmd.OutOrStdout(), dir, pgBin, timeout, withTLS)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", filepath.Join(os.TempDir(), "pgha-demo"), "directory for the demo's data, configs and logs")
	cmd.Flags().StringVar(&pgBin, "pg-bin", "", "PostgreSQL binaries (default: pg_config --bindir, else the newest /usr/lib/postgresql/*/bin)")
	cmd.Flags().DurationVar(&timeout, "ready-timeout", 2*time.Minute, "how long to wait for one primary and two streaming standbys")
	cmd.Flags().BoolVar(&withTLS, "tls", false, "agent-to-agent mutual TLS: a cluster CA and node certificates in DIR/certs, the REST API on https://")
	return cmd
}

func runDemo(out io.Writer, dir, pgBin string, readyTimeout time.Duration, withTLS bool) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return err
	}
	resume := fileExists(filepath.Join(dir, "node1", "agent", "raft"))
	lc, err := localcluster.New(localcluster.Options{Dir: dir, Binary: exe, BinDir: pgBin, TLS: withTLS})
	if err != nil {
		return err
	}
	if err := checkPortsFree(lc); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if resume {
		fmt.Fprintf(out, "Resuming the demo cluster in %s\n", dir)
	} else {
		fmt.Fprintf(out, "Creating a three-node demo cluster in %s (PostgreSQL from %s)\n", dir, pgBin)
	}
	for _, n := range lc.Nodes() {
		fmt.Fprintf(out, "  %s: agent %s, raft 127.0.0.1:%d, postgres 127.0.0.1:%d, log %s\n", n.Name, n.APIURL, n.RaftPort, n.PGPort, n.Log)
	}
	defer func() {
		fmt.Fprintln(out, "\nStopping the agents and their PostgreSQL servers...")
		sctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		// Each agent stops its PostgreSQL in fast mode, which takes a second.
		// One that has not after stopGrace is waiting for something: say
		// what, and stop that server in immediate mode.
		slow := func(n *localcluster.Node, running string) {
			fmt.Fprintf(out, "  %s has not stopped %s after Ctrl-C; still running: %s\n  stopping %s's PostgreSQL in immediate mode (crash-safe: it recovers from its WAL at the next start)\n",
				n.Name, stopGrace, running, n.Name)
		}
		if err := lc.StopAllWithin(sctx, stopGrace, slow); err != nil {
			fmt.Fprintln(out, "  warning:", err)
		}
		fmt.Fprintf(out, "Stopped; nothing left running. Data kept in %s: run the demo again to resume this cluster.\n", dir)
	}()
	if err := lc.StartAll(); err != nil {
		return err
	}

	w := &progress{out: out, states: map[string]string{}}
	ready := false
	deadline := time.Now().Add(readyTimeout)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, n := range lc.Nodes() {
			if n.Exited() != nil && !n.Running() && !w.reportedExit[n.Name] {
				w.reportExit(n)
			}
		}
		v, err := lc.View(ctx)
		if err == nil {
			w.show(v)
			if !ready && demoReady(v, len(lc.Nodes())) {
				ready = true
				printReady(out, v, lc)
			}
		}
		if !ready && time.Now().After(deadline) {
			fmt.Fprintf(out, "\nThe cluster is not ready after %s. What the agents report:\n", readyTimeout)
			if err == nil {
				printView(out, v)
			} else {
				fmt.Fprintln(out, "  ", err)
			}
			fmt.Fprintln(out, "Agents' logs are listed above. Still waiting; Ctrl-C stops everything.")
			deadline = time.Now().Add(24 * time.Hour)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// stopGrace is how long the demo lets an agent take to stop its
// PostgreSQL in fast mode before it says what is still running and stops
// the server in immediate mode.
const stopGrace = 10 * time.Second

// progress prints what changes while the cluster comes up, one line per change.
type progress struct {
	out          io.Writer
	states       map[string]string
	leader       string
	primary      string
	reportedExit map[string]bool
}

func (p *progress) show(v agent.ClusterView) {
	if v.RaftLeader != "" && v.RaftLeader != p.leader {
		p.leader = v.RaftLeader
		fmt.Fprintf(p.out, "%s  raft leader: %s\n", stamp(), v.RaftLeader)
	}
	var primary string
	for _, m := range v.Members {
		if m.Role == "leader" {
			primary = m.Name
		}
	}
	if primary != "" && primary != p.primary {
		p.primary = primary
		fmt.Fprintf(p.out, "%s  primary: %s (epoch %d)\n", stamp(), primary, v.Epoch)
	}
	sort.Slice(v.Members, func(i, j int) bool { return v.Members[i].Name < v.Members[j].Name })
	for _, m := range v.Members {
		s := m.State
		if m.Problem != "" {
			s += " (" + m.Problem + ")"
		}
		if p.states[m.Name] != s {
			p.states[m.Name] = s
			fmt.Fprintf(p.out, "%s  %s: %s\n", stamp(), m.Name, s)
		}
	}
}

func (p *progress) reportExit(n *localcluster.Node) {
	if p.reportedExit == nil {
		p.reportedExit = map[string]bool{}
	}
	p.reportedExit[n.Name] = true
	fmt.Fprintf(p.out, "%s  %s's agent exited; last lines of %s:\n%s\n", stamp(), n.Name, n.Log, tail(n.Log, 8))
}

// demoReady: one primary, every other member streaming, and nothing the
// leader waits for. Members stream a moment before the leader's next pass
// sees it, so a view can be healthy and still say that commits wait for
// the synchronous standby; "ready" waits until they do not. A paused
// cluster (resumed from a paused demo) waits for the operator, not for
// time, and is ready as it is.
func demoReady(v agent.ClusterView, members int) bool {
	if !localcluster.Healthy(v, members) {
		return false
	}
	if len(v.SyncStandbys) > 0 && !slices.ContainsFunc(v.Members, func(m agent.MemberStatus) bool {
		return slices.Contains(v.SyncStandbys, m.Name) && m.State == "streaming"
	}) {
		return false
	}
	return v.Waiting == "" || v.Pause
}

func printReady(out io.Writer, v agent.ClusterView, lc *localcluster.Cluster) {
	fmt.Fprintln(out, "\nThe cluster is ready: one primary, two streaming standbys.")
	printView(out, v)
	fmt.Fprintln(out, "\nREST API (Patroni-compatible):")
	for _, n := range lc.Nodes() {
		fmt.Fprintf(out, "  %s  %s/cluster  %s/primary  %s/replica\n", n.Name, n.APIURL, n.APIURL, n.APIURL)
	}
	host, rwPort, _ := net.SplitHostPort(lc.RouterAddr())
	_, roPort, _ := net.SplitHostPort(lc.RouterReadOnlyAddr())
	fmt.Fprintf(out, "\nThe router (served by the Raft leader, %s; it follows failovers):\n", v.RaftLeader)
	fmt.Fprintf(out, "  read/write  psql -h %s -p %s -U postgres   (writes to the primary, reads balanced to standbys)\n", host, rwPort)
	fmt.Fprintf(out, "  read-only   psql -h %s -p %s -U postgres\n", host, roPort)
	fmt.Fprintln(out, "  SHOW POOL_NODES; through either shows where queries went.")
	for _, m := range v.Members {
		if m.Role == "leader" {
			fmt.Fprintf(out, "\nThe primary itself:\n  psql -h %s -p %d -U postgres\n", m.Host, m.Port)
		}
	}
	fmt.Fprintln(out, "\nIn another terminal (control calls need the API token; list does not):")
	fmt.Fprintf(out, "  export PGHA_TOKEN_FILE=%s\n", lc.TokenFile())
	if ca := lc.CA(); ca != "" {
		var apis []string
		for _, n := range lc.Nodes() {
			apis = append(apis, n.APIURL)
		}
		fmt.Fprintf(out, "  export PGHA_CA=%s PGHA_API=%s\n", ca, strings.Join(apis, ","))
	}
	fmt.Fprintln(out, "  go run ./cmd/pgha-agent list")
	fmt.Fprintln(out, "  go run ./cmd/pgha-agent switchover")
	fmt.Fprintln(out, "Press Ctrl-C to stop every process the demo started.")
}

func checkPortsFree(lc *localcluster.Cluster) error {
	addrs := []string{lc.RouterAddr(), lc.RouterReadOnlyAddr()}
	for _, n := range lc.Nodes() {
		for _, p := range []int{n.APIPort, n.RaftPort, n.PGPort} {
			addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", p))
		}
	}
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return fmt.Errorf("%s is in use (is another demo, pgpool-II or PostgreSQL running?): %w", a, err)
		}
		ln.Close()
	}
	return nil
}

// findPostgresBin locates PostgreSQL's server binaries.
func findPostgresBin() (string, error) {
	if dir := postgres.FindBinDir(); dir != "" {
		return dir, nil
	}
	return "", errors.New("PostgreSQL server binaries not found: install them (apt-get install postgresql) or pass --pg-bin")
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "    (" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "    " + strings.Join(lines, "\n    ")
}

func stamp() string { return time.Now().Format("15:04:05") }

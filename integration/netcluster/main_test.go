package netcluster_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/pgha/pgha/integration/netcluster"
)

// agentBinary is built once for every test of the package, unless
// PGHA_AGENT_BINARY names one to test instead.
var agentBinary string

// options are the clusters' options: PGHA_NETCLUSTER_KEEP=1 keeps their
// directories (configs, agent and PostgreSQL logs, data) for a post-mortem.
func options() netcluster.Options {
	return netcluster.Options{Binary: agentBinary, Keep: os.Getenv("PGHA_NETCLUSTER_KEEP") != ""}
}

func TestMain(m *testing.M) {
	// Without root the tests skip (or fail with CI=true) in netns.Require;
	// nothing needs building for that.
	if os.Geteuid() != 0 {
		os.Exit(m.Run())
	}
	agentBinary = os.Getenv("PGHA_AGENT_BINARY")
	drop := func() {}
	if agentBinary == "" {
		bin, remove, err := netcluster.BuildAgent()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		agentBinary, drop = bin, remove
	}
	stop := netcluster.CloseOnSignal()
	code := m.Run()
	stop()
	drop()
	os.Exit(code)
}

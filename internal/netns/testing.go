package netns

import (
	"os"
	"os/exec"
	"testing"
)

// New builds a topology for a test and removes it in t.Cleanup. It fails the
// test if the topology cannot be built. Without root it skips the test,
// unless CI=true, where a skipped namespace test would hide a broken setup:
// then it fails with the reason.
func New(t testing.TB, opts Options) *Topology {
	t.Helper()
	Require(t)
	topo, err := Build(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Errorf("netns cleanup: %v", err)
		}
	})
	return topo
}

// Require skips (or, with CI=true, fails) a test that cannot create network
// namespaces here: not root, or no iproute2.
func Require(t testing.TB) {
	t.Helper()
	reason := ""
	switch {
	case os.Geteuid() != 0:
		reason = "network namespace tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
	case !onPath("ip") || !onPath("bridge"):
		reason = "network namespace tests need iproute2 (ip, bridge) on PATH"
	}
	if reason == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s; CI=true, so this is a failure, not a skip", reason)
	}
	t.Skip(reason)
}

func onPath(name string) bool {
	_, err := exec.LookPath(name)
	return err == nil
}

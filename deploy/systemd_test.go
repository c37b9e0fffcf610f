// Package deploy holds what operators install (the systemd unit); its test
// checks the unit with systemd's own verifier.
package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestSystemdUnit(t *testing.T) {
	// The contract of the unit, as the README and the issue describe it.
	verifyUnit(t, "pgha-agent.service", []string{
		"Type=notify", "WatchdogSec=", "Restart=always", "User=postgres",
		"AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW\n", "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW\n",
		"NoNewPrivileges=yes", "ProtectSystem=strict", "ExecStart=/usr/local/bin/pgha-agent run --config",
	})
}

// The router-only process of an application host: no PostgreSQL, no VIP,
// so no capability at all and a user of its own.
func TestSystemdRouterUnit(t *testing.T) {
	verifyUnit(t, "pgha-router.service", []string{
		"Type=notify", "WatchdogSec=", "Restart=always", "User=pgha-router",
		"AmbientCapabilities=\n", "CapabilityBoundingSet=\n",
		"NoNewPrivileges=yes", "ProtectSystem=strict", "ExecStart=/usr/local/bin/pgha-agent router --config",
	})
}

// verifyUnit checks that deploy/systemd/name has every line of want and
// that systemd-analyze verify accepts it (and refuses a broken copy).
func verifyUnit(t *testing.T, name string, want []string) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("systemd", name))
	if err != nil {
		t.Fatal(err)
	}
	unit := string(raw)
	for _, w := range want {
		if !strings.Contains(unit, w) {
			t.Errorf("%s lacks %q", name, w)
		}
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-analyze is missing (apt-get install systemd)")
		}
		t.Skip("systemd-analyze is not installed")
	}
	// systemd-analyze checks that ExecStart's binary exists: point it at an
	// executable that does (this test's own), everything else unchanged.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(unit, "/usr/local/bin/pgha-agent", self)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	// Other units on the machine may draw warnings; only ours counts.
	var ours []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, name) {
			ours = append(ours, line)
		}
	}
	if err != nil || len(ours) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, strings.Join(ours, "\n"))
	}

	// And a broken unit is caught, so the check above means something.
	bad := strings.Replace(unit, "Type=notify", "Type=notifyy", 1)
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(bad, "/usr/local/bin/pgha-agent", self)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(analyze, "verify", path).CombinedOutput(); err == nil && !strings.Contains(string(out), name) {
		t.Fatalf("systemd-analyze accepted Type=notifyy:\n%s", out)
	}
}

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// run executes one command in-process and returns its output.
func run(t *testing.T, cmd *cobra.Command, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	err := cmd.Execute()
	return out.String(), err
}

func TestCertsCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	out, err := run(t, certsCmd(), "--dir", dir, "--cluster", "main",
		"node1=10.0.0.11", "node2=10.0.0.12,node2.example", "node3=10.0.0.13")
	if err != nil {
		t.Fatalf("certs: %v\n%s", err, out)
	}
	modes := map[string]os.FileMode{"ca.crt": 0o644, "ca.key": 0o600}
	for _, n := range []string{"node1", "node2", "node3"} {
		modes[n+".crt"], modes[n+".key"] = 0o644, 0o600
	}
	for name, want := range modes {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %04o, want %04o", name, fi.Mode().Perm(), want)
		}
	}
	for _, want := range []string{
		"Wrote to " + dir, "node2.example", "keep it off the nodes",
		"tls:\n    ca: " + filepath.Join(dir, "ca.crt") + "\n    cert: " + filepath.Join(dir, "node1.crt") + "\n    key: " + filepath.Join(dir, "node1.key"),
		"must be https://",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	ca, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if out, err := run(t, certsCmd(), "--dir", dir, "--cluster", "main", "node4=10.0.0.14"); err == nil || !strings.Contains(err.Error(), "already holds a cluster CA") {
		t.Fatalf("a second CA over the first: %v\n%s", err, out)
	}
	if out, err := run(t, certsCmd(), "--dir", dir, "--cluster", "main", "--reuse-ca", "node4=10.0.0.14"); err != nil {
		t.Fatalf("--reuse-ca: %v\n%s", err, out)
	}
	if now, _ := os.ReadFile(filepath.Join(dir, "ca.crt")); !bytes.Equal(now, ca) {
		t.Error("--reuse-ca changed the CA")
	}
	if _, err := os.Stat(filepath.Join(dir, "node4.key")); err != nil {
		t.Errorf("--reuse-ca did not write node4's key: %v", err)
	}
	if _, err := run(t, certsCmd(), "--dir", dir, "--cluster", "main", "--replace-ca", "node1=10.0.0.11"); err != nil {
		t.Fatalf("--replace-ca: %v", err)
	}
	if now, _ := os.ReadFile(filepath.Join(dir, "ca.crt")); bytes.Equal(now, ca) {
		t.Error("--replace-ca kept the CA")
	}
}

func TestCertsCommandRefusesBadArguments(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--cluster", "main", "node1=10.0.0.11"}, "--dir"},
		{[]string{"--dir", dir, "node1=10.0.0.11"}, "--cluster"},
		{[]string{"--dir", dir, "--cluster", "main"}, "NODE=HOST"},
		{[]string{"--dir", dir, "--cluster", "main", "node1"}, "NODE=HOST"},
		{[]string{"--dir", dir, "--cluster", "main", "Node1=10.0.0.11"}, "not a member name"},
		{[]string{"--dir", dir, "--cluster", "main", "node1=10.0.0.11", "node1=10.0.0.12"}, "twice"},
		{[]string{"--dir", dir, "--cluster", "main", "node1=10.0.0.11,"}, "empty host"},
		{[]string{"--dir", dir, "--cluster", "main", "--reuse-ca", "--replace-ca", "node1=10.0.0.11"}, "reuse-ca"},
	} {
		if _, err := run(t, certsCmd(), c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("certs %v: %v, want an error with %q", c.args, err, c.want)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("refused calls wrote %d files", len(entries))
	}
}

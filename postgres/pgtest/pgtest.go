// Package pgtest starts real PostgreSQL servers for tests anywhere in the
// repository. Everything it starts is stopped in t.Cleanup, also when the
// test fails.
//
// When the process runs as root, PostgreSQL runs as the OS user "postgres"
// (RunAs) and the directories TempDir makes belong to that user.
package pgtest

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgha/pgha/postgres"
)

// Credentials of the roles NewInstance configures.
const (
	ReplicationUser     = "replicator"
	ReplicationPassword = "rep-secret"
	MonitorUser         = "pgha_monitor"
	MonitorPassword     = "mon-secret"
	RewindUser          = "pgha_rewind"
	RewindPassword      = "rew-secret"
)

// BinDir finds the PostgreSQL binaries: `pg_config --bindir` if it has
// initdb, else the newest /usr/lib/postgresql/*/bin. Without them the test
// is skipped, except when CI=true: in CI tests that need PostgreSQL must run.
func BinDir(t testing.TB) string {
	t.Helper()
	if dir := postgres.FindBinDir(); dir != "" {
		return dir
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("PostgreSQL binaries not found (no pg_config --bindir with initdb, no /usr/lib/postgresql/*/bin) and CI=true: tests that need PostgreSQL must run in CI")
	}
	t.Skip("PostgreSQL binaries not found (no pg_config --bindir with initdb, no /usr/lib/postgresql/*/bin)")
	return ""
}

// RunAs is the OS user PostgreSQL must run as: "postgres" when the test
// runs as root, else "" (the current user).
func RunAs() string {
	if os.Geteuid() == 0 {
		return "postgres"
	}
	return ""
}

// TempDir makes a fresh directory that the PostgreSQL user can traverse and,
// when root, owns (t.TempDir is root-owned mode 0700, useless for postgres).
// The path is short so that unix socket paths fit. It is removed in
// t.Cleanup.
func TempDir(t testing.TB) string {
	t.Helper()
	base := os.TempDir()
	if os.Geteuid() == 0 && !traversable(base) {
		base = "/tmp"
	}
	dir, err := os.MkdirTemp(base, "pgha-")
	if err != nil {
		t.Fatalf("make temp dir: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove temp dir: %v", err)
		}
	})
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("chmod temp dir: %v", err)
	}
	if err := postgres.ChownTo(dir, RunAs()); err != nil {
		t.Fatalf("chown temp dir: %v", err)
	}
	return dir
}

// traversable: every directory on the way to dir is searchable by others.
func traversable(dir string) bool {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		if d == filepath.Dir(d) {
			return true
		}
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := PickPort()
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	return port
}

// handedOut holds every port PickPort returned in this process.
var handedOut struct {
	sync.Mutex
	ports map[int]bool
}

// PickPort returns a TCP port on 127.0.0.1 that was free a moment ago and
// that it has not returned before in this process. The kernel may give
// back a port that was just closed, so a cluster whose ports were picked
// one after another could otherwise get the same one twice (two agents on
// one Raft address).
func PickPort() (int, error) { return pickPort(listenPort) }

// pickPort is PickPort with the kernel's choice of port (listen) as a
// parameter, so a test can make it repeat one.
func pickPort(listen func() (int, error)) (int, error) {
	handedOut.Lock()
	defer handedOut.Unlock()
	if handedOut.ports == nil {
		handedOut.ports = map[int]bool{}
	}
	for range 100 {
		port, err := listen()
		if err != nil {
			return 0, err
		}
		if !handedOut.ports[port] {
			handedOut.ports[port] = true
			return port, nil
		}
	}
	return 0, errors.New("no new free port in 100 tries")
}

// listenPort is a port on 127.0.0.1 the kernel says is free; the listener
// is closed again, so the kernel may give the same port out next time.
func listenPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Config returns the configuration of a test instance called name: data
// dir, socket dir and log under a fresh TempDir, a free port on 127.0.0.1,
// the three pgha roles with the passwords above, 127.0.0.1/32 allowed.
func Config(t testing.TB, name string) postgres.Config {
	t.Helper()
	dir := TempDir(t)
	return postgres.Config{
		BinDir:          BinDir(t),
		DataDir:         filepath.Join(dir, "data"),
		ListenAddresses: "127.0.0.1",
		Port:            FreePort(t),
		SocketDir:       filepath.Join(dir, "sock"),
		Superuser:       "postgres",
		Replication:     postgres.Role{Name: ReplicationUser, Password: ReplicationPassword},
		Monitor:         postgres.Role{Name: MonitorUser, Password: MonitorPassword},
		Rewind:          postgres.Role{Name: RewindUser, Password: RewindPassword},
		Parameters: map[string]string{
			"shared_buffers":     "16MB",
			"fsync":              "off", // tests only: much faster, no durability needed
			"max_connections":    "30",
			"log_line_prefix":    "%m [%p] " + name + " ",
			"wal_keep_size":      "64MB",
			"checkpoint_timeout": "30min",
		},
		AllowedNetworks: []string{"127.0.0.1/32"},
		RunAs:           RunAs(),
		Logger:          slog.New(slog.NewTextHandler(testWriter{t}, nil)).With("instance", name),
		StartTimeout:    60 * time.Second,
		StopTimeout:     60 * time.Second,
	}
}

// NewInstance returns an Instance for Config(t, name) with nothing in its
// data dir yet. Whatever server it later runs is stopped (immediate) in
// t.Cleanup.
func NewInstance(t testing.TB, name string) *postgres.Instance {
	t.Helper()
	return NewInstanceWith(t, Config(t, name))
}

// NewInstanceWith is NewInstance with a configuration the test adjusted.
func NewInstanceWith(t testing.TB, cfg postgres.Config) *postgres.Instance {
	t.Helper()
	inst, err := postgres.New(cfg)
	if err != nil {
		t.Fatalf("new instance: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := inst.Stop(ctx, postgres.StopImmediate); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		inst.Close()
	})
	return inst
}

// StartPrimary makes an initdb'd, configured, started primary with the pgha
// roles, stopped in t.Cleanup.
func StartPrimary(t testing.TB) *postgres.Instance {
	t.Helper()
	return StartPrimaryWith(t, Config(t, "primary"))
}

// StartPrimaryWith is StartPrimary with a configuration the test adjusted.
func StartPrimaryWith(t testing.TB, cfg postgres.Config) *postgres.Instance {
	t.Helper()
	inst := NewInstanceWith(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := inst.Initdb(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := inst.Configure(nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := inst.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := inst.EnsureRoles(ctx); err != nil {
		t.Fatal(err)
	}
	return inst
}

// WritePassFile writes a password file for the replication role into a
// TempDir, readable by the PostgreSQL user, and returns its path.
func WritePassFile(t testing.TB) string {
	t.Helper()
	path := filepath.Join(TempDir(t), "pgpass")
	err := postgres.WritePassFile(path, RunAs(), postgres.PassEntry{
		Host: "*", User: ReplicationUser, Password: ReplicationPassword,
	})
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

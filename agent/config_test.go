package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// validConfig writes secrets into dir and returns a YAML config that loads.
func validConfig(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	for _, s := range []string{"repl", "mon", "rew"} {
		if err := os.WriteFile(filepath.Join(dir, s), []byte("secret-"+s+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "pg_ctl"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return strings.NewReplacer("DIR", dir).Replace(`
name: node1
data_dir: /var/lib/pgha
cluster:
  name: main
  members:
    - {name: node1, raft: "10.0.0.11:8300", api: "http://10.0.0.11:8008"}
    - {name: node2, raft: "10.0.0.12:8300", api: "http://10.0.0.12:8008"}
    - {name: node3, raft: "10.0.0.13:8300", api: "http://10.0.0.13:8008"}
postgres:
  bin_dir: DIR/bin
  data_dir: /var/lib/postgresql/15/pgha
  host: 10.0.0.11
  replication: {password_file: DIR/repl}
  monitor: {password_file: DIR/mon}
  rewind: {password_file: DIR/rew}
  allowed_networks: [10.0.0.0/24]
`)
}

func TestParseConfigDefaults(t *testing.T) {
	cfg, err := ParseConfig([]byte(validConfig(t)))
	if err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"api.advertise from members", cfg.API.Advertise, "http://10.0.0.11:8008"},
		{"raft.advertise from members", cfg.Raft.Advertise, "10.0.0.11:8300"},
		{"api.listen", cfg.API.Listen, "0.0.0.0:8008"},
		{"postgres.port", cfg.Postgres.Port, 5432},
		{"replication user", cfg.Postgres.Replication.User, "replicator"},
		{"replication password", cfg.Postgres.Replication.Password(), "secret-repl"},
		{"loop interval", cfg.Timing.LoopInterval, 500 * time.Millisecond},
		{"join defaults to the other members", strings.Join(cfg.Cluster.Join, ","), "http://10.0.0.12:8008,http://10.0.0.13:8008"},
		{"stop on shutdown", *cfg.Postgres.StopOnShutdown, true},
		{"keep replaced data dirs", *cfg.Postgres.KeepReplacedDataDirs, 1},
		{"initial member", cfg.InitialMember(), true},
		{"router enabled", cfg.RouterEnabled(), true},
		{"router listen without a VIP", cfg.Router.Listen, "0.0.0.0"},
		{"router port", cfg.Router.Port, 9999},
		{"router read-only port", cfg.Router.ReadOnlyPort, 9998},
		{"router pool mode", cfg.Router.PoolMode, "transaction"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
		}
	}
}

// Every bad config fails with an error naming the key.
func TestParseConfigErrorsNameTheKey(t *testing.T) {
	cases := []struct {
		name    string
		edit    func(string) string
		wantKey string
	}{
		{"missing name", func(s string) string { return strings.Replace(s, "name: node1\n", "", 1) }, "name:"},
		{"bad name", func(s string) string { return strings.Replace(s, "name: node1\n", "name: Node_1!\n", 1) }, "name:"},
		{"unknown key", func(s string) string { return s + "postgress: {}\n" }, "postgress"},
		{"relative data dir", func(s string) string { return strings.Replace(s, "/var/lib/pgha", "var/lib/pgha", 1) }, "data_dir"},
		{"bad raft address", func(s string) string { return strings.Replace(s, `"10.0.0.12:8300"`, `"10.0.0.12"`, 1) }, "cluster.members[1].raft"},
		{"bad api url", func(s string) string { return strings.Replace(s, `"http://10.0.0.13:8008"`, `"10.0.0.13:8008"`, 1) }, "cluster.members[2].api"},
		{"duplicate member", func(s string) string { return strings.Replace(s, "name: node3,", "name: node2,", 1) }, "is listed twice"},
		{"two members", func(s string) string {
			return strings.Replace(s, `    - {name: node3, raft: "10.0.0.13:8300", api: "http://10.0.0.13:8008"}`+"\n", "", 1)
		}, "cluster.members"},
		{"bin dir without pg_ctl", func(s string) string { return strings.Replace(s, "/bin\n", "/nope\n", 1) }, "postgres.bin_dir"},
		{"no password", func(s string) string {
			return strings.Replace(s, "monitor: {password_file: ", "monitor: {user: m, xpassword_file: ", 1)
		}, "xpassword_file"},
		{"missing secret file", func(s string) string { return strings.Replace(s, "/rew}", "/nonexistent}", 1) }, "postgres.rewind.password_file"},
		{"bad network", func(s string) string { return strings.Replace(s, "10.0.0.0/24", "10.0.0.0", 1) }, "postgres.allowed_networks[0]"},
		{"callback that cannot run", func(s string) string { return s + "callbacks:\n  on_role_change: /nonexistent/hook\n" }, "callbacks.on_role_change"},
		{"missing pg host", func(s string) string { return strings.Replace(s, "  host: 10.0.0.11\n", "", 1) }, "postgres.host"},
		{"bad port", func(s string) string {
			return strings.Replace(s, "  host: 10.0.0.11\n", "  host: 10.0.0.11\n  port: 70000\n", 1)
		}, "postgres.port"},
		{"lease not below election", func(s string) string {
			return s + "raft:\n  election_timeout: 1s\n  leader_lease_timeout: 1s\n"
		}, "raft.leader_lease_timeout"},
		{"keep too many replaced data dirs", func(s string) string {
			return strings.Replace(s, "  host: 10.0.0.11\n", "  host: 10.0.0.11\n  keep_replaced_data_dirs: -1\n", 1)
		}, "postgres.keep_replaced_data_dirs"},
		{"loop interval too small", func(s string) string { return s + "timing:\n  loop_interval: 1ms\n" }, "timing.loop_interval"},
		{"advertise mismatch", func(s string) string { return s + "api:\n  advertise: http://10.9.9.9:8008\n" }, "api.advertise"},
		{"not yaml", func(string) string { return "name: [unclosed\n" }, "parse YAML"},
		{"router listen host:port", func(s string) string { return s + "router:\n  listen: 10.0.0.10:9999\n" }, "router.listen"},
		{"router ports clash", func(s string) string { return s + "router:\n  port: 6432\n  read_only_port: 6432\n" }, "router.read_only_port"},
		{"router pool mode", func(s string) string { return s + "router:\n  pool_mode: statement\n" }, "PoolMode"},
		{"router hba", func(s string) string { return s + "router:\n  hba: [\"host all all 10.0.0.0/24 password\"]\n" }, "router.hba"},
		{"router hostssl without a certificate", func(s string) string {
			return s + "router:\n  hba: [\"hostssl all all 0.0.0.0/0 scram-sha-256\"]\n"
		}, "hostssl"},
		{"router tls key without cert", func(s string) string { return s + "router:\n  tls_key: /etc/pgha/router.key\n" }, "router.tls_cert"},
		{"router auth password file missing", func(s string) string {
			return s + "router:\n  auth_user: pgha_auth\n  auth_password_file: /nonexistent/auth\n"
		}, "router.auth_password_file:"},
		{"router auth file missing", func(s string) string { return s + "router:\n  auth_file: /nonexistent/userlist.txt\n" }, "router.auth_file"},
		{"an initial member without a vote", func(s string) string {
			return strings.Replace(s, "  name: main\n", "  name: main\n  voter: false\n", 1)
		}, "cluster.voter"},
		{"vip without interface", func(s string) string { return s + "vip:\n  address: 10.0.0.10/24\n" }, "vip.interface"},
		{"vip without prefix", func(s string) string { return s + "vip:\n  address: 10.0.0.10\n  interface: eth0\n" }, "vip.address"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(c.edit(validConfig(t))))
			if err == nil {
				t.Fatal("bad config accepted")
			}
			if !strings.Contains(err.Error(), c.wantKey) {
				t.Fatalf("error does not name %q: %v", c.wantKey, err)
			}
		})
	}
}

// A secret readable by others is refused, naming the key and the fix.
func TestLooseSecretFileRefused(t *testing.T) {
	raw := validConfig(t)
	i := strings.Index(raw, "rewind: {password_file: ") + len("rewind: {password_file: ")
	path := raw[i : i+strings.Index(raw[i:], "}")]
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := ParseConfig([]byte(raw))
	if err == nil || !strings.Contains(err.Error(), "postgres.rewind.password_file") || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("want a refusal naming postgres.rewind.password_file and the fix, got %v", err)
	}
	if strings.Contains(err.Error(), "secret-rew") {
		t.Fatalf("the error shows the secret: %v", err)
	}
}

func TestRouterListensOnTheVIP(t *testing.T) {
	cfg, err := ParseConfig([]byte(validConfig(t) + "vip:\n  address: 10.0.0.10/24\n  interface: eth0\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Router.Listen != "10.0.0.10" {
		t.Fatalf("router.listen %q, want the VIP 10.0.0.10", cfg.Router.Listen)
	}
}

func TestPasswordFromEnv(t *testing.T) {
	t.Setenv("PGHA_TEST_MON", "from-env")
	raw := validConfig(t)
	i := strings.Index(raw, "monitor: {")
	j := strings.Index(raw[i:], "}")
	raw = raw[:i] + "monitor: {password_env: PGHA_TEST_MON}" + raw[i+j+1:]
	cfg, err := ParseConfig([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Postgres.Monitor.Password(); got != "from-env" {
		t.Fatalf("monitor password %q, want from-env", got)
	}
	t.Setenv("PGHA_TEST_MON", "")
	if _, err := ParseConfig([]byte(raw)); err == nil || !strings.Contains(err.Error(), "postgres.monitor.password_env") {
		t.Fatalf("empty env var: want an error naming postgres.monitor.password_env, got %v", err)
	}
}

func TestSlotName(t *testing.T) {
	for in, want := range map[string]string{"node1": "pgha_node1", "db-2": "pgha_db_2"} {
		if got := SlotName(in); got != want {
			t.Errorf("SlotName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "1048576": 1 << 20, "16MB": 16 << 20, "1 kB": 1024, "2GB": 2 << 30} {
		got, err := parseBytes(in)
		if err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-1", "abc", "1.5MB"} {
		if _, err := parseBytes(bad); err == nil {
			t.Errorf("parseBytes(%q) accepted", bad)
		}
	}
}

// allowed_networks takes what PostgreSQL's pg_hba.conf and the postgres
// package take, samehost and samenet included (they disagreed).
func TestConfigAllowedNetworksAsPostgres(t *testing.T) {
	for _, n := range []string{"samehost", "samenet", "10.1.0.0/16"} {
		if _, err := ParseConfig([]byte(strings.Replace(validConfig(t), "10.0.0.0/24", n, 1))); err != nil {
			t.Errorf("allowed_networks [%s]: %v", n, err)
		}
	}
}

// The same file gives the same errors in the same order, every time.
func TestConfigErrorsInStableOrder(t *testing.T) {
	raw := strings.NewReplacer("replication: {password_file: DIR/repl}", "replication: {user: r}", "monitor: {password_file: DIR/mon}", "monitor: {user: m}",
		"rewind: {password_file: DIR/rew}", "rewind: {user: w}").Replace(validConfig(t)) +
		"router:\n  port: 0\n  read_only_port: 70000\ntls:\n  ca: /x\ncallbacks:\n  on_stop: /nonexistent/a\n  on_start: /nonexistent/b\n"
	_, first := ParseConfig([]byte(raw))
	if first == nil || strings.Count(first.Error(), "\n") < 3 {
		t.Fatalf("want several errors, got %v", first)
	}
	for range 20 {
		if _, err := ParseConfig([]byte(raw)); err == nil || err.Error() != first.Error() {
			t.Fatalf("errors changed between two reads:\n%v\n---\n%v", first, err)
		}
	}
}

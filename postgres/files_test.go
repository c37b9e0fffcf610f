package postgres

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReplaceManagedBlock(t *testing.T) {
	operator := "# operator comment\nlocal all all peer\nhost all all 10.1.0.0/16 md5\n"
	block := []string{"local all postgres peer map=pgha", "host replication rep 127.0.0.1/32 scram-sha-256"}

	got, err := replaceManagedBlock(operator, block)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got, beginMarker) {
		t.Errorf("block not at the top:\n%s", got)
	}
	if !strings.HasSuffix(got, endMarker+"\n"+operator) {
		t.Errorf("operator lines not kept below the block:\n%s", got)
	}
	// Idempotent, and a changed block replaces the old one.
	again, err := replaceManagedBlock(got, block)
	if err != nil || again != got {
		t.Errorf("second call changed the file (err %v):\n%s", err, again)
	}
	changed, err := replaceManagedBlock(got, block[:1])
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(changed, "host replication rep") || !strings.HasSuffix(changed, operator) {
		t.Errorf("block not replaced cleanly:\n%s", changed)
	}
	// A block the operator moved further down moves back to the top, and
	// lines around it are kept in order.
	moved := "a\n" + beginMarker + "\nold\n" + endMarker + "\nb"
	got, err = replaceManagedBlock(moved, block)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(got, endMarker+"\na\nb\n") || strings.Contains(got, "old") {
		t.Errorf("moved block:\n%s", got)
	}
	// Broken markers are an error, never a guess that loses lines.
	for _, bad := range []string{beginMarker + "\nx\n", "x\n" + endMarker + "\n", beginMarker + "\n" + beginMarker + "\n" + endMarker + "\n"} {
		if _, err := replaceManagedBlock(bad, block); err == nil {
			t.Errorf("no error for %q", bad)
		}
	}
}

func TestEnsureInclude(t *testing.T) {
	conf := "shared_buffers = 128MB\n#port = 5432"
	got, changed := ensureInclude(conf)
	if !changed || !strings.HasPrefix(got, conf+"\n") || !strings.HasSuffix(got, "include_if_exists = 'pgha.conf'\n") {
		t.Errorf("ensureInclude = %q, %v", got, changed)
	}
	if again, changed := ensureInclude(got); changed || again != got {
		t.Errorf("second ensureInclude changed the file: %q", again)
	}
}

func TestPghaConfRoundTrip(t *testing.T) {
	in := []setting{{"port", "5433"}, {"primary_conninfo", "host=a passfile='/x y/p'"}, {"synchronous_standby_names", ""}}
	m := parsePghaConf(renderPghaConf(in))
	if len(m) != len(in) {
		t.Fatalf("parsed %v", m)
	}
	for _, s := range in {
		if m[s.name] != s.value {
			t.Errorf("%s = %q, want %q", s.name, m[s.name], s.value)
		}
	}
}

// fakeBinDir satisfies New's check for the PostgreSQL programs.
func fakeBinDir(t *testing.T) string {
	dir := t.TempDir()
	for _, p := range []string{"pg_ctl", "initdb", "postgres", "pg_controldata"} {
		if err := os.WriteFile(filepath.Join(dir, p), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// fakeDataDir looks like a data dir that initdb just made.
func fakeDataDir(t *testing.T) string {
	dir := filepath.Join(t.TempDir(), "data")
	files := map[string]string{
		"PG_VERSION":           "15\n",
		"global/pg_control":    "x",
		"postgresql.conf":      "# operator\nshared_buffers = 64MB\n",
		"pg_hba.conf":          "# TYPE DATABASE USER ADDRESS METHOD\nlocal all all peer\nhost all all 127.0.0.1/32 scram-sha-256\n",
		"pg_ident.conf":        "# MAPNAME SYSTEM-USERNAME PG-USERNAME\nops alice postgres\n",
		"postgresql.auto.conf": "",
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func testConfig(t *testing.T) Config {
	runAs := ""
	if os.Geteuid() == 0 {
		runAs = "postgres"
	}
	return Config{
		BinDir:          fakeBinDir(t),
		DataDir:         fakeDataDir(t),
		ListenAddresses: "*",
		Port:            5433,
		SocketDir:       "/tmp",
		Replication:     Role{Name: "replicator", Password: "r"},
		Monitor:         Role{Name: "pgha_monitor", Password: "m"},
		Rewind:          Role{Name: "pgha_rewind", Password: "w"},
		Parameters:      map[string]string{"shared_buffers": "256MB", "work_mem": "8MB"},
		HBA:             []string{"host all postgres 127.0.0.1/32 trust"},
		AllowedNetworks: []string{"127.0.0.1/32", "10.0.0.0/24"},
		RunAs:           runAs,
	}
}

func TestConfigureFiles(t *testing.T) {
	inst, err := New(testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	dir := inst.Config().DataDir
	read := func(name string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	standby := &Standby{PrimaryHost: "10.0.0.1", PrimaryPort: 5432, User: "replicator",
		PassFile: "/var/lib/postgresql/.pgpass", SlotName: "pgha_node2", ApplicationName: "node2"}

	ch, err := inst.Configure(standby, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !ch.Changed || !ch.NeedsRestart {
		t.Errorf("first Configure: %+v, want Changed and NeedsRestart", ch)
	}
	conf := parsePghaConf(read(PghaConfFile))
	for k, want := range map[string]string{
		"listen_addresses":          "*",
		"port":                      "5433",
		"wal_level":                 "replica",
		"primary_conninfo":          "host=10.0.0.1 port=5432 user=replicator passfile=/var/lib/postgresql/.pgpass application_name=node2 connect_timeout=2 sslmode=prefer",
		"primary_slot_name":         "pgha_node2",
		"recovery_target_timeline":  "latest",
		"synchronous_standby_names": "",
		"shared_buffers":            "256MB",
		"work_mem":                  "8MB",
	} {
		if conf[k] != want {
			t.Errorf("pgha.conf %s = %q, want %q", k, conf[k], want)
		}
	}
	if pc := read("postgresql.conf"); !strings.HasPrefix(pc, "# operator\nshared_buffers = 64MB\n") || strings.Count(pc, "include_if_exists = 'pgha.conf'") != 1 {
		t.Errorf("postgresql.conf:\n%s", pc)
	}
	hba := read("pg_hba.conf")
	for _, want := range []string{
		beginMarker,
		"local all postgres peer map=pgha\n",
		"local replication postgres peer map=pgha\n",
		"host replication replicator 127.0.0.1/32 scram-sha-256\n",
		"host replication replicator 10.0.0.0/24 scram-sha-256\n",
		"host all pgha_monitor 10.0.0.0/24 scram-sha-256\n",
		"host all pgha_rewind 127.0.0.1/32 scram-sha-256\n",
		"host all postgres 127.0.0.1/32 trust\n",
		endMarker + "\n# TYPE DATABASE USER ADDRESS METHOD\nlocal all all peer\nhost all all 127.0.0.1/32 scram-sha-256\n",
	} {
		if !strings.Contains(hba, want) {
			t.Errorf("pg_hba.conf lacks %q:\n%s", want, hba)
		}
	}
	if !strings.HasPrefix(hba, beginMarker) {
		t.Errorf("managed block not at the top of pg_hba.conf:\n%s", hba)
	}
	ident := read("pg_ident.conf")
	if !strings.Contains(ident, "pgha postgres postgres\n") || !strings.HasSuffix(ident, "ops alice postgres\n") {
		t.Errorf("pg_ident.conf:\n%s", ident)
	}
	if _, err := os.Stat(filepath.Join(dir, "standby.signal")); err != nil {
		t.Errorf("standby.signal: %v", err)
	}

	// The same call again changes nothing.
	if ch, err := inst.Configure(standby, nil); err != nil || ch.Changed {
		t.Errorf("repeat Configure: %+v %v, want no change", ch, err)
	}
	// A new sync set is a reload, not a restart.
	ch, err = inst.Configure(standby, []string{"node2", "node3"})
	if err != nil {
		t.Fatal(err)
	}
	if !ch.Changed || ch.NeedsRestart || len(ch.What) != 1 || ch.What[0] != "synchronous_standby_names" {
		t.Errorf("sync change: %+v", ch)
	}
	if got := parsePghaConf(read(PghaConfFile))["synchronous_standby_names"]; got != `ANY 1 ("node2","node3")` {
		t.Errorf("synchronous_standby_names = %q", got)
	}
	// Becoming a primary removes standby.signal and the upstream.
	ch, err = inst.Configure(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !ch.NeedsRestart {
		t.Errorf("standby -> primary: %+v, want NeedsRestart", ch)
	}
	if _, err := os.Stat(filepath.Join(dir, "standby.signal")); !os.IsNotExist(err) {
		t.Errorf("standby.signal still there: %v", err)
	}
	if got := parsePghaConf(read(PghaConfFile))["primary_conninfo"]; got != "" {
		t.Errorf("primary_conninfo = %q on a primary", got)
	}
	if strings.Count(read("pg_hba.conf"), beginMarker) != 1 || strings.Count(read("postgresql.conf"), "pgha.conf") != 1 {
		t.Error("managed block or include duplicated")
	}
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(*Config)
		field string
	}{
		{"no bindir", func(c *Config) { c.BinDir = "" }, "BinDir"},
		{"bad bindir", func(c *Config) { c.BinDir = "/nonexistent" }, "BinDir"},
		{"no datadir", func(c *Config) { c.DataDir = "" }, "DataDir"},
		{"port", func(c *Config) { c.Port = 0 }, "Port"},
		{"no socket", func(c *Config) { c.SocketDir = "" }, "SocketDir"},
		{"long socket", func(c *Config) { c.SocketDir = "/" + strings.Repeat("x", 120) }, "SocketDir"},
		{"no password", func(c *Config) { c.Replication.Password = "" }, "Replication.Password"},
		{"same role", func(c *Config) { c.Monitor.Name = "replicator" }, "Monitor.Name"},
		{"superuser role", func(c *Config) { c.Rewind.Name = "postgres" }, "Rewind.Name"},
		{"reserved param", func(c *Config) { c.Parameters = map[string]string{"port": "1"} }, "Parameters"},
		{"bad cidr", func(c *Config) { c.AllowedNetworks = []string{"10.0.0.1"} }, "AllowedNetworks"},
		{"hba newline", func(c *Config) { c.HBA = []string{"a\nb"} }, "HBA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			tc.edit(&cfg)
			_, err := New(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("New: %v, want an error naming %s", err, tc.field)
			}
		})
	}
}

func TestDataDirState(t *testing.T) {
	base := t.TempDir()
	garbage := filepath.Join(base, "garbage")
	os.MkdirAll(garbage, 0o700)
	os.WriteFile(filepath.Join(garbage, "notes.txt"), []byte("x"), 0o600)
	file := filepath.Join(base, "file")
	os.WriteFile(file, []byte("x"), 0o600)
	empty := filepath.Join(base, "empty")
	os.Mkdir(empty, 0o700)
	half := filepath.Join(base, "half")
	os.MkdirAll(half, 0o700)
	os.WriteFile(filepath.Join(half, "PG_VERSION"), []byte("15\n"), 0o600)

	for _, tc := range []struct {
		dir  string
		want DataDirState
	}{
		{filepath.Join(base, "missing"), DataDirMissing},
		{empty, DataDirEmpty},
		{fakeDataDir(t), DataDirValid},
		{garbage, DataDirInvalid},
		{file, DataDirInvalid},
		{half, DataDirInvalid},
	} {
		got, err := dataDirState(tc.dir)
		if err != nil {
			t.Errorf("%s: %v", tc.dir, err)
		}
		if got != tc.want {
			t.Errorf("%s: %v, want %v", filepath.Base(tc.dir), got, tc.want)
		}
	}
}

func TestSCRAMVerifier(t *testing.T) {
	// TestRolesSCRAM checks against verifiers PostgreSQL computes itself.
	v, err := scramVerifier("pencil", []byte("0123456789abcdef"), 4096)
	if err != nil {
		t.Fatal(err)
	}
	if !verifierMatches(v, "pencil") || verifierMatches(v, "pencil2") {
		t.Error("verifierMatches does not recognise its own verifier")
	}
	if verifierMatches("md5abc", "pencil") || verifierMatches("SCRAM-SHA-256$x", "pencil") {
		t.Error("verifierMatches accepted garbage")
	}
}

// The operator's pg_hba.conf lines are checked before any server sees
// them: a line PostgreSQL rejects would stop it from starting.
func TestValidateHBA(t *testing.T) {
	good := []string{"host all all 10.0.0.0/24 scram-sha-256", "local all postgres peer map=x", "hostssl app app 10.0.0.1 255.255.255.255 cert", "# a comment"}
	if err := ValidateHBA(good); err != nil {
		t.Errorf("good lines refused: %v", err)
	}
	for _, bad := range []string{"hots all all 10.0.0.0/24 trust", "host all all 10.0.0.0/24", "host all all 10.0.0.0/24 trusted", "local all", ""} {
		if err := ValidateHBA([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

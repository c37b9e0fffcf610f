package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
)

// The archive and backup sections of a node's file: the seeds' layout
// loads; every mistake names its key.
func TestArchiveConfig(t *testing.T) {
	seeds := `
archive:
  archive_mode: "on"
  archive_command: 'cp "%p" "/var/lib/pgsql/archivedir/%f"'
  restore_command: 'cp "/var/lib/pgsql/archivedir/%f" "%p"'
`
	cfg, err := ParseConfig([]byte(validConfig(t) + seeds))
	if err != nil {
		t.Fatalf("the seeds' archive refused: %v", err)
	}
	b := cfg.Backup.withDefaults(cfg.Cluster.Name)
	if strings.Join(b.CloneMethods, ",") != "basebackup" || b.Tool != "" {
		t.Errorf("default backup settings: %+v, want pg_basebackup only", b)
	}
	pgbr := seeds + `
backup:
  tool: pgbackrest
  options: ["--config=/etc/pgbackrest/pgbackrest.conf"]
`
	cfg, err = ParseConfig([]byte(validConfig(t) + pgbr))
	if err != nil {
		t.Fatalf("a pgBackRest config refused: %v", err)
	}
	b = cfg.Backup.withDefaults(cfg.Cluster.Name)
	if strings.Join(b.CloneMethods, ",") != "pgbackrest,basebackup" || b.Stanza != "main" || b.Command != "pgbackrest" {
		t.Errorf("pgBackRest defaults: %+v, want clone methods pgbackrest,basebackup, stanza main (cluster.name), command pgbackrest", b)
	}

	for _, tc := range []struct{ name, yaml, key string }{
		{"unknown mode", "archive: {archive_mode: sometimes, archive_command: 'cp %p /a/%f'}", "archive.archive_mode"},
		{"on without a command", "archive: {archive_mode: \"on\"}", "archive.archive_mode"},
		{"command without %p", "archive: {archive_mode: \"on\", archive_command: 'cp x /a/%f'}", "archive.archive_command"},
		{"command without a mode", "archive: {archive_command: 'cp %p /a/%f'}", "archive.archive_command"},
		{"restore without %f", "archive: {restore_command: 'cp /a/x %p'}", "archive.restore_command"},
		{"unknown tool", "backup: {tool: barman}", "backup.tool"},
		{"method of another tool", "archive: {restore_command: 'cp /a/%f %p'}\nbackup: {tool: pgbackrest, clone_methods: [wal-g, basebackup]}", "backup.clone_methods[0]"},
		{"unknown method", "backup: {clone_methods: [rsync]}", "backup.clone_methods[0]"},
		{"method twice", "backup: {clone_methods: [basebackup, basebackup]}", "backup.clone_methods[1]"},
		{"tool restore without restore_command", "backup: {tool: wal-g}", "archive.restore_command"},
		{"bad stanza", "archive: {restore_command: 'cp /a/%f %p'}\nbackup: {tool: pgbackrest, stanza: 'a b'}", "backup.stanza"},
		{"reserved parameter", "archive: {}\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(validConfig(t) + tc.yaml))
			if tc.key == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.key+":") {
				t.Fatalf("got %v, want an error naming %s", err, tc.key)
			}
		})
	}
	// archive_command both as a parameter and in the section: refused,
	// naming the section's key.
	_, err = ParseConfig([]byte(strings.Replace(validConfig(t)+seeds, "  allowed_networks:", "  parameters: {archive_command: 'cp %p /b/%f'}\n  allowed_networks:", 1)))
	if err == nil || !strings.Contains(err.Error(), "archive.archive_command") {
		t.Errorf("archive_command among postgres.parameters and in archive: %v, want a pointer to archive.archive_command", err)
	}
}

// The commands each tool runs: pgBackRest restores into the directory
// given, writes no recovery settings of its own and reports progress per
// file; a backup on a standby says so; WAL-G's likewise.
func TestToolCommands(t *testing.T) {
	pb := BackupConfig{Tool: ToolPgBackRest, Options: []string{"--config=/etc/pb.conf"}}.withDefaults("main")
	r := pb.restoreTool()
	if got := strings.Join(r.Args, " "); r.Path != "pgbackrest" || got != "--stanza=main --config=/etc/pb.conf --pg1-path={data_dir} --type=none --log-level-console=detail --log-level-stderr=off restore" {
		t.Errorf("pgBackRest restore: %s %s", r.Path, got)
	}
	if got := strings.Join(pb.backupArgs("/pg", true), " "); got != "--stanza=main --config=/etc/pb.conf --backup-standby --log-level-console=info --log-level-stderr=off backup" {
		t.Errorf("pgBackRest backup on a standby: %s", got)
	}
	if got := strings.Join(pb.backupArgs("/pg", false), " "); strings.Contains(got, "--backup-standby") {
		t.Errorf("pgBackRest backup on the primary: %s", got)
	}
	wg := BackupConfig{Tool: ToolWALG, Command: "/usr/local/bin/wal-g", Options: []string{"--config", "/etc/walg.json"}}.withDefaults("main")
	if got := strings.Join(wg.restoreTool().Args, " "); got != "--config /etc/walg.json backup-fetch {data_dir} LATEST" {
		t.Errorf("WAL-G restore: %s", got)
	}
	if got := strings.Join(wg.backupArgs("/pg", true), " "); got != "--config /etc/walg.json backup-push /pg" {
		t.Errorf("WAL-G backup: %s", got)
	}
	if (BackupConfig{}).restoreTool() != nil {
		t.Error("no tool, yet a restore")
	}
}

func TestPatchArchive(t *testing.T) {
	tool, methods := "wal-g", []string{"basebackup"}
	cur := BackupConfig{Tool: ToolPgBackRest, Command: "/opt/pgbackrest", Stanza: "main", CloneMethods: []string{"pgbackrest", "basebackup"}}
	var p configPatch
	p.Backup = &struct {
		Tool         *string   `json:"tool"`
		Command      *string   `json:"command"`
		Stanza       *string   `json:"stanza"`
		Options      *[]string `json:"options"`
		CloneMethods *[]string `json:"clone_methods"`
	}{Tool: &tool}
	_, b := patchArchive(p, ArchiveConfig{}, cur)
	b = b.withDefaults("main")
	if strings.Join(b.CloneMethods, ",") != "wal-g,basebackup" || b.Command != "wal-g" {
		t.Errorf("another tool keeps the old tool's methods or program: %+v", b)
	}
	p.Backup.CloneMethods = &methods
	_, b = patchArchive(p, ArchiveConfig{}, cur)
	if strings.Join(b.CloneMethods, ",") != "basebackup" {
		t.Errorf("methods given with the tool: %+v", b)
	}
}

func TestProgressPercent(t *testing.T) {
	for line, want := range map[string]string{
		"1234/5678 kB (21%), 0/1 tablespace":                                 "21%",
		"12345/67890 kB (100%), 1/1 tablespace":                              "100%",
		"P01 DETAIL: restore file /d/base/1/2619 (136KB, 21.50%) checksum x": "21.50%",
		"pg_rewind: reading source file list":                                "",
		"something (odd%)":                                                   "",
	} {
		if got := progressPercent(line); got != want {
			t.Errorf("%q: %q, want %q", line, got, want)
		}
	}
}

// backupMember: the streaming standby with the least lag, else the
// primary, else none.
func TestBackupMember(t *testing.T) {
	st := consensus.State{Primary: "a", Epoch: 3, Members: map[string]consensus.Member{
		"a": {Name: "a", PGHost: "h", PGPort: 1}, "b": {Name: "b", PGHost: "h", PGPort: 2}, "c": {Name: "c", PGHost: "h", PGPort: 3},
	}}
	primary := memberView{reachable: true, obs: Observation{Epoch: 3, Postgres: postgres.Status{Running: true, CurrentLSN: 1000}}}
	standby := func(replayed postgres.LSN) memberView {
		return memberView{reachable: true, obs: Observation{Epoch: 3, Postgres: postgres.Status{Running: true, InRecovery: true, Streaming: true, UpstreamHost: "h", UpstreamPort: 1, ReplayedLSN: replayed}}}
	}
	if got, _ := backupMember(st, map[string]memberView{"a": primary, "b": standby(900), "c": standby(990)}); got != "c" {
		t.Errorf("two streaming standbys: %q, want c (less lag)", got)
	}
	lost := standby(1000)
	lost.obs.Postgres.Streaming = false
	if got, _ := backupMember(st, map[string]memberView{"a": primary, "b": lost}); got != "a" {
		t.Errorf("no streaming standby: %q, want the primary", got)
	}
	if got, why := backupMember(st, map[string]memberView{"b": lost}); got != "" || why == "" {
		t.Errorf("nothing to back up: %q %q", got, why)
	}
}

// The examples under examples/archive load as the archive and backup
// sections of a node's file.
func TestArchiveExamples(t *testing.T) {
	for _, tc := range []struct {
		file, mode, tool, methods string
	}{
		{"archivedir.yaml", "on", "", "basebackup"},
		{"pgbackrest.yaml", "on", "pgbackrest", "pgbackrest,basebackup"},
	} {
		b, err := os.ReadFile(filepath.Join("..", "examples", "archive", tc.file))
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := ParseConfig([]byte(validConfig(t) + string(b)))
		if err != nil {
			t.Fatalf("%s: %v", tc.file, err)
		}
		bk := cfg.Backup.withDefaults(cfg.Cluster.Name)
		if cfg.Archive.ArchiveMode != tc.mode || cfg.Archive.RestoreCommand == "" || bk.Tool != tc.tool || strings.Join(bk.CloneMethods, ",") != tc.methods {
			t.Errorf("%s: archive %+v backup %+v", tc.file, cfg.Archive, bk)
		}
	}
}

// Files and recorded versions from before the archive section set the
// archive as PostgreSQL parameters: those are taken as the section's.
func TestLiftArchive(t *testing.T) {
	params := map[string]string{"work_mem": "8MB", "archive_mode": "on", "ARCHIVE_COMMAND": "cp %p /a/%f"}
	got, a := liftArchive(params, ArchiveConfig{RestoreCommand: "cp /a/%f %p"})
	if len(got) != 1 || got["work_mem"] != "8MB" || a != (ArchiveConfig{ArchiveMode: "on", ArchiveCommand: "cp %p /a/%f", RestoreCommand: "cp /a/%f %p"}) {
		t.Errorf("lifted: %v %+v", got, a)
	}
	if len(params) != 3 {
		t.Error("the caller's map was changed")
	}
	// Set in both: left among the parameters, where validation names it.
	got, a = liftArchive(map[string]string{"archive_mode": "always"}, ArchiveConfig{ArchiveMode: "on"})
	if got["archive_mode"] != "always" || a.ArchiveMode != "on" {
		t.Errorf("both: %v %+v", got, a)
	}
	cfg, err := ParseConfig([]byte(strings.Replace(validConfig(t), "  allowed_networks:", "  parameters: {archive_mode: \"on\", archive_command: 'cp \"%p\" \"/arch/%f\"'}\n  allowed_networks:", 1)))
	if err != nil {
		t.Fatalf("an older file with the archive among its parameters: %v", err)
	}
	if cfg.Archive.ArchiveMode != "on" || cfg.Archive.ArchiveCommand != `cp "%p" "/arch/%f"` || len(cfg.Postgres.Parameters) != 0 {
		t.Errorf("archive %+v, parameters %v", cfg.Archive, cfg.Postgres.Parameters)
	}
}

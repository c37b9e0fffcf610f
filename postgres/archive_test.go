package postgres

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The archive settings go into pgha.conf as they are given; a change of
// archive_mode is the operator's restart to make (pending_restart), not
// the agent's; restore_command is what pg_rewind --restore-target-wal will
// find there.
func TestConfigureArchive(t *testing.T) {
	inst, err := New(testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := inst.Configure(nil, nil); err != nil {
		t.Fatal(err)
	}
	conf := func() map[string]string {
		b, err := os.ReadFile(filepath.Join(inst.Config().DataDir, PghaConfFile))
		if err != nil {
			t.Fatal(err)
		}
		return parsePghaConf(string(b))
	}
	if c := conf(); c["archive_mode"] != "" || c["restore_command"] != "" || inst.WrittenRestoreCommand() != "" {
		t.Fatalf("archive settings written without an archive: %v", c)
	}
	seeds := Archive{Mode: "on", Command: `cp "%p" "/var/lib/pgsql/archivedir/%f"`, RestoreCommand: `cp "/var/lib/pgsql/archivedir/%f" "%p"`}
	if err := inst.SetArchive(seeds); err != nil {
		t.Fatal(err)
	}
	ch, err := inst.Configure(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !ch.Changed || ch.NeedsRestart || !slices.Contains(ch.What, "archive_mode") {
		t.Errorf("archive on: %+v, want a change the agent does not restart for", ch)
	}
	c := conf()
	if c["archive_mode"] != "on" || c["archive_command"] != seeds.Command || c["restore_command"] != seeds.RestoreCommand {
		t.Errorf("pgha.conf: %v", c)
	}
	if got := inst.WrittenRestoreCommand(); got != seeds.RestoreCommand {
		t.Errorf("WrittenRestoreCommand = %q", got)
	}
	// Taken out again: PostgreSQL's defaults (or the operator's lines).
	if err := inst.SetArchive(Archive{}); err != nil {
		t.Fatal(err)
	}
	if _, err := inst.Configure(nil, nil); err != nil {
		t.Fatal(err)
	}
	if c := conf(); c["archive_mode"] != "" || c["restore_command"] != "" {
		t.Errorf("archive settings left after they were removed: %v", c)
	}
}

func TestArchiveValidate(t *testing.T) {
	for _, tc := range []struct {
		a   Archive
		err string
	}{
		{Archive{}, ""},
		{Archive{Mode: "off"}, ""},
		{Archive{Mode: "always", Command: "wal-g wal-push %p", RestoreCommand: `wal-g wal-fetch "%f" "%p"`}, ""},
		{Archive{RestoreCommand: `pgbackrest --stanza=main archive-get %f "%p"`}, ""},
		{Archive{Mode: "yes", Command: "cp %p /a/%f"}, "archive_mode"},
		{Archive{Mode: "on"}, "needs an archive_command"},
		{Archive{Mode: "on", Command: "cp /x /a/%f"}, "%p"},
		{Archive{Command: "cp %p /a/%f"}, "archive_mode is not"},
		{Archive{RestoreCommand: "cp /a/x %p"}, "%f"},
		{Archive{Mode: "on", Command: "cp %p /a/%f\nrm -rf /"}, "newline"},
	} {
		err := tc.a.Validate()
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%+v: %v, want %q", tc.a, err, tc.err)
		}
	}
	if err := ValidateParameters(map[string]string{"restore_command": "cp /a/%f %p"}); err == nil || !strings.Contains(err.Error(), "archive.restore_command") {
		t.Errorf("restore_command as a parameter: %v", err)
	}
}

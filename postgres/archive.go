package postgres

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Archive is the WAL archive every member's pgha.conf names (the
// cluster-wide archive settings). archive_mode 'on' archives only on the
// server that is not in recovery: the primary's archiver runs, a standby's
// does not until it is promoted, and a promoted standby archives from its
// promotion on, the new timeline's history file first. restore_command is
// what a standby fetches WAL with when streaming cannot give it (a slot
// that lost it, a clone restored from a backup) and what pg_rewind
// --restore-target-wal uses.
type Archive struct {
	// Mode is archive_mode: off, on or always; "" leaves archive_mode and
	// archive_command out of pgha.conf (PostgreSQL's default, or whatever
	// the operator's postgresql.conf says).
	Mode string
	// Command is archive_command (%p the file's path, %f its name).
	Command string
	// RestoreCommand is restore_command (%f the file wanted, %p where to
	// put it); "" writes none.
	RestoreCommand string
}

// Validate checks what PostgreSQL would otherwise only refuse at start (or
// accept and fail at the first segment): a known mode, a command for it,
// the placeholders each command needs, one line each.
func (a Archive) Validate() error {
	switch a.Mode {
	case "", "off", "on", "always":
	default:
		return fmt.Errorf("archive_mode %q is not off, on or always", a.Mode)
	}
	for _, c := range []struct{ key, v string }{{"archive_command", a.Command}, {"restore_command", a.RestoreCommand}} {
		if strings.ContainsAny(c.v, "\n\r\x00") {
			return fmt.Errorf("%s: the value contains a newline", c.key)
		}
	}
	if (a.Mode == "on" || a.Mode == "always") && strings.TrimSpace(a.Command) == "" {
		return fmt.Errorf("archive_mode %q needs an archive_command (PostgreSQL would keep every WAL segment until one is set), e.g. cp \"%%p\" \"/var/lib/pgsql/archivedir/%%f\"", a.Mode)
	}
	if a.Command != "" && !strings.Contains(a.Command, "%p") {
		return fmt.Errorf("archive_command %q has no %%p (the path of the segment to archive)", a.Command)
	}
	if a.Command != "" && a.Mode == "" {
		return errors.New("archive_command is set but archive_mode is not: set archive_mode to on")
	}
	if a.RestoreCommand != "" && (!strings.Contains(a.RestoreCommand, "%f") || !strings.Contains(a.RestoreCommand, "%p")) {
		return fmt.Errorf("restore_command %q needs %%f (the file wanted) and %%p (where to copy it), e.g. cp \"/var/lib/pgsql/archivedir/%%f\" \"%%p\"", a.RestoreCommand)
	}
	return nil
}

// settings are the lines of pgha.conf a writes.
func (a Archive) settings() []setting {
	var s []setting
	if a.Mode != "" {
		s = append(s, setting{"archive_mode", a.Mode}, setting{"archive_command", a.Command})
	}
	if a.RestoreCommand != "" {
		s = append(s, setting{"restore_command", a.RestoreCommand})
	}
	return s
}

// SetArchive replaces the archive settings (none at first): the next
// Configure writes them. archive_mode needs a restart, which Configure
// leaves to the operator as it does an operator's parameter (the server
// shows it as pending_restart).
func (i *Instance) SetArchive(a Archive) error {
	if err := a.Validate(); err != nil {
		return err
	}
	i.paramsMu.Lock()
	defer i.paramsMu.Unlock()
	i.archive = a
	return nil
}

func (i *Instance) archiveSettings() Archive {
	i.paramsMu.Lock()
	defer i.paramsMu.Unlock()
	return i.archive
}

// WrittenRestoreCommand is the restore_command the data directory's
// pgha.conf holds now ("" if none, or no pgha.conf): what pg_rewind
// --restore-target-wal would run, since it asks the target's own
// configuration.
func (i *Instance) WrittenRestoreCommand() string {
	b, err := os.ReadFile(filepath.Join(i.cfg.DataDir, PghaConfFile))
	if err != nil {
		return ""
	}
	return parsePghaConf(string(b))["restore_command"]
}

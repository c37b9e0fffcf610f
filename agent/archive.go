package agent

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
	"github.com/pgha/pgha/recovery"
)

// The WAL archive and backups (issue 21). Both are cluster-wide: every
// member writes the same archive_mode, archive_command and restore_command
// into its pgha.conf, and clones and backs up with the same tool. A node's
// file records them as version 1 of the cluster-wide configuration, as it
// does timing and failover; afterwards edit-config changes them.
//
// What follows from archive_mode 'on' on every member: only the server out
// of recovery archives, so the primary's archive_command runs and the
// standbys' does not; a promoted standby archives from its promotion, the
// new timeline's history file included. restore_command is what a standby
// falls back to when streaming cannot give it the WAL it needs (its slot
// lost it during a long outage: it catches up from the archive instead of
// being re-cloned), what a clone restored from a backup replays up to the
// present with, and what pg_rewind --restore-target-wal fetches a former
// primary's recycled WAL with before a rejoin falls back to a re-clone.

// ArchiveConfig is the archive section: PostgreSQL's own settings, written
// on every member.
type ArchiveConfig struct {
	// ArchiveMode is archive_mode: off, on or always; empty leaves
	// PostgreSQL's (or the operator's postgresql.conf) alone. Changing it
	// needs a restart of each member (shown as pending_restart).
	ArchiveMode string `yaml:"archive_mode" json:"archive_mode"`
	// ArchiveCommand is archive_command, e.g. the seeds' cp "%p"
	// "/var/lib/pgsql/archivedir/%f", or pgbackrest --stanza=pgha
	// archive-push "%p".
	ArchiveCommand string `yaml:"archive_command" json:"archive_command"`
	// RestoreCommand is restore_command, e.g. cp
	// "/var/lib/pgsql/archivedir/%f" "%p".
	RestoreCommand string `yaml:"restore_command" json:"restore_command"`
}

// BackupConfig is the backup section: the backup tool pgha-agent backup
// runs, and the clone methods new and re-cloned standbys try in order.
type BackupConfig struct {
	// Tool is pgbackrest or wal-g; empty: none (clones with pg_basebackup).
	Tool string `yaml:"tool" json:"tool"`
	// Command is the tool's program (default: its name, found in PATH).
	Command string `yaml:"command" json:"command"`
	// Stanza is pgBackRest's --stanza (default: cluster.name).
	Stanza string `yaml:"stanza" json:"stanza"`
	// Options are added to every call of the tool, e.g.
	// --config=/etc/pgbackrest/pgbackrest.conf, or WAL-G's --config FILE.
	Options []string `yaml:"options" json:"options"`
	// CloneMethods, in order of preference: the tool's name (a restore of
	// its latest backup) and basebackup (pg_basebackup from a member).
	// Default: the tool then basebackup, or basebackup alone.
	CloneMethods []string `yaml:"clone_methods" json:"clone_methods"`
}

// liftArchive moves archive_mode, archive_command and restore_command out
// of PostgreSQL parameters into the archive settings a, where a does not
// set them already: configurations from before the archive section set
// them as parameters (as the seeds' postgresql.conf does), and edit-config
// --pg archive_mode=on means the same. One that a sets too stays among the
// parameters, where validation refuses it with the key to use. params is
// not modified; the result is a new map when anything moved.
func liftArchive(params map[string]string, a ArchiveConfig) (map[string]string, ArchiveConfig) {
	out, cloned := params, false
	for k, v := range params {
		var into *string
		switch strings.ToLower(k) {
		case "archive_mode":
			into = &a.ArchiveMode
		case "archive_command":
			into = &a.ArchiveCommand
		case "restore_command":
			into = &a.RestoreCommand
		default:
			continue
		}
		if *into != "" {
			continue
		}
		*into = v
		if !cloned {
			out, cloned = maps.Clone(params), true
		}
		delete(out, k)
	}
	return out, a
}

// Backup tools pgha knows.
const (
	ToolPgBackRest = "pgbackrest"
	ToolWALG       = "wal-g"
	// MethodBaseBackup is the clone method pg_basebackup.
	MethodBaseBackup = "basebackup"
)

// withDefaults fills in the defaults that depend on the tool; cluster is
// the cluster's name (pgBackRest's stanza).
func (b BackupConfig) withDefaults(cluster string) BackupConfig {
	if b.Tool != "" && b.Command == "" {
		b.Command = b.Tool
	}
	if b.Tool == ToolPgBackRest && b.Stanza == "" {
		b.Stanza = cluster
	}
	if len(b.CloneMethods) == 0 {
		b.CloneMethods = []string{MethodBaseBackup}
		if b.Tool != "" {
			b.CloneMethods = []string{b.Tool, MethodBaseBackup}
		}
	}
	b.Options = nonNil(b.Options)
	return b
}

var stanzaRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// validateArchive checks the archive and backup sections together, of a
// node's file or of a cluster-wide change: a clone restored from a backup
// can only reach the present through the archive.
func validateArchive(bad func(key, format string, args ...any), a ArchiveConfig, b BackupConfig) {
	if err := a.postgres().Validate(); err != nil {
		key, _, _ := strings.Cut(err.Error(), " ")
		switch key {
		case "archive_mode", "archive_command", "restore_command":
			bad("archive."+key, "%s", strings.TrimSpace(strings.TrimPrefix(strings.TrimPrefix(err.Error(), key), ":")))
		default:
			bad("archive", "%v", err)
		}
	}
	switch b.Tool {
	case "", ToolPgBackRest, ToolWALG:
	default:
		bad("backup.tool", "%q is not pgbackrest or wal-g (or empty for none)", b.Tool)
	}
	if strings.ContainsAny(b.Command, "\n\r\x00") {
		bad("backup.command", "must be one line")
	}
	if b.Tool == ToolPgBackRest && !stanzaRE.MatchString(b.Stanza) {
		bad("backup.stanza", "%q is not a stanza name (letters, digits, '_', '.', '-')", b.Stanza)
	}
	for i, o := range b.Options {
		if o == "" || strings.ContainsAny(o, "\n\r\x00") {
			bad(fmt.Sprintf("backup.options[%d]", i), "%q must be one non-empty argument", o)
		}
	}
	seen := map[string]bool{}
	for i, m := range b.CloneMethods {
		key := fmt.Sprintf("backup.clone_methods[%d]", i)
		switch {
		case seen[m]:
			bad(key, "%q is listed twice", m)
		case m == MethodBaseBackup:
		case m == ToolPgBackRest || m == ToolWALG:
			if m != b.Tool {
				bad(key, "%q is not backup.tool (%q); set backup.tool: %s", m, b.Tool, m)
			} else if a.RestoreCommand == "" {
				bad("archive.restore_command", "missing; a standby restored from a %s backup replays the WAL since the backup from the archive, e.g. %s", m, exampleRestoreCommand(b))
			}
		default:
			bad(key, "%q is not a clone method (basebackup, pgbackrest, wal-g)", m)
		}
		seen[m] = true
	}
}

// exampleRestoreCommand is a restore_command that fits the tool.
func exampleRestoreCommand(b BackupConfig) string {
	switch b.Tool {
	case ToolPgBackRest:
		return fmt.Sprintf(`%s --stanza=%s archive-get %%f "%%p"`, b.Command, b.Stanza)
	case ToolWALG:
		return fmt.Sprintf(`%s wal-fetch "%%f" "%%p"`, b.Command)
	}
	return `cp "/var/lib/pgsql/archivedir/%f" "%p"`
}

// postgres is what the PostgreSQL instance writes.
func (a ArchiveConfig) postgres() postgres.Archive {
	return postgres.Archive{Mode: a.ArchiveMode, Command: a.ArchiveCommand, RestoreCommand: a.RestoreCommand}
}

// clusterArchive and clusterBackup are the replicated forms of a file's.
func clusterArchive(a ArchiveConfig) *consensus.ArchiveSettings {
	return &consensus.ArchiveSettings{ArchiveMode: a.ArchiveMode, ArchiveCommand: a.ArchiveCommand, RestoreCommand: a.RestoreCommand}
}

func clusterBackup(b BackupConfig) *consensus.BackupSettings {
	// Empty lists as nil: what a round trip through the Raft log gives.
	orNil := func(s []string) []string {
		if len(s) == 0 {
			return nil
		}
		return slices.Clone(s)
	}
	return &consensus.BackupSettings{Tool: b.Tool, Command: b.Command, Stanza: b.Stanza, Options: orNil(b.Options), CloneMethods: orNil(b.CloneMethods)}
}

// archiveOf and backupOf are the settings in force: the recorded ones, or
// the file's before the cluster records any.
func archiveOf(c consensus.ClusterConfig, file ArchiveConfig) ArchiveConfig {
	if c.Archive == nil {
		return file
	}
	return ArchiveConfig{ArchiveMode: c.Archive.ArchiveMode, ArchiveCommand: c.Archive.ArchiveCommand, RestoreCommand: c.Archive.RestoreCommand}
}

func backupOf(c consensus.ClusterConfig, file BackupConfig, cluster string) BackupConfig {
	if c.Backup == nil {
		return file.withDefaults(cluster)
	}
	b := c.Backup
	return BackupConfig{Tool: b.Tool, Command: b.Command, Stanza: b.Stanza, Options: slices.Clone(b.Options), CloneMethods: slices.Clone(b.CloneMethods)}.withDefaults(cluster)
}

func (a *Agent) archive() ArchiveConfig { return archiveOf(a.node.Config(), a.cfg.Archive) }

func (a *Agent) backup() BackupConfig {
	return backupOf(a.node.Config(), a.cfg.Backup, a.cfg.Cluster.Name)
}

// restoreTool is the tool's restore of its latest backup into a directory
// (a clone method); nil without a tool.
func (b BackupConfig) restoreTool() *recovery.Tool {
	t := &recovery.Tool{Name: b.Tool, Path: b.Command}
	switch b.Tool {
	case ToolPgBackRest:
		// --type=none: no recovery settings of pgBackRest's own; the
		// agent writes the standby's (restore_command included) before it
		// starts. Progress per file at detail level, as "(8KB, 42.10%)".
		t.Args = append([]string{"--stanza=" + b.Stanza}, b.Options...)
		t.Args = append(t.Args, "--pg1-path="+recovery.DataDirArg, "--type=none", "--log-level-console=detail", "--log-level-stderr=off", "restore")
	case ToolWALG:
		t.Args = append(slices.Clone(b.Options), "backup-fetch", recovery.DataDirArg, "LATEST")
	default:
		return nil
	}
	return t
}

// backupArgs are the tool's arguments for a backup of this node's
// PostgreSQL; standby: this node is a standby (pgBackRest copies the files
// from it, and asks the primary its pgbackrest.conf names only to start and
// stop the backup).
func (b BackupConfig) backupArgs(dataDir string, standby bool) []string {
	switch b.Tool {
	case ToolPgBackRest:
		args := append([]string{"--stanza=" + b.Stanza}, b.Options...)
		if standby {
			args = append(args, "--backup-standby")
		}
		return append(args, "--log-level-console=info", "--log-level-stderr=off", "backup")
	case ToolWALG:
		return append(slices.Clone(b.Options), "backup-push", dataDir)
	}
	return nil
}

package recovery

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pgha/pgha/postgres"
)

// RewindSource is the new primary pg_rewind copies from, over a normal (not
// replication) connection as the rewind role: LOGIN with EXECUTE on
// pg_ls_dir, pg_stat_file and pg_read_binary_file (postgres.EnsureRoles
// grants them).
type RewindSource struct {
	Host     string
	Port     int
	User     string // the rewind role
	PassFile string // libpq password file readable by runAs (see postgres.WritePassFile); may be empty with trust auth
	Database string // default "postgres"
	// RestoreTargetWAL runs pg_rewind --restore-target-wal: WAL the
	// target no longer has in pg_wal (a primary down long enough to have
	// recycled it before the fork) comes from the archive, through the
	// restore_command of the target's own configuration, instead of the
	// rewind being impossible.
	RestoreTargetWAL bool
}

// ErrRewindImpossible is wrapped by Rewind's error when pg_rewind cannot
// bring the data directory onto the source's timeline (different system, no
// common ancestor timeline, the target's WAL from before the fork is gone, no
// checksums nor wal_log_hints), or when an earlier pg_rewind stopped after it
// had begun changing the data directory. The caller falls back to Reinit.
var ErrRewindImpossible = errors.New("pg_rewind cannot rewind this data directory")

// RewindMarkerSuffix names the sibling file <dataDir>.pgha-rewinding that
// exists while pg_rewind may be changing dataDir. If it is still there when
// Rewind is called (pg_rewind failed after its point of no return, or the
// agent died meanwhile), dataDir is a half-rewound mix of two histories that
// must never be started: Rewind then returns ErrRewindImpossible at once, and
// only a successful Reinit removes the marker.
const RewindMarkerSuffix = ".pgha-rewinding"

// RewindIncomplete reports whether an earlier pg_rewind of dataDir stopped
// after it had begun changing it (see RewindMarkerSuffix). Such a data
// directory must not be started, whatever pg_controldata or a backup_label
// say: Reinit it.
func RewindIncomplete(dataDir string) bool {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return false
	}
	_, err = os.Stat(abs + RewindMarkerSuffix)
	return err == nil
}

// keptFiles are the node's own configuration files. PostgreSQL does not
// replicate them (ALTER SYSTEM writes postgresql.auto.conf on one server
// only), but pg_rewind and pg_basebackup copy the source's: Rewind and Reinit
// put the node's own versions back, so operator lines and ALTER SYSTEM
// settings of this node survive. pgha's own settings (pgha.conf, the managed
// blocks of pg_hba.conf and pg_ident.conf, standby.signal) are rewritten by
// postgres.Instance.Configure, which the caller must run afterwards anyway.
var keptFiles = []string{"postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf", postgres.PghaConfFile}

// impossibleMessages are pg_rewind's fatal messages that retrying cannot
// cure (LC_ALL=C; checked against PostgreSQL 15's pg_rewind).
var impossibleMessages = []string{
	"source and target clusters are from different systems",
	"clusters are not compatible with this version of pg_rewind",
	"target server needs to use either data checksums or",
	"could not find common ancestor of the source and target cluster's timelines",
	"could not find previous WAL record", // the target's WAL before the fork was recycled
	"could not read WAL record",
}

// Rewind makes the stopped former primary at dataDir follow src's timeline
// with pg_rewind (--target-pgdata, --source-server with the passfile,
// --progress; without --write-recovery-conf), passing each output line to
// progress (which may be nil; it is called from another goroutine, one line
// at a time, and not after Rewind returned). pg_rewind runs as runAs when the
// process is root; binDir holds it and postgres.
//
// A target that was not shut down cleanly (kill -9, power loss) is fine:
// pg_rewind (PostgreSQL 13+) first runs crash recovery in single-user mode.
// "No rewind required" (the node never went past the fork, e.g. after a
// clean switchover) is success.
//
// After success:
//   - the data directory holds src's data as of the rewind plus a
//     backup_label; started as a standby of src it replays src's WAL from
//     the last common checkpoint and then streams;
//   - the node's own configuration files (keptFiles) are as they were
//     before: pg_rewind copies src's, Rewind puts the node's back;
//   - standby.signal exists, so that even a start before the caller's
//     Configure cannot make the node a primary of a forked timeline
//     (without primary_conninfo it waits in recovery).
//
// The caller must then run postgres.Instance.Configure with a Standby for
// src (primary_conninfo, slot) before starting the server.
//
// Errors: a running postmaster on dataDir is refused. Errors wrapping
// ErrRewindImpossible (with pg_rewind's message) mean "rewind will never
// work here, use Reinit". Any other error (src unreachable, wrong password,
// missing grants, cancelled before pg_rewind's point of no return) left
// dataDir unchanged, apart from crash recovery, and means "retry later".
//
// Right after a promotion the source's checkpoint still names the old
// timeline; pg_rewind from the May 2023 minor releases on (15.3) also reads
// minRecoveryPointTLI and copes (the tests rewind without a CHECKPOINT).
// Older minor releases wrongly answer "no rewind required" until the new
// primary has checkpointed.
func Rewind(ctx context.Context, binDir, dataDir string, src RewindSource, runAs string, progress func(line string)) error {
	if err := rewind(ctx, binDir, dataDir, src, runAs, progress); err != nil {
		return fmt.Errorf("rewind %s from %s:%d: %w", dataDir, src.Host, src.Port, err)
	}
	return nil
}

func rewind(ctx context.Context, binDir, dataDir string, src RewindSource, runAs string, progress func(string)) error {
	if progress == nil {
		progress = func(string) {}
	}
	switch {
	case src.Host == "":
		return errors.New("source Host is required")
	case src.Port < 1 || src.Port > 65535:
		return fmt.Errorf("source Port %d is not a TCP port", src.Port)
	case src.User == "":
		return errors.New("source User (the rewind role) is required")
	case dataDir == "":
		return errors.New("data directory is required")
	}
	if src.Database == "" {
		src.Database = "postgres"
	}
	dataDir, err := filepath.Abs(dataDir)
	if err != nil {
		return err
	}
	if src.PassFile != "" {
		if src.PassFile, err = filepath.Abs(src.PassFile); err != nil {
			return err
		}
	}

	marker := dataDir + RewindMarkerSuffix
	if _, err := os.Stat(marker); err == nil {
		return fmt.Errorf("%w: an earlier pg_rewind stopped after it had begun changing the data directory (%s exists); it must be re-cloned", ErrRewindImpossible, marker)
	}
	st, err := postgres.DataDirStateOf(dataDir)
	if err != nil {
		return err
	}
	if st != postgres.DataDirValid {
		return fmt.Errorf("%w: the data directory is %s", ErrRewindImpossible, st)
	}
	if err := refuseRunning(dataDir); err != nil {
		return err
	}
	kept, err := readKeptFiles(dataDir)
	if err != nil {
		return err
	}

	conninfo := []string{
		"host=" + connValue(src.Host),
		"port=" + strconv.Itoa(src.Port),
		"user=" + connValue(src.User),
		"dbname=" + connValue(src.Database),
		"application_name=pgha_rewind",
		"connect_timeout=10",
	}
	if src.PassFile != "" {
		conninfo = append(conninfo, "passfile="+connValue(src.PassFile))
	}
	args := []string{
		"--target-pgdata=" + dataDir,
		"--source-server=" + strings.Join(conninfo, " "),
		"--progress",
	}
	if src.RestoreTargetWAL {
		args = append(args, "--restore-target-wal")
	}

	// The marker goes down before pg_rewind starts: if this process dies
	// while pg_rewind copies, the next call knows.
	note := fmt.Sprintf("pg_rewind from %s:%d started %s\n", src.Host, src.Port, time.Now().UTC().Format(time.RFC3339))
	if err := postgres.WriteFileAs(marker, []byte(note), 0o600, runAs); err != nil {
		return fmt.Errorf("write rewind marker: %w", err)
	}
	// pg_rewind changes nothing before it prints "need to copy N MB" (its
	// point of no return), except for crash recovery, which is harmless.
	changing := false
	last, err := runTool(ctx, runAs, filepath.Join(binDir, "pg_rewind"), args, func(line string) {
		if strings.Contains(line, "need to copy ") {
			changing = true
		}
		progress(line)
	})
	if err != nil {
		if changing {
			return fmt.Errorf("%w: pg_rewind failed after it had begun changing the data directory, which must be re-cloned: %w", ErrRewindImpossible, err)
		}
		if rmErr := removeSynced(marker); rmErr != nil {
			return fmt.Errorf("%w (and remove rewind marker: %v)", err, rmErr)
		}
		for _, m := range impossibleMessages {
			if strings.Contains(strings.Join(last, "\n"), m) {
				return fmt.Errorf("%w: %w", ErrRewindImpossible, err)
			}
		}
		return err
	}

	if err := writeKeptFiles(dataDir, kept, runAs); err != nil {
		return err
	}
	if err := writeStandbySignal(dataDir, runAs); err != nil {
		return err
	}
	return removeSynced(marker)
}

// writeStandbySignal creates standby.signal in dataDir: a rewound or
// re-cloned data directory started before the caller's Configure then waits
// in recovery instead of becoming a second primary.
func writeStandbySignal(dataDir, runAs string) error {
	if err := postgres.WriteFileAs(filepath.Join(dataDir, "standby.signal"), nil, 0o600, runAs); err != nil {
		return fmt.Errorf("write standby.signal: %w", err)
	}
	return nil
}

// refuseRunning returns an error when a postmaster runs on dataDir.
func refuseRunning(dataDir string) error {
	pid, err := postgres.PostmasterPIDOf(dataDir)
	if err != nil {
		return err
	}
	if pid > 0 {
		return fmt.Errorf("refusing: a postmaster (pid %d) is running on %s; stop it first", pid, dataDir)
	}
	return nil
}

// keptFile is one of keptFiles as it was: content and mode, or absent.
type keptFile struct {
	name    string
	present bool
	data    []byte
	mode    os.FileMode
}

func readKeptFiles(dataDir string) ([]keptFile, error) {
	var kept []keptFile
	for _, name := range keptFiles {
		path := filepath.Join(dataDir, name)
		fi, err := os.Lstat(path)
		switch {
		case errors.Is(err, os.ErrNotExist):
			kept = append(kept, keptFile{name: name})
			continue
		case err != nil:
			return nil, fmt.Errorf("keep the node's configuration: %w", err)
		case !fi.Mode().IsRegular():
			continue // a symlink (e.g. to /etc): not ours to rewrite
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("keep the node's configuration: %w", err)
		}
		kept = append(kept, keptFile{name: name, present: true, data: data, mode: fi.Mode().Perm()})
	}
	return kept, nil
}

// writeKeptFiles makes dir's copies of kept what they were.
func writeKeptFiles(dir string, kept []keptFile, runAs string) error {
	for _, k := range kept {
		path := filepath.Join(dir, k.name)
		if !k.present {
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("restore the node's configuration: %w", err)
			}
			continue
		}
		if err := postgres.WriteFileAs(path, k.data, k.mode, runAs); err != nil {
			return fmt.Errorf("restore the node's configuration: %w", err)
		}
	}
	return nil
}

// removeSynced removes path (if there) and syncs its directory.
func removeSynced(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	syncDir(filepath.Dir(path))
	return nil
}

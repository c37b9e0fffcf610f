// Package recovery builds and repairs standbys: Clone copies a primary with
// pg_basebackup; Rewind makes a former primary follow the new one with
// pg_rewind; Reinit replaces a data directory with a fresh clone when a
// rewind is impossible.
package recovery

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/pgha/pgha/postgres"
)

// Source is the primary a clone copies from, over a replication connection.
type Source struct {
	Host     string
	Port     int
	User     string // replication role
	PassFile string // libpq password file readable by runAs (see postgres.WritePassFile); may be empty with trust auth
	SlotName string // physical slot that retains WAL for the new standby; must exist on the primary
	// Tool, when set, makes the copy a restore of the latest backup with
	// a backup tool instead of pg_basebackup from Host (which is then
	// not needed).
	Tool *Tool
	// SystemID, if not 0, is the cluster's system identifier: a copy of
	// another cluster (a backup repository that holds an older cluster's
	// backups) is refused before it replaces anything.
	SystemID uint64
}

// Describe names the source in messages: the host, or the backup tool.
func (src Source) Describe() string {
	if src.Tool != nil {
		return src.Tool.Name + " restore"
	}
	return fmt.Sprintf("%s:%d", src.Host, src.Port)
}

// copyInto fills dir (existing, empty, runAs's) from src: pg_basebackup,
// or the backup tool's restore.
func (src Source) copyInto(ctx context.Context, binDir, dir, runAs string, progress func(string)) error {
	var err error
	if src.Tool != nil {
		err = src.Tool.restore(ctx, dir, runAs, progress)
	} else {
		err = basebackup(ctx, binDir, dir, src, runAs, progress)
	}
	if err != nil || src.SystemID == 0 {
		return err
	}
	id, err := systemID(dir)
	if err != nil {
		return fmt.Errorf("the copy has no readable pg_control: %w", err)
	}
	if id != src.SystemID {
		return fmt.Errorf("the copy is of another cluster (system identifier %d, this cluster's is %d): nothing was replaced", id, src.SystemID)
	}
	return nil
}

// TmpSuffix names the sibling directory Clone works in.
const TmpSuffix = ".pgha-clone-tmp"

// Clone copies the primary src into dataDir with pg_basebackup
// (-X stream -c fast -S slot --no-password -P), passing each progress and
// message line of pg_basebackup to progress (which may be nil).
//
// It never deletes or changes anything that was at dataDir: a non-empty
// dataDir is refused. The copy is made in a temporary directory and moved
// into place only after pg_basebackup succeeded, so a failed or cancelled
// clone leaves dataDir as it was:
//
//   - normally the temporary directory is the sibling <dataDir>.pgha-clone-tmp,
//     renamed to dataDir at the end (replacing an empty dataDir);
//   - when dataDir is an empty mount point (it cannot be replaced by a
//     rename), it is <dataDir>/.pgha-clone-tmp and its entries are moved up.
//
// A temporary directory left by a crashed earlier clone is removed first.
// pg_basebackup runs as runAs when the process is root; binDir holds it.
func Clone(ctx context.Context, binDir, dataDir string, src Source, runAs string, progress func(line string)) error {
	if err := clone(ctx, binDir, dataDir, src, runAs, progress); err != nil {
		return fmt.Errorf("clone %s into %s: %w", src.Describe(), dataDir, err)
	}
	return nil
}

func clone(ctx context.Context, binDir, dataDir string, src Source, runAs string, progress func(string)) error {
	if err := src.validate(); err != nil {
		return err
	}
	if dataDir == "" {
		return errors.New("data directory is required")
	}
	dataDir, err := filepath.Abs(dataDir)
	if err != nil {
		return err
	}

	// Refuse anything but a missing or empty dataDir.
	existing := false
	fi, err := os.Stat(dataDir)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("inspect data directory: %w", err)
	case !fi.IsDir():
		return errors.New("refusing: the data directory path exists and is not a directory")
	default:
		empty, err := isEmptyDir(dataDir)
		if err != nil {
			return fmt.Errorf("inspect data directory: %w", err)
		}
		if !empty {
			return errors.New("refusing: the data directory is not empty (nothing was changed)")
		}
		existing = true
	}

	mountPoint := existing && isMountPoint(dataDir)
	tmp := dataDir + TmpSuffix
	if mountPoint {
		tmp = filepath.Join(dataDir, TmpSuffix)
	}
	if err := makeTempDir(tmp, runAs); err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	if err := src.copyInto(ctx, binDir, tmp, runAs, progress); err != nil {
		return err
	}
	if src.Tool != nil {
		// A restored backup starts as a standby, whatever recovery
		// settings the tool wrote, until the caller's Configure.
		if err := writeStandbySignal(tmp, runAs); err != nil {
			return err
		}
	}

	// Move the finished copy into place.
	if mountPoint {
		if err := moveEntries(tmp, dataDir); err != nil {
			return err
		}
		if err := os.Remove(tmp); err != nil {
			return err
		}
		if err := os.Chmod(dataDir, 0o700); err != nil {
			return err
		}
		if err := postgres.ChownTo(dataDir, runAs); err != nil {
			return err
		}
	} else if err := syscall.Rename(tmp, dataDir); err != nil {
		// syscall, not os.Rename: os.Rename refuses to replace an (empty)
		// directory; rename(2) replaces it atomically.
		return fmt.Errorf("move the clone into place: rename %s %s: %w", tmp, dataDir, err)
	}
	ok = true
	syncDir(filepath.Dir(dataDir))
	syncDir(dataDir)
	return nil
}

func (src *Source) validate() error {
	if src.Tool != nil {
		return src.Tool.validate()
	}
	switch {
	case src.Host == "":
		return errors.New("source Host is required")
	case src.Port < 1 || src.Port > 65535:
		return fmt.Errorf("source Port %d is not a TCP port", src.Port)
	case src.User == "":
		return errors.New("source User (the replication role) is required")
	}
	if src.PassFile != "" {
		abs, err := filepath.Abs(src.PassFile)
		if err != nil {
			return err
		}
		src.PassFile = abs
	}
	return nil
}

// makeTempDir makes an empty directory dir owned by runAs, first removing
// whatever an earlier, interrupted run left there.
func makeTempDir(dir, runAs string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove stale temporary directory %s: %w", dir, err)
	}
	return postgres.MkdirAs(dir, 0o700, runAs)
}

// basebackup runs pg_basebackup (-X stream -c fast -S slot --no-password
// -P) from src into dir, which must exist, be empty and belong to runAs.
// Each output line goes to progress (which may be nil). It changes nothing
// but dir; on failure dir holds a partial copy the caller removes.
func basebackup(ctx context.Context, binDir, dir string, src Source, runAs string, progress func(string)) error {
	conninfo := []string{
		"host=" + connValue(src.Host),
		"port=" + strconv.Itoa(src.Port),
		"user=" + connValue(src.User),
		"application_name=pgha_clone",
		"connect_timeout=10",
	}
	if src.PassFile != "" {
		conninfo = append(conninfo, "passfile="+connValue(src.PassFile))
	}
	args := []string{
		"-D", dir,
		"-d", strings.Join(conninfo, " "),
		"-X", "stream",
		"-c", "fast",
		"--no-password",
		"--no-manifest",
		"-P", "-v",
	}
	if src.SlotName != "" {
		args = append(args, "-S", src.SlotName)
	}
	_, err := runTool(ctx, runAs, filepath.Join(binDir, "pg_basebackup"), args, progress)
	return err
}

// runTool runs one of PostgreSQL's client programs as runAs with untranslated
// messages, passing every line it writes (stdout and stderr) to progress
// (which may be nil). It returns the last lines of output; a failure's error
// names the program and carries those lines.
func runTool(ctx context.Context, runAs, path string, args []string, progress func(string)) ([]string, error) {
	return runToolEnv(ctx, runAs, path, args, nil, progress)
}

// runToolEnv is runTool with extra environment variables (NAME=VALUE).
func runToolEnv(ctx context.Context, runAs, path string, args, env []string, progress func(string)) ([]string, error) {
	if progress == nil {
		progress = func(string) {}
	}
	prog := filepath.Base(path)
	cmd, err := postgres.CommandAs(ctx, runAs, path, args...)
	if err != nil {
		return nil, err
	}
	cmd.Env = append(cmd.Env, "LC_ALL=C")
	cmd.Env = append(cmd.Env, env...)
	// One writer for both streams keeps the lines in the order they were
	// written. An io.Pipe (not an *os.File) lets Wait give up after
	// cmd.WaitDelay when a grandchild still holds the output open.
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", prog, err)
	}
	const keep = 15
	var last []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		readLines(pr, func(line string) {
			last = append(last, line)
			if len(last) > keep {
				last = last[len(last)-keep:]
			}
			progress(line)
		})
	}()
	err = cmd.Wait()
	pw.Close()
	<-done
	if err != nil {
		if ctx.Err() != nil {
			return last, fmt.Errorf("%s: %w", prog, ctx.Err())
		}
		return last, fmt.Errorf("%s: %w:\n%s", prog, err, strings.Join(last, "\n"))
	}
	return last, nil
}

// readLines calls f for every line of r, splitting at \n and at \r
// (pg_basebackup redraws its progress line with \r on a terminal).
func readLines(r io.Reader, f func(string)) {
	sc := bufio.NewScanner(r)
	sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
		for k, c := range data {
			if c == '\n' || c == '\r' {
				return k + 1, data[:k], nil
			}
		}
		if atEOF && len(data) > 0 {
			return len(data), data, nil
		}
		return 0, nil, nil
	})
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			f(line)
		}
	}
	io.Copy(io.Discard, r)
}

func connValue(v string) string {
	if v != "" && !strings.ContainsAny(v, " '\\\t\n") {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

func isEmptyDir(dir string) (bool, error) {
	f, err := os.Open(dir)
	if err != nil {
		return false, err
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if errors.Is(err, io.EOF) {
		return true, nil
	}
	return len(names) == 0, err
}

// isMountPoint: dir is on another device than its parent.
func isMountPoint(dir string) bool {
	var a, b syscall.Stat_t
	if syscall.Stat(dir, &a) != nil || syscall.Stat(filepath.Dir(dir), &b) != nil {
		return false
	}
	return a.Dev != b.Dev
}

func moveEntries(from, to string) error {
	entries, err := os.ReadDir(from)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.Rename(filepath.Join(from, e.Name()), filepath.Join(to, e.Name())); err != nil {
			return fmt.Errorf("move the clone into place: %w", err)
		}
	}
	return nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

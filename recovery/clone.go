// Package recovery builds and repairs standbys: Clone copies a primary with
// pg_basebackup. (Rewind and reinit come later.)
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
	"sync"
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
		return fmt.Errorf("clone %s:%d into %s: %w", src.Host, src.Port, dataDir, err)
	}
	return nil
}

func clone(ctx context.Context, binDir, dataDir string, src Source, runAs string, progress func(string)) error {
	if progress == nil {
		progress = func(string) {}
	}
	switch {
	case src.Host == "":
		return errors.New("source Host is required")
	case src.Port < 1 || src.Port > 65535:
		return fmt.Errorf("source Port %d is not a TCP port", src.Port)
	case src.User == "":
		return errors.New("source User (the replication role) is required")
	case dataDir == "":
		return errors.New("data directory is required")
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
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("remove stale temporary directory %s: %w", tmp, err)
	}
	if err := postgres.MkdirAs(tmp, 0o700, runAs); err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()

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
		"-D", tmp,
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
	cmd, err := postgres.CommandAs(ctx, runAs, filepath.Join(binDir, "pg_basebackup"), args...)
	if err != nil {
		return err
	}
	cmd.Env = append(cmd.Env, "LC_ALL=C")
	out, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	cmd.Stdout = nil
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start pg_basebackup: %w", err)
	}
	var (
		mu   sync.Mutex
		last []string
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		readLines(out, func(line string) {
			mu.Lock()
			last = append(last, line)
			if len(last) > 15 {
				last = last[len(last)-15:]
			}
			mu.Unlock()
			progress(line)
		})
	}()
	<-done
	if err := cmd.Wait(); err != nil {
		mu.Lock()
		defer mu.Unlock()
		if ctx.Err() != nil {
			return fmt.Errorf("pg_basebackup: %w", ctx.Err())
		}
		return fmt.Errorf("pg_basebackup: %w:\n%s", err, strings.Join(last, "\n"))
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

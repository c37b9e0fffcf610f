package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// credential is the OS identity PostgreSQL commands run as.
type credential struct {
	name     string
	uid, gid uint32
	groups   []uint32
	home     string
}

func lookupCredential(name string) (*credential, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("look up OS user %q: %w", name, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("OS user %q has uid %q: %w", name, u.Uid, err)
	}
	if uid == 0 {
		return nil, fmt.Errorf("OS user %q is root; PostgreSQL refuses to run as root", name)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("OS user %q has gid %q: %w", name, u.Gid, err)
	}
	c := &credential{name: name, uid: uint32(uid), gid: uint32(gid), home: u.HomeDir}
	if gids, err := u.GroupIds(); err == nil {
		for _, g := range gids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				c.groups = append(c.groups, uint32(n))
			}
		}
	}
	return c, nil
}

// runAsCredential returns the identity to switch to: nil when the process is
// not root or runAs is empty (commands then run as the current user).
func runAsCredential(runAs string) (*credential, error) {
	if runAs == "" || os.Geteuid() != 0 {
		return nil, nil
	}
	return lookupCredential(runAs)
}

// CommandAs prepares path with args to run as the OS user runAs when the
// current process is root (runAs is ignored otherwise). The environment is
// the process's own without PG* variables (so PGHOST, PGPASSWORD and the like
// cannot leak into the command) and, when switching user, with HOME, USER
// and LOGNAME of that user. The working directory is "/" so the command never
// depends on a directory the other user may not be able to read.
func CommandAs(ctx context.Context, runAs, path string, args ...string) (*exec.Cmd, error) {
	cred, err := runAsCredential(runAs)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = "/"
	cmd.WaitDelay = 5 * time.Second
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") {
			continue
		}
		if cred != nil && (k == "HOME" || k == "USER" || k == "LOGNAME") {
			continue
		}
		env = append(env, kv)
	}
	if cred != nil {
		env = append(env, "HOME="+cred.home, "USER="+cred.name, "LOGNAME="+cred.name)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{
			Uid: cred.uid, Gid: cred.gid, Groups: cred.groups,
		}}
	}
	cmd.Env = env
	return cmd, nil
}

// ChownTo gives path to the OS user runAs (its primary group) when the
// current process is root; otherwise it does nothing.
func ChownTo(path, runAs string) error {
	cred, err := runAsCredential(runAs)
	if err != nil || cred == nil {
		return err
	}
	if err := os.Lchown(path, int(cred.uid), int(cred.gid)); err != nil {
		return fmt.Errorf("chown %s to %s: %w", path, runAs, err)
	}
	return nil
}

// MkdirAs creates dir (mode perm) and any missing parents (mode 0755, so the
// PostgreSQL user can traverse them), and gives dir to runAs when root. An
// existing dir is left as it is.
func MkdirAs(dir string, perm os.FileMode, runAs string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("create directory %s: %w", filepath.Dir(dir), err)
	}
	if err := os.Mkdir(dir, perm); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create directory %s: %w", dir, err)
	}
	if err := os.Chmod(dir, perm); err != nil { // not subject to umask
		return fmt.Errorf("chmod directory %s: %w", dir, err)
	}
	return ChownTo(dir, runAs)
}

// WriteFileAs writes data to path atomically (temporary file in the same
// directory, fsync, rename), with mode perm, owned by runAs when root.
func WriteFileAs(path string, data []byte, perm os.FileMode, runAs string) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := ChownTo(tmp, runAs); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	ok = true
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// PassEntry is one line of a libpq password file.
type PassEntry struct {
	Host     string // "*" matches any
	Port     int    // 0 matches any
	Database string // "" or "*" matches any; physical replication connections match "replication"
	User     string
	Password string
}

// WritePassFile writes a libpq password file (.pgpass format) at path with
// mode 0600, owned by runAs when root, so that pg_basebackup, pg_rewind and
// the standby's walreceiver (which run as that user) can read it.
func WritePassFile(path, runAs string, entries ...PassEntry) error {
	esc := func(s string) string {
		if s == "" {
			return "*"
		}
		return strings.NewReplacer(`\`, `\\`, `:`, `\:`).Replace(s)
	}
	var b bytes.Buffer
	for _, e := range entries {
		port := "*"
		if e.Port != 0 {
			port = strconv.Itoa(e.Port)
		}
		if strings.ContainsAny(e.Password+e.User+e.Host+e.Database, "\n\r") {
			return fmt.Errorf("write password file %s: an entry contains a newline", path)
		}
		fmt.Fprintf(&b, "%s:%s:%s:%s:%s\n", esc(e.Host), port, esc(e.Database), esc(e.User), strings.NewReplacer(`\`, `\\`, `:`, `\:`).Replace(e.Password))
	}
	if err := WriteFileAs(path, b.Bytes(), 0o600, runAs); err != nil {
		return fmt.Errorf("write password file: %w", err)
	}
	return nil
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

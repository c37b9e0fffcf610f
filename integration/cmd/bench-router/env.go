package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pgha/pgha/postgres"
)

// pgUser is the OS user PostgreSQL, PgBouncer and pgpool-II run as when the
// benchmark runs as root (none of them runs as root).
const pgUser = "postgres"

func runAs() string {
	if os.Geteuid() == 0 {
		return pgUser
	}
	return ""
}

// tools are the programs the benchmark runs.
type tools struct {
	binDir                                   string // PostgreSQL server binaries, pgbench among them
	pgbench, pgbouncer, pgpool               string
	pgVersion, bouncerVersion, pgpoolVersion string
}

// findTools locates PostgreSQL, pgbench, PgBouncer and pgpool-II, installing
// the proxies from Debian's packages when they are missing and install is
// set (root only).
func findTools(ctx context.Context, install bool) (*tools, error) {
	t := &tools{binDir: postgres.FindBinDir()}
	if t.binDir == "" {
		return nil, errors.New("PostgreSQL server binaries not found (no pg_config --bindir with initdb, no /usr/lib/postgresql/*/bin); apt-get install postgresql")
	}
	t.pgbench = filepath.Join(t.binDir, "pgbench")
	if _, err := os.Stat(t.pgbench); err != nil {
		return nil, fmt.Errorf("pgbench not found next to the server binaries: %w", err)
	}
	t.pgbouncer, t.pgpool = lookSbin("pgbouncer"), lookSbin("pgpool")
	if t.pgbouncer == "" || t.pgpool == "" {
		switch {
		case !install:
			return nil, errors.New("pgbouncer or pgpool not found and -install=false: apt-get install pgbouncer pgpool2")
		case os.Geteuid() != 0:
			return nil, errors.New("pgbouncer or pgpool not found; run as root to let the benchmark install them, or: apt-get install pgbouncer pgpool2")
		}
		if err := aptInstall(ctx, "pgbouncer", "pgpool2"); err != nil {
			return nil, err
		}
		t.pgbouncer, t.pgpool = lookSbin("pgbouncer"), lookSbin("pgpool")
		if t.pgbouncer == "" || t.pgpool == "" {
			return nil, errors.New("pgbouncer or pgpool still not found after apt-get install")
		}
	}
	t.pgVersion = firstLine(exec.CommandContext(ctx, filepath.Join(t.binDir, "postgres"), "--version").CombinedOutput())
	t.pgVersion = "PostgreSQL " + strings.TrimPrefix(t.pgVersion, "postgres (PostgreSQL) ")
	t.bouncerVersion = firstLine(exec.CommandContext(ctx, t.pgbouncer, "--version").CombinedOutput())
	t.pgpoolVersion = firstLine(exec.CommandContext(ctx, t.pgpool, "--version").CombinedOutput())
	return t, nil
}

// lookSbin finds prog on PATH or in /usr/sbin (not on every user's PATH).
func lookSbin(prog string) string {
	if p, err := exec.LookPath(prog); err == nil {
		return p
	}
	p := filepath.Join("/usr/sbin", prog)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return ""
}

func firstLine(b []byte, err error) string {
	if err != nil {
		return "unknown version"
	}
	l, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return l
}

// aptInstall installs pkgs, then stops and disables the services the
// packages start: the benchmark runs its own instances on free ports.
func aptInstall(ctx context.Context, pkgs ...string) error {
	install := append([]string{"install", "-y", "-q"}, pkgs...)
	if err := runLoud(ctx, "apt-get", install...); err != nil {
		fmt.Println("apt-get install failed; refreshing the package lists and trying again")
		if err := runLoud(ctx, "apt-get", "update", "-q"); err != nil {
			return fmt.Errorf("install %s: %w", strings.Join(pkgs, " "), err)
		}
		if err := runLoud(ctx, "apt-get", install...); err != nil {
			return fmt.Errorf("install %s: %w", strings.Join(pkgs, " "), err)
		}
	}
	services := []string{"pgbouncer", "pgpool2"}
	if _, err := os.Stat("/run/systemd/system"); err == nil {
		if err := runLoud(ctx, "systemctl", append([]string{"disable", "--now"}, services...)...); err != nil {
			fmt.Println("  (ignored)")
		}
		return nil
	}
	for _, s := range services {
		if err := runLoud(ctx, "service", s, "stop"); err != nil {
			fmt.Println("  (ignored: not running)")
		}
	}
	return nil
}

// runLoud prints the command, runs it with its output on ours.
func runLoud(ctx context.Context, name string, args ...string) error {
	fmt.Printf("+ %s %s\n", name, strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	return cmd.Run()
}

// makeWorkDir makes the temporary directory everything lives in, owned by
// the PostgreSQL user when root. Its path is short: unix socket paths must
// fit in 107 bytes.
func makeWorkDir() (string, error) {
	base := os.TempDir()
	if os.Geteuid() == 0 {
		base = "/tmp" // root's TMPDIR may not be traversable by postgres
	}
	dir, err := os.MkdirTemp(base, "pgha-bench-router-")
	if err != nil {
		return "", fmt.Errorf("make work dir: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", fmt.Errorf("make work dir: %w", err)
	}
	if err := postgres.ChownTo(dir, runAs()); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("make work dir: %w", err)
	}
	return dir, nil
}

// mkdirs makes a directory for a process that runs as the PostgreSQL user.
func mkdirs(dir string) error {
	return postgres.MkdirAs(dir, 0o700, runAs())
}

// writeFile writes a file the PostgreSQL user owns.
func writeFile(path, content string) error {
	return postgres.WriteFileAs(path, []byte(content), 0o600, runAs())
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func absPath(p string) (string, error) {
	a, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("path %s: %w", p, err)
	}
	return a, nil
}

// proc is a long-running child process (a proxy). It runs in a process
// group of its own, so that a Ctrl-C on the terminal reaches the benchmark
// only and the teardown stops the proxies in order; the kernel kills it
// should the benchmark die without a teardown (best effort: Pdeathsig).
type proc struct {
	name string
	log  string // file with its stdout and stderr
	cmd  *exec.Cmd
	done chan struct{} // closed when it exited; err is set then
	err  error
}

// startProc starts path with args as the OS user user (when root), with
// env added to the environment, its output appended to logPath.
func startProc(name, logPath, user string, env []string, path string, args ...string) (*proc, error) {
	cmd, err := postgres.CommandAs(context.Background(), user, path, args...)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	cmd.Env = append(cmd.Env, env...)
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer out.Close() // the child has its own descriptor
	cmd.Stdout, cmd.Stderr = out, out
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig, waits up to grace, then kills the whole process group.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) error {
	if p.exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
	return fmt.Errorf("%s did not stop within %v after %v; killed", p.name, grace, sig)
}

// logTail returns the last n lines of the process's log.
func (p *proc) logTail(n int) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

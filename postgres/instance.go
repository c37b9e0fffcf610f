package postgres

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Instance controls one local PostgreSQL instance through pg_ctl and a
// superuser connection over its unix socket.
//
// Concurrency: every method may be called from any goroutine. The process
// control methods (Initdb, Start, Stop, Restart, Promote, Configure) are not
// serialized against each other: the caller (the agent's reconcile loop) must
// not run two of them at once for the same instance. Exec, EnsureRoles and
// EnsureSlots share one cached connection guarded by a lock; Status has its
// own cached connection, so a slow Exec never delays Status beyond its ~1 s
// budget.
type Instance struct {
	cfg  Config
	log  *slog.Logger
	conn connSlot // Exec, EnsureRoles, EnsureSlots
	stat connSlot // Status

	paramsMu sync.Mutex
	params   map[string]string // the operator's parameters (SetParameters); never modified in place
	hba      []string          // the operator's pg_hba.conf lines (SetHBA); never modified in place
	archive  Archive           // the WAL archive's settings (SetArchive)

	reaperMu sync.Mutex
	reaper   *reaper // kills a frozen server at its deadline (freeze.go)

	// stoppingFast is set while Stop waits for a fast or immediate
	// shutdown it asked for: every session is being ended, so Status
	// need not try to connect.
	stoppingFast atomic.Bool
}

// New validates cfg, fills in defaults and returns an Instance. It does not
// touch the data directory.
func New(cfg Config) (*Instance, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	i := &Instance{cfg: cfg, log: cfg.Logger.With("data_dir", cfg.DataDir, "port", cfg.Port), params: maps.Clone(cfg.Parameters), hba: slices.Clone(cfg.HBA), archive: cfg.Archive}
	i.conn.init()
	i.stat.init()
	return i, nil
}

// Config returns the configuration with defaults filled in.
func (i *Instance) Config() Config { return i.cfg }

func (i *Instance) bin(prog string) string { return filepath.Join(i.cfg.BinDir, prog) }

// command prepares one of PostgreSQL's programs to run as RunAs.
func (i *Instance) command(ctx context.Context, prog string, args ...string) (*exec.Cmd, error) {
	return CommandAs(ctx, i.cfg.RunAs, i.bin(prog), args...)
}

// run runs one of PostgreSQL's programs and returns its combined output.
// cLocale forces untranslated messages for output that is parsed.
func (i *Instance) run(ctx context.Context, cLocale bool, prog string, args ...string) (string, error) {
	cmd, err := i.command(ctx, prog, args...)
	if err != nil {
		return "", err
	}
	if cLocale {
		cmd.Env = append(cmd.Env, "LC_ALL=C")
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", prog, strings.Join(args, " "), err, tail(string(out), 10))
	}
	return string(out), nil
}

// DataDirState classifies the data directory.
type DataDirState int

// Data directory states. DataDirMissing and DataDirEmpty both mean "nothing
// there yet" (IsEmpty reports either); DataDirInvalid is a non-empty directory
// (or a non-directory) that is not a PostgreSQL data dir — pgha reports it and
// never touches it.
const (
	DataDirMissing DataDirState = iota // the path does not exist
	DataDirEmpty                       // an empty directory
	DataDirValid                       // has PG_VERSION and global/pg_control
	DataDirInvalid                     // anything else
)

func (s DataDirState) String() string {
	switch s {
	case DataDirMissing:
		return "missing"
	case DataDirEmpty:
		return "empty"
	case DataDirValid:
		return "valid"
	case DataDirInvalid:
		return "invalid"
	}
	return "DataDirState(" + strconv.Itoa(int(s)) + ")"
}

// MarshalText implements encoding.TextMarshaler.
func (s DataDirState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// IsEmpty reports whether there is nothing at the data dir yet (missing or
// an empty directory), i.e. initdb or a clone may create it.
func (s DataDirState) IsEmpty() bool { return s == DataDirMissing || s == DataDirEmpty }

// DataDirState inspects the data directory without changing it.
func (i *Instance) DataDirState() (DataDirState, error) {
	return dataDirState(i.cfg.DataDir)
}

func dataDirState(dir string) (DataDirState, error) {
	fi, err := os.Stat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return DataDirMissing, nil
	}
	if err != nil {
		return DataDirInvalid, fmt.Errorf("inspect data directory %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return DataDirInvalid, nil
	}
	f, err := os.Open(dir)
	if err != nil {
		return DataDirInvalid, fmt.Errorf("inspect data directory %s: %w", dir, err)
	}
	names, err := f.Readdirnames(1)
	f.Close()
	if errors.Is(err, io.EOF) || (err == nil && len(names) == 0) {
		return DataDirEmpty, nil
	}
	if err != nil {
		return DataDirInvalid, fmt.Errorf("inspect data directory %s: %w", dir, err)
	}
	for _, name := range []string{"PG_VERSION", filepath.Join("global", "pg_control")} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || !fi.Mode().IsRegular() {
			return DataDirInvalid, nil
		}
	}
	return DataDirValid, nil
}

// controlData reads pg_controldata's fields; it works whether or not the
// server runs.
func (i *Instance) controlData(ctx context.Context) (map[string]string, error) {
	out, err := i.run(ctx, true, "pg_controldata", "-D", i.cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("pg_controldata %s: %w", i.cfg.DataDir, err)
	}
	fields := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok {
			fields[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return fields, nil
}

// SystemID returns the database system identifier, from pg_control read in
// place (the agent checks it on every pass: no pg_controldata run every
// loop_interval), or from pg_controldata when that read fails.
func (i *Instance) SystemID(ctx context.Context) (uint64, error) {
	if c, err := i.readControl(); err == nil && c.SystemID != 0 {
		return c.SystemID, nil
	}
	fields, err := i.controlData(ctx)
	if err != nil {
		return 0, fmt.Errorf("read system identifier: %w", err)
	}
	v, ok := fields["Database system identifier"]
	if !ok {
		return 0, fmt.Errorf("read system identifier of %s: no \"Database system identifier\" in pg_controldata output", i.cfg.DataDir)
	}
	id, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("read system identifier of %s: %w", i.cfg.DataDir, err)
	}
	return id, nil
}

// ClusterState is pg_controldata's "Database cluster state": "shut down",
// "shut down in recovery", "in production", "in archive recovery", ...
// It tells whether a stopped data directory was last a primary.
func (i *Instance) ClusterState(ctx context.Context) (string, error) {
	fields, err := i.controlData(ctx)
	if err != nil {
		return "", fmt.Errorf("read cluster state: %w", err)
	}
	v, ok := fields["Database cluster state"]
	if !ok {
		return "", fmt.Errorf("read cluster state of %s: no \"Database cluster state\" in pg_controldata output", i.cfg.DataDir)
	}
	return v, nil
}

// HasBackupLabel reports whether the data directory is a base backup that has
// not been started yet (its backup_label is still there).
func (i *Instance) HasBackupLabel() bool {
	_, err := os.Stat(filepath.Join(i.cfg.DataDir, "backup_label"))
	return err == nil
}

// Initdb creates a new cluster in DataDir (initdb --data-checksums, UTF8,
// peer for local and scram-sha-256 for host connections). It refuses a data
// dir that exists and is not empty.
func (i *Instance) Initdb(ctx context.Context) error {
	dir := i.cfg.DataDir
	st, err := i.DataDirState()
	if err != nil {
		return fmt.Errorf("initdb %s: %w", dir, err)
	}
	if !st.IsEmpty() {
		return fmt.Errorf("initdb %s: refusing, the data directory is %s (not empty)", dir, st)
	}
	if err := MkdirAs(dir, 0o700, i.cfg.RunAs); err != nil {
		return fmt.Errorf("initdb %s: %w", dir, err)
	}
	if err := ChownTo(dir, i.cfg.RunAs); err != nil { // an existing empty dir
		return fmt.Errorf("initdb %s: %w", dir, err)
	}
	args := []string{"-D", dir, "--data-checksums", "-U", i.cfg.Superuser, "-E", "UTF8",
		"--auth-local=peer", "--auth-host=scram-sha-256", "--no-instructions"}
	args = append(args, i.cfg.InitdbArgs...)
	i.log.Info("initdb", "args", strings.Join(args, " "))
	if _, err := i.run(ctx, false, "initdb", args...); err != nil {
		return fmt.Errorf("initdb %s: %w", dir, err)
	}
	return nil
}

// ErrPIDFileGarbled: postmaster.pid exists but names no process. Either a
// postmaster is writing it right now (it is starting), or a start that
// crashed left it; PostgreSQL itself refuses to start beside it.
var ErrPIDFileGarbled = errors.New("postmaster.pid names no process")

// PostmasterPID returns the postmaster's PID from postmaster.pid, or 0 when
// no server runs (no file, or its process is gone).
//
// Fail safe: a postmaster.pid that cannot be read, or that names no PID
// (ErrPIDFileGarbled), is an error, never "no server": a postmaster that is
// starting writes it in steps, and a caller that took it for a stopped
// server would rewind, re-clone or start a second postmaster beside a
// live one.
func (i *Instance) PostmasterPID() (int, error) {
	pid, _, err := i.LockFileOwner()
	return pid, err
}

// LockFileOwner is PostmasterPID, and whether that process is a standalone
// backend rather than a postmaster: `postgres --single`, as pg_rewind runs
// to finish a crash recovery before it rewinds, writes its PID negated. A
// standalone backend listens on no port and no socket: no client can reach
// it, so it acknowledges nothing to anyone (the fence lets it finish).
func (i *Instance) LockFileOwner() (pid int, standalone bool, err error) {
	l, err := i.lockFile()
	return l.pid, l.standalone, err
}

// lockFileInfo is what postmaster.pid says: the owner's PID (0 when the
// file is absent or its process gone), whether it is a standalone backend,
// and the postmaster's status line (its eighth: "starting", "ready",
// "standby" or "stopping", written as a shutdown begins in every mode; ""
// when there is none).
type lockFileInfo struct {
	pid        int
	standalone bool
	status     string
}

func (i *Instance) lockFile() (lockFileInfo, error) {
	path := filepath.Join(i.cfg.DataDir, "postmaster.pid")
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return lockFileInfo{}, nil
	}
	if err != nil {
		return lockFileInfo{}, fmt.Errorf("read postmaster.pid in %s: %w", i.cfg.DataDir, err)
	}
	lines := strings.Split(string(b), "\n")
	var l lockFileInfo
	l.pid, err = strconv.Atoi(strings.TrimSpace(lines[0]))
	if err == nil && l.pid < 0 {
		l.pid, l.standalone = -l.pid, true
	}
	if err != nil || l.pid == 0 {
		return lockFileInfo{}, fmt.Errorf("%s: %w (first line %q): a postmaster may be starting; if no postgres process uses %s, a crashed start left it: remove it", path, ErrPIDFileGarbled, lines[0], i.cfg.DataDir)
	}
	// A zombie is still returned: PostgreSQL's own lock-file check sees it
	// until it is reaped, so nothing may start in its place yet. Status
	// reports it as gone (Exited).
	if err := syscall.Kill(l.pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return lockFileInfo{}, nil
	}
	if len(lines) >= 8 {
		l.status = strings.TrimSpace(lines[7])
	}
	return l, nil
}

// running asks pg_ctl status (which also checks the PID in postmaster.pid).
func (i *Instance) running(ctx context.Context) bool {
	_, err := i.run(ctx, true, "pg_ctl", "status", "-D", i.cfg.DataDir)
	return err == nil
}

// logOffset is the current size of the server log, so that an error can show
// only what this start wrote.
func (i *Instance) logOffset() int64 {
	fi, err := os.Stat(i.cfg.LogFile)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logTail returns up to n last lines of the server log written after offset
// (0: the whole file).
func (i *Instance) logTail(offset int64, n int) string {
	f, err := os.Open(i.cfg.LogFile)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	const max = 64 << 10
	if fi.Size() < offset {
		offset = 0
	}
	if fi.Size()-offset > max {
		offset = fi.Size() - max
	}
	b := make([]byte, fi.Size()-offset)
	if _, err := f.ReadAt(b, offset); err != nil && !errors.Is(err, io.EOF) {
		return ""
	}
	return tail(string(b), n)
}

// Start starts the server with pg_ctl start -w and waits until it accepts
// connections (a standby: until it reached a consistent state). The server
// log goes to Config.LogFile. It is not an error if the server already runs.
// On failure the error carries the last lines of the server log.
func (i *Instance) Start(ctx context.Context) error {
	dir := i.cfg.DataDir
	if pid, _ := i.PostmasterPID(); pid > 0 && i.running(ctx) {
		return nil
	}
	st, err := i.DataDirState()
	if err != nil {
		return fmt.Errorf("start postgres in %s: %w", dir, err)
	}
	if st != DataDirValid {
		return fmt.Errorf("start postgres in %s: the data directory is %s", dir, st)
	}
	if err := MkdirAs(i.cfg.SocketDir, 0o755, i.cfg.RunAs); err != nil {
		return fmt.Errorf("start postgres in %s: socket directory: %w", dir, err)
	}
	if err := i.prepareLogFile(); err != nil {
		return fmt.Errorf("start postgres in %s: %w", dir, err)
	}
	off := i.logOffset()
	i.log.Info("starting postgres", "log", i.cfg.LogFile)
	_, err = i.run(ctx, true, "pg_ctl", "start", "-D", dir, "-l", i.cfg.LogFile, "-w",
		"-t", strconv.Itoa(seconds(i.cfg.StartTimeout)))
	if err != nil {
		return fmt.Errorf("start postgres in %s: %w\nserver log %s:\n%s", dir, err, i.cfg.LogFile, i.logTail(off, 20))
	}
	return nil
}

func (i *Instance) prepareLogFile() error {
	if err := os.MkdirAll(filepath.Dir(i.cfg.LogFile), 0o755); err != nil {
		return fmt.Errorf("create log directory: %w", err)
	}
	f, err := os.OpenFile(i.cfg.LogFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("create server log: %w", err)
	}
	f.Close()
	return ChownTo(i.cfg.LogFile, i.cfg.RunAs)
}

// Stop stops the server with pg_ctl stop -m mode -w. It is not an error if
// the server does not run. The cached connections are closed first (a smart
// shutdown would otherwise wait for them forever).
func (i *Instance) Stop(ctx context.Context, mode StopMode) error {
	dir := i.cfg.DataDir
	switch mode {
	case StopSmart, StopFast, StopImmediate:
	default:
		return fmt.Errorf("stop postgres in %s: unknown stop mode %q (want smart, fast or immediate)", dir, mode)
	}
	i.Close()
	// Only a postmaster.pid that is absent or names a process that is gone
	// proves the server stopped; an unreadable one is an error (the caller
	// goes on to rewind, re-clone or restart only after a real stop).
	pid, err := i.PostmasterPID()
	switch {
	case err != nil:
		return fmt.Errorf("stop postgres in %s: %w", dir, err)
	case pid == 0:
		return nil
	case Stopped(pid):
		// A frozen postmaster cannot act on the signal.
		return i.killFrozen(pid)
	}
	off := i.logOffset()
	i.log.Info("stopping postgres", "mode", string(mode))
	if mode != StopSmart {
		i.stoppingFast.Store(true)
		defer i.stoppingFast.Store(false)
	}
	// The postmaster's own signal for the mode, as pg_ctl stop sends it
	// (pg_ctl, a fork and an exec, took 20 ms of every switchover to
	// start), and no pg_ctl wait: it looks ten times a second. The loop
	// below watches postmaster.pid, which the postmaster removes last.
	err = syscall.Kill(pid, stopSignal[mode])
	if errors.Is(err, syscall.EPERM) {
		// Not ours to signal (an agent that is neither root nor the
		// server's user): pg_ctl runs as that user.
		_, err = i.run(ctx, true, "pg_ctl", "stop", "-D", dir, "-m", string(mode), "-W")
	}
	if err != nil {
		if pid, perr := i.PostmasterPID(); pid == 0 && perr == nil {
			return nil
		}
		return fmt.Errorf("stop postgres in %s (%s): %w\nserver log %s:\n%s", dir, mode, err, i.cfg.LogFile, i.logTail(off, 20))
	}
	ctx, cancel := context.WithTimeout(ctx, i.cfg.StopTimeout)
	defer cancel()
	for {
		pid, err := i.PostmasterPID()
		if err == nil && pid == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("postmaster %d is still there", pid)
			}
			return fmt.Errorf("stop postgres in %s (%s): not stopped within %s: %w\nserver log %s:\n%s", dir, mode, i.cfg.StopTimeout, err, i.cfg.LogFile, i.logTail(off, 20))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Restart stops the server with mode (if it runs) and starts it again.
func (i *Instance) Restart(ctx context.Context, mode StopMode) error {
	if err := i.Stop(ctx, mode); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	if err := i.Start(ctx); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	return nil
}

// Reload makes the running server re-read its configuration files: what
// pg_ctl reload does (SIGHUP to the postmaster, which passes it on), without
// starting a process for it: a promotion waits for one. See PendingRestart
// for settings that need a restart.
func (i *Instance) Reload(ctx context.Context) error {
	pid, err := i.PostmasterPID()
	switch {
	case err != nil:
		return fmt.Errorf("reload postgres in %s: %w", i.cfg.DataDir, err)
	case pid == 0:
		return fmt.Errorf("reload postgres in %s: no server running", i.cfg.DataDir)
	}
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		return fmt.Errorf("reload postgres in %s: signal postmaster %d: %w", i.cfg.DataDir, pid, err)
	}
	return nil
}

// Promote ends recovery of a running standby (pg_ctl promote -w) and waits
// until it accepts writes. Promoting a running server that is not in standby
// mode (already a primary) is not an error.
func (i *Instance) Promote(ctx context.Context) error {
	dir := i.cfg.DataDir
	off := i.logOffset()
	i.log.Info("promoting postgres")
	// pg_ctl's own wait (-w) looks ten times a second; the end of recovery
	// usually takes a few tens of milliseconds, and writes are unavailable
	// until it is seen. So signal without waiting and watch the server.
	out, err := i.requestPromotion(ctx)
	if err != nil {
		if strings.Contains(out, "not in standby mode") && i.running(ctx) {
			return nil
		}
		return fmt.Errorf("promote postgres in %s: %w\nserver log %s:\n%s", dir, err, i.cfg.LogFile, i.logTail(off, 20))
	}
	ctx, cancel := context.WithTimeout(ctx, i.cfg.StartTimeout)
	defer cancel()
	signalled, wakes := time.Now(), 0
	for {
		// pg_control read in place, every 5 ms (pg_ctl promote -w waits
		// for the same state, ten times a second); once it says so, the
		// server itself is asked, on the status connection, which is open
		// (a new connection to a loaded server can take 60 ms).
		var state string
		if state, err = i.ClusterStateNow(); err == nil && state == "in production" {
			var inRecovery bool
			qctx, qcancel := context.WithTimeout(ctx, time.Second)
			err = i.with(qctx, &i.stat, func(c *pgx.Conn) error {
				return c.QueryRow(qctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery)
			})
			qcancel()
			if err == nil && !inRecovery {
				return nil
			}
		}
		// A standby whose upstream is gone sleeps wal_retrieve_retry_interval
		// between tries, and one that notices the promote request while
		// streaming sleeps that out before it ends recovery (PostgreSQL 15:
		// 0.2-0.25 s of every failover). A SIGHUP to the startup process
		// wakes it from that sleep (wake.go); it then finds the request.
		// Twice at most: it rereads its configuration on each.
		if since := time.Since(signalled); wakes == 0 && since >= 15*time.Millisecond || wakes == 1 && since >= 150*time.Millisecond {
			i.wakeStartup(ctx)
			wakes++
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = errors.New("still in recovery")
			}
			return fmt.Errorf("promote postgres in %s: not promoted within %s: %v\nserver log %s:\n%s", dir, i.cfg.StartTimeout, err, i.cfg.LogFile, i.logTail(off, 20))
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// requestPromotion does what pg_ctl promote -W does (a "promote" file in
// the data directory, then SIGUSR1 to the postmaster) without starting
// pg_ctl: 10-20 ms of every switchover and failover on a loaded host.
// Where the agent may not signal the postmaster, pg_ctl does it.
func (i *Instance) requestPromotion(ctx context.Context) (string, error) {
	dir := i.cfg.DataDir
	pid, err := i.PostmasterPID()
	if err != nil {
		return "", err
	}
	if pid == 0 {
		return "", errors.New("no server is running")
	}
	// pg_ctl's own check, and its words, which the caller looks for. A
	// pg_control that could not be read (caught mid-write) is not "not a
	// standby": pg_ctl, which reads it again, decides.
	pgCtl := func() (string, error) { return i.run(ctx, true, "pg_ctl", "promote", "-D", dir, "-W") }
	state, err := i.ClusterStateNow()
	if err != nil {
		return pgCtl()
	}
	if state != "in archive recovery" {
		return "cannot promote server; server is not in standby mode", fmt.Errorf("cannot promote: the server is not in standby mode (%s)", state)
	}
	signal := filepath.Join(dir, "promote")
	if err := os.WriteFile(signal, nil, 0o600); err != nil {
		return pgCtl()
	}
	if err := syscall.Kill(pid, syscall.SIGUSR1); err != nil {
		_ = os.Remove(signal)
		return pgCtl()
	}
	return "", nil
}

func seconds(d interface{ Seconds() float64 }) int {
	s := int(d.Seconds())
	if s < 1 {
		s = 1
	}
	return s
}

// CheckpointLSN is pg_controldata's "Latest checkpoint location": for a
// cleanly stopped primary, where its WAL ends (its shutdown checkpoint).
func (i *Instance) CheckpointLSN(ctx context.Context) (LSN, error) {
	fields, err := i.controlData(ctx)
	if err != nil {
		return 0, fmt.Errorf("read checkpoint location: %w", err)
	}
	return ParseLSN(fields["Latest checkpoint location"])
}

// HasStandbySignal reports whether the data directory is set up to start as
// a standby (standby.signal). A standby being promoted must start as one and
// be promoted, so that it moves to a new timeline.
func (i *Instance) HasStandbySignal() bool {
	_, err := os.Stat(filepath.Join(i.cfg.DataDir, "standby.signal"))
	return err == nil
}

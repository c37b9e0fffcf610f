package postgres_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/pgha/pgha/postgres"
	"github.com/pgha/pgha/postgres/pgtest"
)

// TestStandaloneBackendIsNotAPostmaster: the standalone backend pg_rewind
// runs to finish a crash recovery (`postgres --single`) is told apart from
// a postmaster by its postmaster.pid, so the fence leaves it alone (it
// has no listening socket). Frozen and killed as an unleased writer, it
// failed every rewind of a deposed primary, which was re-cloned instead.
func TestStandaloneBackendIsNotAPostmaster(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	inst := pgtest.StartPrimary(t)
	pm, standalone, err := inst.LockFileOwner()
	if err != nil || pm == 0 || standalone {
		t.Fatalf("LockFileOwner of a running postmaster = %d, %v, %v; want its PID, not standalone", pm, standalone, err)
	}
	if err := inst.Stop(ctx, postgres.StopImmediate); err != nil {
		t.Fatal(err)
	}
	// As pg_rewind runs it; stdin held open so that it waits for input.
	cmd, err := postgres.CommandAs(ctx, inst.Config().RunAs, filepath.Join(pgtest.BinDir(t), "postgres"),
		"--single", "-F", "-D", inst.Config().DataDir, "template1")
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		pid, standalone, err := inst.LockFileOwner()
		if err == nil && pid != 0 {
			if pid != cmd.Process.Pid || !standalone {
				t.Fatalf("LockFileOwner beside postgres --single (pid %d) = %d, standalone %v; want its PID, standalone", cmd.Process.Pid, pid, standalone)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("postgres --single wrote no postmaster.pid: %d, %v", pid, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if pid, err := inst.PostmasterPID(); pid != cmd.Process.Pid || err != nil {
		t.Errorf("PostmasterPID beside postgres --single = %d, %v; want %d (it holds the data directory)", pid, err, cmd.Process.Pid)
	}
	_ = stdin.Close() // end of input: it shuts down
	if err := cmd.Wait(); err != nil {
		t.Errorf("postgres --single: %v", err)
	}
	if pid, _, err := inst.LockFileOwner(); pid != 0 || err != nil {
		t.Errorf("LockFileOwner after postgres --single exited = %d, %v; want 0", pid, err)
	}
}

package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgha/pgha/postgres"
	"github.com/pgha/pgha/postgres/pgtest"
)

// TestFreezeThawAndKillFrozen: a frozen server answers nothing, its
// status says so at once, and a thaw resumes it with its clients'
// sessions; a frozen server that is stopped or killed is gone with every
// process it started, and starts again.
func TestFreezeThawAndKillFrozen(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	inst := pgtest.StartPrimary(t)
	cc, err := pgconn.ParseConfig("host=127.0.0.1 dbname=postgres sslmode=disable connect_timeout=5")
	if err != nil {
		t.Fatal(err)
	}
	cc.Port = uint16(inst.Config().Port)
	cc.User, cc.Password = pgtest.MonitorUser, pgtest.MonitorPassword
	client, err := pgconn.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close(context.Background())
	backendPID := client.PID()

	pm, err := inst.PostmasterPID()
	if err != nil || pm == 0 {
		t.Fatalf("PostmasterPID = %d, %v", pm, err)
	}
	if err := inst.Freeze(pm, time.Minute); err != nil {
		t.Fatal(err)
	}
	procs := append([]int{pm}, postgres.Descendants(pm)...)
	if len(procs) < 4 {
		t.Fatalf("postmaster %d and its processes: %v; want the checkpointer, WAL writer and the client's backend among them", pm, procs)
	}
	for _, p := range procs {
		if !postgres.Stopped(p) {
			t.Errorf("process %d is not stopped after Freeze", p)
		}
	}

	start := time.Now()
	st := inst.Status(ctx)
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("Status of a frozen server took %s; it need not wait for a query", took)
	}
	if st.Running || !st.Unresponsive || st.InRecovery || st.PID != pm || !strings.Contains(st.Error, "frozen") {
		t.Errorf("status of the frozen primary: %+v; want unresponsive, not in recovery, pid %d, error naming the freeze", st, pm)
	}

	answered := make(chan error, 1)
	go func() {
		_, err := client.Exec(context.Background(), "SELECT 1").ReadAll()
		answered <- err
	}()
	select {
	case err := <-answered:
		t.Fatalf("a frozen server answered a query (err %v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := inst.Thaw(pm); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-answered:
		if err != nil {
			t.Fatalf("the query sent while frozen failed after the thaw: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no answer 5 s after the thaw")
	}
	if client.PID() != backendPID || client.IsClosed() {
		t.Errorf("the client's session did not survive the freeze (backend %d, then %d, closed %v)", backendPID, client.PID(), client.IsClosed())
	}
	if st := inst.Status(ctx); !st.Running || st.Unresponsive {
		t.Errorf("status after the thaw: %+v", st)
	}

	// Stop and Kill of a frozen server: pg_ctl's signal would wait in
	// the stopped postmaster until the stop timeout.
	for _, stop := range []struct {
		name string
		do   func(pid int) error
	}{
		{"Stop", func(int) error { return inst.Stop(ctx, postgres.StopFast) }},
		{"Kill", func(pid int) error { return inst.Kill(ctx, pid) }},
	} {
		pm, _ := inst.PostmasterPID()
		if err := inst.Freeze(pm, time.Minute); err != nil {
			t.Fatal(err)
		}
		procs := append([]int{pm}, postgres.Descendants(pm)...)
		start := time.Now()
		if err := stop.do(pm); err != nil {
			t.Fatalf("%s of a frozen server: %v", stop.name, err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("%s of a frozen server took %s", stop.name, took)
		}
		for _, p := range procs {
			waitGone(t, p)
		}
		// Until whoever adopted it reaps the postmaster, postmaster.pid
		// still names it, and PostgreSQL would refuse to start.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			pid, err := inst.PostmasterPID()
			if pid == 0 && err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after %s: PostmasterPID = %d, %v 5 s later", stop.name, pid, err)
			}
		}
		if err := inst.Start(ctx); err != nil {
			t.Fatalf("start after %s of a frozen server: %v", stop.name, err)
		}
		// The first status may find the cached session of the killed
		// server broken; it reconnects next time.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			st := inst.Status(ctx)
			if st.Running {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("status after the restart: %+v", st)
			}
		}
	}
}

// waitGone waits until process pid has exited (a zombie counts: nothing of
// it runs).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := syscall.Kill(pid, 0)
		if errors.Is(err, syscall.ESRCH) || procZombie(pid) {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("process %d of the frozen server is still there", pid)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func procZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	s := string(b)
	j := strings.LastIndexByte(s, ')')
	return err == nil && j >= 0 && j+2 < len(s) && s[j+2] == 'Z'
}

// TestFrozenServerIsKilledByItsReaper: a freeze that nobody ends (the agent
// died with the server frozen) ends by itself: every process of the server
// is killed at the deadline, and the server can start again.
func TestFrozenServerIsKilledByItsReaper(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	inst := pgtest.StartPrimary(t)
	pm, err := inst.PostmasterPID()
	if err != nil || pm == 0 {
		t.Fatalf("PostmasterPID = %d, %v", pm, err)
	}
	procs := append([]int{pm}, postgres.Descendants(pm)...)
	frozen := time.Now()
	if err := inst.Freeze(pm, 500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		waitGone(t, p)
	}
	if took := time.Since(frozen); took < 500*time.Millisecond {
		t.Errorf("the frozen server was gone %s after the freeze, before its deadline", took)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if pid, err := inst.PostmasterPID(); pid == 0 && err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("postmaster.pid still names the killed postmaster")
		}
	}
	if err := inst.Start(ctx); err != nil {
		t.Fatalf("start after the reaper killed the frozen server: %v", err)
	}
	// The next freeze has a reaper of its own: the one that fired is gone.
	pm, _ = inst.PostmasterPID()
	procs = append([]int{pm}, postgres.Descendants(pm)...)
	if err := inst.Freeze(pm, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		waitGone(t, p)
	}
}

// TestThawStopsTheReaper: a server thawed before the deadline runs on past it.
func TestThawStopsTheReaper(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	inst := pgtest.StartPrimary(t)
	pm, _ := inst.PostmasterPID()
	if err := inst.Freeze(pm, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := inst.Thaw(pm); err != nil {
		t.Fatal(err)
	}
	time.Sleep(600 * time.Millisecond) // past the reaper's deadline: nothing may happen
	if pid, _ := inst.PostmasterPID(); pid != pm {
		t.Fatalf("postmaster %d, was %d", pid, pm)
	}
	if err := inst.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("the thawed server does not answer past the reaper's deadline: %v", err)
	}
}

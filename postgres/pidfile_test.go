package postgres

import (
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// A postmaster.pid that names no process (empty while a postmaster writes
// it, or garbage a crashed start left) is not a stopped server: PostmasterPID
// and Stop report an error, so no caller goes on to rewind, re-clone or start
// a second postmaster beside a live one. Only an absent file, or one whose
// process is gone, means stopped. Stop never reaches pg_ctl here (the fake
// bin dir's programs cannot run).
func TestPIDFileFailsSafe(t *testing.T) {
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	stale := strconv.Itoa(gone.Process.Pid) + "\n/data\n"
	// postgres --single (pg_rewind's crash recovery) writes its PID negated;
	// one left behind by a standalone backend that exited means stopped.
	staleSingle := "-" + strconv.Itoa(gone.Process.Pid) + "\n/data\n"
	for _, c := range []struct {
		name    string
		content *string // nil: no postmaster.pid
		garbled bool
	}{
		{"no file", nil, false},
		{"stale: its process is gone", &stale, false},
		{"empty: a postmaster is writing it", ptr(""), true},
		{"half written", ptr("\n"), true},
		{"garbage", ptr("not a pid\n"), true},
		{"stale standalone backend (negated pid)", &staleSingle, false},
		{"zero", ptr("0\n"), true},
	} {
		t.Run(c.name, func(t *testing.T) {
			inst, err := New(testConfig(t))
			if err != nil {
				t.Fatal(err)
			}
			if c.content != nil {
				if err := os.WriteFile(filepath.Join(inst.cfg.DataDir, "postmaster.pid"), []byte(*c.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			pid, err := inst.PostmasterPID()
			if c.garbled {
				if !errors.Is(err, ErrPIDFileGarbled) || pid != 0 {
					t.Errorf("PostmasterPID = %d, %v; want ErrPIDFileGarbled", pid, err)
				}
				if err := inst.Stop(context.Background(), StopFast); !errors.Is(err, ErrPIDFileGarbled) {
					t.Errorf("Stop = %v; want ErrPIDFileGarbled, not \"stopped\"", err)
				}
				return
			}
			if pid != 0 || err != nil {
				t.Errorf("PostmasterPID = %d, %v; want 0, nil", pid, err)
			}
			if err := inst.Stop(context.Background(), StopFast); err != nil {
				t.Errorf("Stop = %v; want nil (no server)", err)
			}
		})
	}
}

func ptr(s string) *string { return &s }

// A postmaster that is shutting down refuses every connection; Status says
// so at once instead of trying to connect (tens of milliseconds on a loaded
// host, on every observation a switchover waits for) — but only once no
// session can be left: this Instance asked for a fast or immediate stop, or
// pg_control shows the shutdown checkpoint. A smart shutdown's sessions go
// on and are asked through the connection.
func TestStatusOfAStoppingPostmaster(t *testing.T) {
	postmaster := exec.Command("sleep", "60") // a live process to name
	if err := postmaster.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = postmaster.Process.Kill(); _ = postmaster.Wait() }()
	for _, c := range []struct {
		name         string
		pmStatus     string
		control      int // index in controlStates
		stoppingFast bool
		skipsConnect bool
	}{
		{"shutdown checkpoint written", "stopping", 1, false, true},
		{"shutdown checkpoint running", "stopping", 3, false, true},
		{"this agent's fast stop, sessions ending", "stopping", 6, true, true},
		{"smart shutdown, sessions go on", "stopping", 6, false, false},
		{"ready", "ready", 6, false, false},
		{"starting after a clean stop", "starting", 1, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			inst, err := New(testConfig(t))
			if err != nil {
				t.Fatal(err)
			}
			dir := inst.cfg.DataDir
			pidFile := strconv.Itoa(postmaster.Process.Pid) + "\n" + dir + "\n1733530000\n5432\n/tmp\n127.0.0.1\n  1234   5678\n" + c.pmStatus + "\n"
			if err := os.WriteFile(filepath.Join(dir, "postmaster.pid"), []byte(pidFile), 0o600); err != nil {
				t.Fatal(err)
			}
			control := fakeControl(c.control, 0)
			if err := os.MkdirAll(filepath.Join(dir, "global"), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "global", "pg_control"), control, 0o600); err != nil {
				t.Fatal(err)
			}
			inst.stoppingFast.Store(c.stoppingFast)
			st := inst.Status(context.Background())
			if st.Running || !st.Unresponsive || st.PID != postmaster.Process.Pid {
				t.Errorf("Status = %+v; want the postmaster's PID, not running, unresponsive", st)
			}
			skipped := strings.Contains(st.Error, "is shutting down")
			if skipped != c.skipsConnect || !skipped && !strings.Contains(st.Error, "query status") {
				t.Errorf("Status error %q; want a connect skipped: %v", st.Error, c.skipsConnect)
			}
			if want := controlStates[c.control] != "in production"; st.InRecovery != want {
				t.Errorf("Status.InRecovery = %v with pg_control %q", st.InRecovery, controlStates[c.control])
			}
		})
	}
}

// fakeControl is a pg_control as PostgreSQL 15 writes it, as far as the
// agent reads it: version, state, checkpoint location and the CRC (at 288).
func fakeControl(state int, checkpoint LSN) []byte {
	b := make([]byte, 8192)
	binary.NativeEndian.PutUint64(b[0:8], 7445391827561034215)
	binary.NativeEndian.PutUint32(b[8:12], 1300)
	binary.NativeEndian.PutUint32(b[16:20], uint32(state))
	binary.NativeEndian.PutUint64(b[32:40], uint64(checkpoint))
	binary.NativeEndian.PutUint32(b[288:292], crc32.Checksum(b[:288], castagnoli))
	return b
}

// A pg_control read in place while PostgreSQL rewrites it may mix old and
// new bytes (a read is not atomic with a write): the state of the new with
// the checkpoint of the old would tell a switchover the WAL ends before it
// does. The CRC catches it, and the reader says it could not read.
func TestControlReadInPlaceChecksCRC(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pg_control")
	good := fakeControl(1, 0x5000028)
	if err := os.WriteFile(path, good, 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err := readControl(path); err != nil || c.State != "shut down" || c.Checkpoint != 0x5000028 || c.SystemID != 7445391827561034215 {
		t.Errorf("readControl of a whole file = %+v, %v", c, err)
	}
	torn := fakeControl(1, 0x5000028)
	binary.NativeEndian.PutUint64(torn[32:40], 0x4000028) // the old checkpoint
	if err := os.WriteFile(path, torn, 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err := readControl(path); err == nil {
		t.Errorf("readControl of a torn file = %+v; want an error", c)
	}
}

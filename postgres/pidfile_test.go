package postgres

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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

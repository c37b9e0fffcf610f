package agent

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/internal/wait"
	"github.com/pgha/pgha/postgres"
)

// The agent's observations of its own PostgreSQL become callback events:
// nothing for what it finds at start, then start, stop, restart (a new
// postmaster) and a role other than the last one it ran as. A status it
// could not read (the postmaster lives, SQL failed) is no event.
func TestCallbackEventsFromObservations(t *testing.T) {
	all := CallbacksConfig{OnStart: "true", OnStop: "true", OnRestart: "true", OnReload: "true", OnRoleChange: "true"}
	c := newCallbacks(all, "main", "n1", slog.Default())
	st := consensus.State{Primary: "n1", Epoch: 3}
	standby := postgres.Status{Running: true, InRecovery: true, PID: 10}
	primary := postgres.Status{Running: true, PID: 10}
	steps := []struct {
		pg   postgres.Status
		want []string // "action role"
	}{
		{standby, nil}, // found running at start
		{standby, nil},
		{primary, []string{"on_role_change primary"}},     // promoted
		{postgres.Status{PID: 10, Error: "timeout"}, nil}, // cannot query it: no event
		{postgres.Status{}, []string{"on_stop primary"}},  // gone
		{func() postgres.Status { s := standby; s.PID = 11; return s }(), // back as a replica
			[]string{"on_start replica", "on_role_change replica"}},
		{func() postgres.Status { s := standby; s.PID = 12; return s }(), []string{"on_restart replica"}},
	}
	for i, s := range steps {
		c.observe(s.pg, st)
		var got []string
		for len(c.events) > 0 {
			ev := <-c.events
			got = append(got, ev.action+" "+ev.role)
		}
		if strings.Join(got, ",") != strings.Join(s.want, ",") {
			t.Errorf("step %d: events %v, want %v", i, got, s.want)
		}
	}
	// An action without a command is not queued.
	none := newCallbacks(CallbacksConfig{OnStop: "true"}, "main", "n1", slog.Default())
	none.fire("on_start", "primary", st)
	if len(none.events) != 0 {
		t.Error("an action without a command was queued")
	}
	// fire never blocks, however many events wait.
	for range 100 {
		c.fire("on_reload", "primary", st)
	}
}

// A callback gets Patroni's arguments and the PGHA_* environment; one that
// hangs is killed with its children at callbacks.timeout and shown as the
// member's callback problem; a newer event kills the one still running.
func TestCallbackRuns(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "cb.sh")
	err := os.WriteFile(script, []byte(`#!/bin/sh
echo "$@ $PGHA_NODE $PGHA_EPOCH $PGHA_PRIMARY $PGHA_PRIMARY_HOST:$PGHA_PRIMARY_PORT" >> "`+dir+`/calls"
if [ "$1" = on_stop ]; then
	sleep 1000 & echo $! > "`+dir+`/child"
	wait
fi
`), 0o755)
	if err != nil {
		t.Fatal(err)
	}
	c := newCallbacks(CallbacksConfig{OnRoleChange: script, OnStop: script, OnStart: script, Timeout: 300 * time.Millisecond}, "main", "n2", slog.Default())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.run(ctx)
	st := consensus.State{Primary: "n2", Epoch: 5, Members: map[string]consensus.Member{"n2": {Name: "n2", PGHost: "10.0.0.2", PGPort: 5432}}}

	c.fire("on_role_change", "primary", st)
	calls := filepath.Join(dir, "calls")
	wait.For(t, 10*time.Second, "the callback's record", func() (bool, string) {
		b, _ := os.ReadFile(calls)
		return strings.Contains(string(b), "on_role_change primary main n2 5 n2 10.0.0.2:5432"), string(b)
	})

	// Hangs with a child: killed, both of them, at the timeout.
	c.fire("on_stop", "primary", st)
	wait.For(t, 10*time.Second, "the hanging callback's problem", func() (bool, string) {
		p := c.lastProblem()
		return strings.Contains(p, "on_stop (primary)") && strings.Contains(p, "callbacks.timeout"), p
	})
	b, err := os.ReadFile(filepath.Join(dir, "child"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	wait.For(t, 10*time.Second, "the callback's child to be killed", func() (bool, string) {
		return syscall.Kill(pid, 0) != nil, "sleep " + strconv.Itoa(pid) + " still runs"
	})

	// A success clears the problem; a newer event kills a hanging one.
	c.fire("on_start", "replica", st)
	wait.For(t, 10*time.Second, "a success to clear the problem", func() (bool, string) { return c.lastProblem() == "", c.lastProblem() })
	patient := newCallbacks(CallbacksConfig{OnStop: script, OnStart: script, Timeout: time.Hour}, "main", "n2", slog.Default())
	go patient.run(ctx)
	patient.fire("on_stop", "replica", st)
	wait.For(t, 10*time.Second, "the second hanging callback to start", func() (bool, string) {
		b, _ := os.ReadFile(calls)
		return strings.Count(string(b), "on_stop") == 2, string(b)
	})
	patient.fire("on_start", "replica", st)
	wait.For(t, 10*time.Second, "the newer event to run", func() (bool, string) {
		b, _ := os.ReadFile(calls)
		return strings.Count(string(b), "on_start") == 2, string(b)
	})
}

func TestCallbackConfigValidation(t *testing.T) {
	var errs []string
	bad := func(key, format string, args ...any) { errs = append(errs, key) }
	CallbacksConfig{OnStart: "/no/such/program arg", OnStop: "true", Timeout: -time.Second}.validate(bad)
	got := strings.Join(errs, ",")
	if !strings.Contains(got, "callbacks.on_start") || !strings.Contains(got, "callbacks.timeout") || strings.Contains(got, "on_stop") {
		t.Errorf("errors for %s, want on_start and timeout", got)
	}
}

package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
)

// Callbacks (the hooks pgpool-II's failover_command and
// follow_primary_command were used for, with Patroni's names and
// arguments).
//
// A callback runs `command action role cluster` as the agent's user, with
// PGHA_* variables in its environment, and is killed (its whole process
// group) at callbacks.timeout. The agent never waits for one: events are
// handed to a runner goroutine, so fencing, promotion and the VIP go on
// whatever a callback does. As in Patroni, a new event kills the callback
// still running, so a hanging one cannot hold back the next. A failure is
// logged and shown in /cluster (callback_problem).

// CallbacksConfig names the commands. Each is split on spaces (no shell);
// the action, the role and the cluster's name are appended.
type CallbacksConfig struct {
	OnStart      string        `yaml:"on_start"`       // PostgreSQL started
	OnStop       string        `yaml:"on_stop"`        // PostgreSQL stopped (or died)
	OnRestart    string        `yaml:"on_restart"`     // PostgreSQL restarted (a new postmaster)
	OnReload     string        `yaml:"on_reload"`      // the agent reloaded PostgreSQL's configuration
	OnRoleChange string        `yaml:"on_role_change"` // it became the primary, or a replica
	Timeout      time.Duration `yaml:"timeout"`        // default 30s
}

// DefaultCallbackTimeout bounds a callback unless callbacks.timeout says otherwise.
const DefaultCallbackTimeout = 30 * time.Second

func (c CallbacksConfig) commands() map[string]string {
	return map[string]string{"on_start": c.OnStart, "on_stop": c.OnStop, "on_restart": c.OnRestart, "on_reload": c.OnReload, "on_role_change": c.OnRoleChange}
}

func (c CallbacksConfig) validate(bad func(key, format string, args ...any)) {
	if c.Timeout < 0 {
		bad("callbacks.timeout", "%s is negative", c.Timeout)
	}
	cmds := c.commands()
	for _, action := range slices.Sorted(maps.Keys(cmds)) {
		cmd := cmds[action]
		if cmd == "" {
			continue
		}
		prog := strings.Fields(cmd)
		if len(prog) == 0 {
			bad("callbacks."+action, "only spaces; leave it out or name a program")
			continue
		}
		if _, err := exec.LookPath(prog[0]); err != nil {
			bad("callbacks."+action, "%q cannot be run: %v", prog[0], err)
		}
	}
}

// callbackEvent is one callback to run.
type callbackEvent struct {
	action, role string
	st           consensus.State
}

// callbacks runs the configured commands, one at a time.
type callbacks struct {
	cfg     CallbacksConfig
	cluster string
	node    string
	log     *slog.Logger
	events  chan callbackEvent

	mu      sync.Mutex
	problem string // the last failure, "" after a success

	seen postgresSeen // observed transitions (observe)
}

func newCallbacks(cfg CallbacksConfig, cluster, node string, log *slog.Logger) *callbacks {
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultCallbackTimeout
	}
	return &callbacks{cfg: cfg, cluster: cluster, node: node, log: log, events: make(chan callbackEvent, 16)}
}

// fire hands an event to the runner; it never blocks. Actions without a
// command are dropped here.
func (c *callbacks) fire(action, role string, st consensus.State) {
	if c == nil || c.cfg.commands()[action] == "" {
		return
	}
	select {
	case c.events <- callbackEvent{action, role, st}:
	default:
		c.log.Warn("callback dropped: too many pending", "action", action, "role", role)
	}
}

// run executes events until ctx ends. A newer event kills the running one.
func (c *callbacks) run(ctx context.Context) {
	var next *callbackEvent
	for {
		if next == nil {
			select {
			case <-ctx.Done():
				return
			case ev := <-c.events:
				next = &ev
			}
		}
		ev := *next
		next = nil
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.exec(rctx, ev)
		}()
		select {
		case <-done:
		case nev := <-c.events:
			c.log.Warn("callback killed: a newer event came", "action", ev.action, "newer", nev.action)
			next = &nev
			cancel()
			<-done
		case <-ctx.Done():
			cancel()
			<-done
		}
		cancel()
	}
}

// exec runs one callback to its end, its timeout or ctx's end.
func (c *callbacks) exec(ctx context.Context, ev callbackEvent) {
	prog := strings.Fields(c.cfg.commands()[ev.action])
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, prog[0], append(prog[1:], ev.action, ev.role, c.cluster)...)
	cmd.Env = append(os.Environ(), c.env(ev)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start).Round(time.Millisecond)
	switch {
	case err == nil:
		c.log.Info("callback done", "action", ev.action, "role", ev.role, "took", took.String())
		c.setProblem("")
		return
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		err = fmt.Errorf("killed after callbacks.timeout (%s)", c.cfg.Timeout)
	case ctx.Err() != nil:
		err = errors.New("killed: a newer event came, or the agent stopped")
	}
	tail := strings.TrimSpace(out.String())
	if len(tail) > 300 {
		tail = "..." + tail[len(tail)-300:]
	}
	c.log.Warn("callback failed", "action", ev.action, "role", ev.role, "took", took.String(), "err", err, "output", tail)
	c.setProblem(fmt.Sprintf("%s (%s) at %s: %v", ev.action, ev.role, start.UTC().Format(time.RFC3339), err))
}

// env is what a callback learns beyond its arguments.
func (c *callbacks) env(ev callbackEvent) []string {
	env := []string{
		"PGHA_ACTION=" + ev.action,
		"PGHA_ROLE=" + ev.role,
		"PGHA_CLUSTER=" + c.cluster,
		"PGHA_NODE=" + c.node,
		"PGHA_EPOCH=" + strconv.FormatUint(ev.st.Epoch, 10),
		"PGHA_PRIMARY=" + ev.st.Primary,
	}
	if p, ok := ev.st.Members[ev.st.Primary]; ok {
		env = append(env, "PGHA_PRIMARY_HOST="+p.PGHost, "PGHA_PRIMARY_PORT="+strconv.Itoa(p.PGPort))
	}
	return env
}

func (c *callbacks) setProblem(p string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.problem = p
}

// lastProblem is the last callback failure, "" if the last one succeeded.
func (c *callbacks) lastProblem() string {
	if c == nil {
		return ""
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.problem
}

// postgresSeen is the local PostgreSQL as the last observation saw it.
type postgresSeen struct {
	running  bool
	pid      int
	role     string // of the last running observation: "primary" or "replica"
	observed bool
}

// observe turns this node's observations of its PostgreSQL into events:
// started, stopped, restarted (a new postmaster), and a role that differs
// from the one it last ran as. The first observation only sets the scene:
// a server found running when the agent starts fires nothing. A status
// that could not be read (the postmaster lives, SQL failed) changes
// nothing.
func (c *callbacks) observe(pg postgres.Status, st consensus.State) {
	if c == nil || (!pg.Running && pg.PID != 0) {
		return
	}
	role := ""
	if pg.Running {
		role = "replica"
		if !pg.InRecovery {
			role = "primary"
		}
	}
	prev := c.seen
	c.seen.observed, c.seen.running, c.seen.pid = true, pg.Running, pg.PID
	if pg.Running {
		c.seen.role = role
	}
	if !prev.observed {
		return
	}
	switch {
	case prev.running && !pg.Running:
		c.fire("on_stop", prev.role, st)
		return
	case !prev.running && pg.Running:
		c.fire("on_start", role, st)
	case prev.running && pg.Running && prev.pid != pg.PID:
		c.fire("on_restart", role, st)
	}
	if pg.Running && prev.role != "" && prev.role != role {
		c.fire("on_role_change", role, st)
	}
}

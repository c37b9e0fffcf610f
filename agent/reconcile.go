package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
	"github.com/pgha/pgha/recovery"
)

// errWaiting marks a state the agent waits out rather than a problem.
type errWaiting struct{ why string }

func (e errWaiting) Error() string { return e.why }

// reconcileLoop converges the local PostgreSQL to the committed state, one
// step per pass, every loop_interval and whenever the committed state changes.
// It is the only goroutine that acts on PostgreSQL.
func (a *Agent) reconcileLoop(ctx context.Context) {
	changes, unsubscribe := a.node.Watch()
	defer unsubscribe()
	t := time.NewTicker(a.cfg.Timing.LoopInterval)
	defer t.Stop()
	for {
		err := a.reconcileOnce(ctx)
		var w errWaiting
		switch {
		case err == nil, ctx.Err() != nil:
			a.setProblem("")
		case errors.As(err, &w):
			a.setProblem("")
			a.setActivity("")
		default:
			a.setProblem(err.Error())
		}
		a.lastLoop.Store(time.Now().UnixNano())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-changes:
		}
	}
}

func (a *Agent) reconcileOnce(ctx context.Context) error {
	st := a.node.State()
	if !st.Initialized() {
		return errWaiting{"waiting for the Raft leader to initialise the cluster"}
	}
	if _, ok := st.Members[a.cfg.Name]; !ok {
		return errWaiting{"waiting to be registered as a member"}
	}
	dds, err := a.inst.DataDirState()
	if err != nil {
		return fmt.Errorf("inspect postgres.data_dir: %w", err)
	}
	if dds == postgres.DataDirInvalid {
		return fmt.Errorf("postgres.data_dir %s is not empty and not a PostgreSQL data directory; pgha never touches it: move it away or fix postgres.data_dir", a.cfg.Postgres.DataDir)
	}
	if st.Primary == a.cfg.Name {
		return a.convergePrimary(ctx, st, dds)
	}
	return a.convergeStandby(ctx, st, dds)
}

// convergePrimary makes this node the running, writable primary.
func (a *Agent) convergePrimary(ctx context.Context, st consensus.State, dds postgres.DataDirState) error {
	if dds.IsEmpty() {
		if st.SystemID != 0 {
			return fmt.Errorf("this node is the committed primary but its data directory is empty; the cluster's data (system identifier %d) is on the other members", st.SystemID)
		}
		a.log.Info("running initdb", "reason", "this node was chosen as the first primary and has no data directory", "pgdata", a.cfg.Postgres.DataDir)
		a.setActivity("initdb")
		err := a.inst.Initdb(ctx)
		a.setActivity("")
		if err != nil {
			return fmt.Errorf("initdb: %w", err)
		}
	} else if err := a.checkSystemID(ctx, st); err != nil {
		return err
	}
	change, err := a.inst.Configure(nil, nil)
	if err != nil {
		return fmt.Errorf("configure primary: %w", err)
	}
	pg := a.pgStatus(ctx)
	switch {
	case !pg.Running:
		a.log.Info("starting PostgreSQL", "role", "primary", "epoch", st.Epoch)
		if err := a.inst.Start(ctx); err != nil {
			return err
		}
	case change.NeedsRestart:
		a.log.Info("restarting PostgreSQL", "reason", "a setting that needs a restart changed")
		if err := a.inst.Restart(ctx, postgres.StopFast); err != nil {
			return err
		}
	case change.Changed:
		if err := a.inst.Reload(ctx); err != nil {
			return err
		}
	}
	pg = a.pgStatus(ctx)
	if !pg.Running {
		return fmt.Errorf("PostgreSQL is not accepting connections: %s", pg.Error)
	}
	if pg.InRecovery {
		// Committed state names this node primary of the current epoch, and
		// agents act only on committed state: promoting is the step to take.
		a.log.Info("promoting", "epoch", st.Epoch, "reason", "committed state names this node the primary")
		if err := a.inst.Promote(ctx); err != nil {
			return err
		}
	}
	a.dbMu.Lock()
	defer a.dbMu.Unlock()
	if err := a.inst.EnsureRoles(ctx); err != nil {
		return fmt.Errorf("create roles: %w", err)
	}
	var slots []string
	for name := range st.Members {
		if name != a.cfg.Name {
			slots = append(slots, SlotName(name))
		}
	}
	if err := a.inst.EnsureSlots(ctx, slots); err != nil {
		return fmt.Errorf("replication slots: %w", err)
	}
	return nil
}

// convergeStandby makes this node a hot standby streaming from the primary,
// cloning it first when there is no data directory.
func (a *Agent) convergeStandby(ctx context.Context, st consensus.State, dds postgres.DataDirState) error {
	p, ok := st.Members[st.Primary]
	if !ok {
		return errWaiting{"waiting for the primary to register"}
	}
	if st.SystemID == 0 {
		return errWaiting{"waiting for the primary to finish initdb"}
	}
	if dds.IsEmpty() {
		a.log.Info("cloning", "from", st.Primary, "slot", SlotName(a.cfg.Name), "reason", "no data directory: a new standby starts from a base backup of the primary")
		a.setActivity("cloning")
		err := recovery.Clone(ctx, a.cfg.Postgres.BinDir, a.cfg.Postgres.DataDir, a.cloneSource(p), a.cfg.Postgres.RunAs, func(line string) {
			a.log.Debug("pg_basebackup", "progress", line)
		})
		a.setActivity("")
		if err != nil {
			return fmt.Errorf("clone from %s: %w", st.Primary, err)
		}
		a.log.Info("clone finished", "from", st.Primary)
	} else if err := a.checkSystemID(ctx, st); err != nil {
		return err
	}
	pg := a.pgStatus(ctx)
	if pg.Running && !pg.InRecovery {
		// A writable server that is not the committed primary: stop it first.
		// It must be rewound onto the primary's timeline before it may stream.
		a.log.Warn("stopping a writable server that is not the committed primary", "primary", st.Primary, "epoch", st.Epoch)
		a.inst.Close()
		if err := a.inst.Stop(ctx, postgres.StopFast); err != nil {
			return err
		}
		pg = a.pgStatus(ctx)
	}
	if !pg.Running {
		if err := a.checkWasStandby(ctx); err != nil {
			return err
		}
	}
	change, err := a.inst.Configure(a.standbyOf(p), nil)
	if err != nil {
		return fmt.Errorf("configure standby: %w", err)
	}
	switch {
	case !pg.Running:
		a.log.Info("starting PostgreSQL", "role", "standby", "upstream", st.Primary, "epoch", st.Epoch)
		if err := a.inst.Start(ctx); err != nil {
			return err
		}
	case change.NeedsRestart:
		a.log.Info("restarting PostgreSQL", "reason", "a setting that needs a restart changed")
		if err := a.inst.Restart(ctx, postgres.StopFast); err != nil {
			return err
		}
	case change.Changed:
		a.log.Info("reloading PostgreSQL", "reason", "replication settings changed", "upstream", st.Primary)
		if err := a.inst.Reload(ctx); err != nil {
			return err
		}
	}
	return nil
}

// checkWasStandby refuses to start a stopped data directory as a standby if it
// was last a primary: it may hold writes the new primary never saw, and must
// be rewound (or re-cloned) onto the primary's timeline before it may serve.
func (a *Agent) checkWasStandby(ctx context.Context) error {
	state, err := a.inst.ClusterState(ctx)
	if err != nil {
		return err
	}
	switch state {
	case "shut down in recovery", "in archive recovery", "in crash recovery":
		return nil
	}
	if a.inst.HasBackupLabel() {
		return nil // a fresh base backup: starts in recovery from its label
	}
	return fmt.Errorf("the data directory was last a primary (pg_control: %q) but %s is the primary now: it must be rewound before it may stream; run `pgha-agent reinit %s` to re-clone it", state, a.node.State().Primary, a.cfg.Name)
}

// checkSystemID refuses a data directory that belongs to another cluster.
func (a *Agent) checkSystemID(ctx context.Context, st consensus.State) error {
	if st.SystemID == 0 {
		return nil
	}
	id, err := a.inst.SystemID(ctx)
	if err != nil {
		return fmt.Errorf("read system identifier: %w", err)
	}
	if id != st.SystemID {
		return fmt.Errorf("postgres.data_dir %s belongs to another cluster (system identifier %d, this cluster's is %d); pgha will neither start nor wipe it: move it away and this node will clone a fresh copy", a.cfg.Postgres.DataDir, id, st.SystemID)
	}
	return nil
}

func (a *Agent) pgStatus(ctx context.Context) postgres.Status {
	a.dbMu.Lock()
	defer a.dbMu.Unlock()
	return a.inst.Status(ctx)
}

func (a *Agent) cloneSource(p consensus.Member) recovery.Source {
	return recovery.Source{
		Host:     p.PGHost,
		Port:     p.PGPort,
		User:     a.cfg.Postgres.Replication.User,
		PassFile: a.passfile(),
		SlotName: SlotName(a.cfg.Name),
	}
}

func (a *Agent) standbyOf(p consensus.Member) *postgres.Standby {
	return &postgres.Standby{
		PrimaryHost:     p.PGHost,
		PrimaryPort:     p.PGPort,
		User:            a.cfg.Postgres.Replication.User,
		PassFile:        a.passfile(),
		SlotName:        SlotName(a.cfg.Name),
		ApplicationName: a.cfg.Name,
	}
}

// SlotName is the physical replication slot the primary keeps for a member.
func SlotName(member string) string {
	b := []byte("pgha_" + member)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			b[i] = '_'
		}
	}
	return string(b)
}

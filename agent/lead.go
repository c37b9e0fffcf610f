package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"time"
)

// leadLoop runs the leader's policy every health_interval. On followers it
// only waits: only the Raft leader decides, and only through the Raft log.
func (a *Agent) leadLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.Timing.HealthInterval)
	defer t.Stop()
	for {
		if a.node.IsLeader() {
			a.leadOnce(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (a *Agent) leadOnce(ctx context.Context) {
	servers, err := a.node.Servers()
	if err != nil {
		a.log.Warn("read raft configuration", "err", err)
		return
	}
	voters := make([]string, 0, len(servers))
	for _, s := range servers {
		voters = append(voters, s.ID)
	}
	st := a.node.State()
	in := Inputs{
		State:        st,
		Observations: a.obs.snapshot(),
		Now:          time.Now(),
		Self:         a.cfg.Name,
		Voters:       voters,
		NewClusterID: newClusterID(),
	}
	for _, d := range decide(in) {
		a.log.Info("decision", "command", string(d.Command.Type), "epoch", st.Epoch, "reason", d.Reason)
		if err := a.node.Apply(ctx, d.Command); err != nil {
			a.log.Warn("decision not committed", "command", string(d.Command.Type), "err", err)
			return
		}
	}
}

func newClusterID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

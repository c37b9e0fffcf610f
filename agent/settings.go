package agent

import (
	"time"

	"github.com/pgha/pgha/consensus"
)

// The timing and failover settings in force. Every member must judge the
// others by the same values (a leader with fence_timeout 1 s judging a
// primary whose own file says 5 s would promote while it still writes), so
// once the cluster-wide configuration records them (clusterconfig.go) they
// are read from there, on every use: a change committed in Raft takes
// effect on every agent's next pass. Before that (a cluster whose
// configuration was recorded by an older agent) each agent uses its file.

// timing is the timing in force.
func (a *Agent) timing() TimingConfig {
	return timingOf(a.node.Config(), a.cfg.Timing)
}

// failover is the failover policy in force.
func (a *Agent) failover() FailoverConfig {
	return failoverOf(a.node.Config(), a.cfg.Failover)
}

func timingOf(c consensus.ClusterConfig, file TimingConfig) TimingConfig {
	if c.Timing == nil {
		return file
	}
	return TimingConfig{
		LoopInterval:      c.Timing.LoopInterval,
		HealthInterval:    c.Timing.HealthInterval,
		FenceTimeout:      c.Timing.FenceTimeout,
		SwitchoverTimeout: c.Timing.SwitchoverTimeout,
	}
}

func failoverOf(c consensus.ClusterConfig, file FailoverConfig) FailoverConfig {
	if c.Failover == nil {
		return file
	}
	sync := c.Failover.SynchronousMode
	return FailoverConfig{
		SynchronousMode:        &sync,
		MaximumLagOnFailover:   c.Failover.MaximumLagOnFailover,
		MaximumLagOnSwitchover: c.Failover.MaximumLagOnSwitchover,
		PrimaryRestartWindow:   c.Failover.PrimaryRestartWindow,
	}
}

// clusterTiming and clusterFailover are the replicated forms of a file's.
func clusterTiming(t TimingConfig) *consensus.Timing {
	return &consensus.Timing{LoopInterval: t.LoopInterval, HealthInterval: t.HealthInterval, FenceTimeout: t.FenceTimeout, SwitchoverTimeout: t.SwitchoverTimeout}
}

func clusterFailover(f FailoverConfig) *consensus.Failover {
	return &consensus.Failover{SynchronousMode: f.Synchronous(), MaximumLagOnFailover: f.MaximumLagOnFailover, MaximumLagOnSwitchover: f.MaximumLagOnSwitchover, PrimaryRestartWindow: f.PrimaryRestartWindow}
}

// leaseJudgedBy is the fence timeout a leader judges the primary's lease
// by: the one in force, or a longer one that leases granted before its
// last change may still run under (consensus.ClusterConfig.PriorFenceTimeout).
func leaseJudgedBy(c consensus.ClusterConfig, t TimingConfig) time.Duration {
	return max(t.FenceTimeout, c.PriorFenceTimeout)
}

// ticker is a time.Ticker whose period follows a setting that may change
// while it runs (a cluster-wide configuration change).
type ticker struct {
	*time.Ticker
	period time.Duration
}

func newTicker(d time.Duration) *ticker { return &ticker{time.NewTicker(d), d} }

// follow sets the period to d if it changed.
func (t *ticker) follow(d time.Duration) {
	if d > 0 && d != t.period {
		t.Reset(d)
		t.period = d
	}
}

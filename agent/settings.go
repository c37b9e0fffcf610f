package agent

import (
	"errors"
	"fmt"
	"slices"
	"strings"
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

// routerSettings is the router configuration in force: this node's file
// (listeners, secrets, TLS) with the cluster-wide routing and pooling
// settings once recorded. A recorded copy this node cannot use (a hostssl
// rule and no certificate here) leaves the file's, with the reason.
func (a *Agent) routerSettings() (RouterConfig, error) {
	return routerOf(a.node.Config(), a.cfg.Router)
}

func routerOf(c consensus.ClusterConfig, file RouterConfig) (RouterConfig, error) {
	s := c.Router
	if s == nil {
		return file, nil
	}
	r := file
	lb, ryw := s.LoadBalance, s.ReadYourWrites
	r.PoolMode, r.PoolSize, r.MaxClientConn = s.PoolMode, s.PoolSize, s.MaxClientConn
	r.QueryWaitTimeout, r.ServerIdleTimeout, r.ServerLifetime = s.QueryWaitTimeout, s.ServerIdleTimeout, s.ServerLifetime
	r.LoadBalance, r.MaxLag, r.ReadYourWrites = &lb, s.MaxLag, &ryw
	r.WriteFunctions, r.DrainTimeout, r.PrimaryWait = slices.Clone(s.WriteFunctions), s.DrainTimeout, s.PrimaryWait
	r.HBA = slices.Clone(s.HBA)
	var errs []string
	r.validate(func(key, format string, args ...any) {
		errs = append(errs, key+": "+fmt.Sprintf(format, args...))
	})
	if len(errs) == 0 {
		if err := r.routerConfig().Validate(); err != nil {
			errs = append(errs, "router: "+strings.TrimPrefix(err.Error(), "router config: "))
		}
	}
	if len(errs) > 0 {
		return file, fmt.Errorf("the cluster-wide router settings (version %d) do not fit this node: %w", c.Version, errors.New(strings.Join(errs, "; ")))
	}
	return r, nil
}

// clusterRouter is the replicated form of a file's router settings.
func clusterRouter(r RouterConfig) *consensus.RouterSettings {
	return &consensus.RouterSettings{
		PoolMode: r.PoolMode, PoolSize: r.PoolSize, MaxClientConn: r.MaxClientConn,
		QueryWaitTimeout: r.QueryWaitTimeout, ServerIdleTimeout: r.ServerIdleTimeout, ServerLifetime: r.ServerLifetime,
		LoadBalance: r.LoadBalance == nil || *r.LoadBalance, MaxLag: r.MaxLag,
		ReadYourWrites: r.ReadYourWrites == nil || *r.ReadYourWrites,
		WriteFunctions: slices.Clone(r.WriteFunctions), DrainTimeout: r.DrainTimeout, PrimaryWait: r.PrimaryWait,
		HBA: slices.Clone(r.HBA),
	}
}

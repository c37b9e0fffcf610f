package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
	"github.com/pgha/pgha/router"
)

// The cluster-wide configuration (consensus.ClusterConfig): what every
// member must agree on lives in Raft, not in each node's file. The first
// leader records its own file's values as version 1; afterwards PATCH
// /config changes it and every agent writes it into its PostgreSQL's
// configuration on its next pass (a reload; a parameter that needs a
// restart shows as pending_restart). A node's file then only serves a
// cluster that has no version yet.

// bootstrapConfig is what this node records as version 1 when it leads a
// cluster that has none.
func (a *Agent) bootstrapConfig() consensus.ClusterConfig {
	return consensus.ClusterConfig{
		Parameters: maps.Clone(a.cfg.Postgres.Parameters),
		HBA:        slices.Clone(a.cfg.Postgres.HBA),
		Timing:     clusterTiming(a.cfg.Timing),
		Failover:   clusterFailover(a.cfg.Failover),
		Router:     clusterRouter(a.cfg.Router),
		Archive:    clusterArchive(a.cfg.Archive),
		Backup:     clusterBackup(a.cfg.Backup),
	}
}

// useClusterConfig hands the parameters and pg_hba lines in force (the
// replicated ones, or this node's file's before the cluster has a
// configuration) to the PostgreSQL instance, written by the next
// Configure, and says once per version what of this node's file it ignores.
func (a *Agent) useClusterConfig(st consensus.State) {
	params, hba := a.cfg.Postgres.Parameters, a.cfg.Postgres.HBA
	if st.Config.Version != 0 {
		params, hba = st.Config.Parameters, st.Config.HBA
	}
	// A version recorded before the archive section may hold the archive
	// among the parameters: those values win over this node's file.
	var archive ArchiveConfig
	if st.Config.Version != 0 && st.Config.Archive == nil {
		if params, archive = liftArchive(params, ArchiveConfig{}); archive == (ArchiveConfig{}) {
			archive = a.cfg.Archive
		}
	} else {
		params, archive = liftArchive(params, archiveOf(st.Config, a.cfg.Archive))
	}
	// Both were validated before they were committed; an error here means
	// an agent with other rules (an older version): keep what runs.
	if err := a.inst.SetParameters(params); err != nil {
		a.log.Error("the cluster-wide PostgreSQL parameters are not valid here; keeping the previous ones", "version", st.Config.Version, "err", err)
		return
	}
	if err := a.inst.SetHBA(hba); err != nil {
		a.log.Error("the cluster-wide pg_hba lines are not valid here; keeping the previous ones", "version", st.Config.Version, "err", err)
		return
	}
	if err := a.inst.SetArchive(archive.postgres()); err != nil {
		a.log.Error("the cluster-wide archive settings are not valid here; keeping the previous ones", "version", st.Config.Version, "err", err)
		return
	}
	if st.Config.Version == 0 || a.configNoted.Swap(st.Config.Version) == st.Config.Version {
		return
	}
	var ignored []string
	for k, v := range a.cfg.Postgres.Parameters {
		if cv, ok := st.Config.Parameters[k]; !ok || cv != v {
			ignored = append(ignored, fmt.Sprintf("%s=%s", k, v))
		}
	}
	if len(a.cfg.Postgres.HBA) > 0 && !slices.Equal(a.cfg.Postgres.HBA, st.Config.HBA) {
		ignored = append(ignored, "postgres.hba")
	}
	if t := st.Config.Timing; t != nil && *clusterTiming(a.cfg.Timing) != *t {
		ignored = append(ignored, "timing")
	}
	if f := st.Config.Failover; f != nil && *clusterFailover(a.cfg.Failover) != *f {
		ignored = append(ignored, "failover")
	}
	if r := st.Config.Router; r != nil && !reflect.DeepEqual(clusterRouter(a.cfg.Router), r) {
		ignored = append(ignored, "router (routing and pooling)")
	}
	if ar := st.Config.Archive; ar != nil && *clusterArchive(a.cfg.Archive) != *ar {
		ignored = append(ignored, "archive")
	}
	if b := st.Config.Backup; b != nil && !reflect.DeepEqual(backupOf(st.Config, a.cfg.Backup, a.cfg.Cluster.Name), a.cfg.Backup.withDefaults(a.cfg.Cluster.Name)) {
		ignored = append(ignored, "backup")
	}
	if len(ignored) > 0 {
		slices.Sort(ignored)
		a.log.Warn("settings in this node's file differ from the cluster-wide configuration, which wins: edit it with pgha-agent edit-config", "version", st.Config.Version, "ignored", ignored)
	}
}

// ConfigView is GET /config: the cluster-wide configuration in Patroni's
// shape where it maps (postgresql.parameters), pgha's own sections as in a
// node's file (timing, failover), with its version. Durations are written
// as Go durations ("1s", "250ms").
type ConfigView struct {
	Version  uint64       `json:"version"`
	Timing   TimingView   `json:"timing"`
	Failover FailoverView `json:"failover"`
	Router   RouterView   `json:"router"`
	// Archive and Backup are as in a node's file (backup with its
	// defaults filled in).
	Archive ArchiveConfig `json:"archive"`
	Backup  BackupConfig  `json:"backup"`
	// PriorFenceTimeout is set from a change of fence_timeout until no
	// lease granted under the earlier value can run: leaders judge leases
	// by the longer of the two meanwhile.
	PriorFenceTimeout string             `json:"prior_fence_timeout,omitempty"`
	PostgreSQL        ConfigPostgresView `json:"postgresql"`
}

// TimingView is the timing section of ConfigView.
type TimingView struct {
	LoopInterval      string `json:"loop_interval" yaml:"loop_interval"`
	HealthInterval    string `json:"health_interval" yaml:"health_interval"`
	FenceTimeout      string `json:"fence_timeout" yaml:"fence_timeout"`
	SwitchoverTimeout string `json:"switchover_timeout" yaml:"switchover_timeout"`
}

// FailoverView is the failover section of ConfigView.
type FailoverView struct {
	SynchronousMode        bool   `json:"synchronous_mode" yaml:"synchronous_mode"`
	MaximumLagOnFailover   int64  `json:"maximum_lag_on_failover" yaml:"maximum_lag_on_failover"`
	MaximumLagOnSwitchover int64  `json:"maximum_lag_on_switchover" yaml:"maximum_lag_on_switchover"`
	PrimaryRestartWindow   string `json:"primary_restart_window" yaml:"primary_restart_window"`
}

// RouterView is the router section of ConfigView: the routing and pooling
// settings (listeners, secrets and TLS stay in each node's file).
type RouterView struct {
	PoolMode          string   `json:"pool_mode" yaml:"pool_mode"`
	PoolSize          int      `json:"pool_size" yaml:"pool_size"`
	MaxClientConn     int      `json:"max_client_conn" yaml:"max_client_conn"`
	QueryWaitTimeout  string   `json:"query_wait_timeout" yaml:"query_wait_timeout"`
	ServerIdleTimeout string   `json:"server_idle_timeout" yaml:"server_idle_timeout"`
	ServerLifetime    string   `json:"server_lifetime" yaml:"server_lifetime"`
	LoadBalance       bool     `json:"load_balance" yaml:"load_balance"`
	MaxLag            int64    `json:"max_lag" yaml:"max_lag"`
	ReadYourWrites    bool     `json:"read_your_writes" yaml:"read_your_writes"`
	WriteFunctions    []string `json:"write_functions" yaml:"write_functions"`
	DrainTimeout      string   `json:"drain_timeout" yaml:"drain_timeout"`
	PrimaryWait       string   `json:"primary_wait" yaml:"primary_wait"`
	HBA               []string `json:"hba" yaml:"hba"`
}

// ConfigPostgresView is the postgresql section of ConfigView.
type ConfigPostgresView struct {
	Parameters map[string]string `json:"parameters"`
	HBA        []string          `json:"pg_hba"`
}

// configView is st's configuration; timing and failover not recorded yet
// (a version written by an older agent) show as file says, this node's.
func configView(st consensus.State, file *Config) ConfigView {
	params := maps.Clone(st.Config.Parameters)
	if params == nil {
		params = map[string]string{}
	}
	hba := slices.Clone(st.Config.HBA)
	if hba == nil {
		hba = []string{}
	}
	t, f := timingOf(st.Config, file.Timing), failoverOf(st.Config, file.Failover)
	r := clusterRouter(file.Router)
	if st.Config.Router != nil {
		r = st.Config.Router
	}
	v := ConfigView{
		Version: st.Config.Version,
		Timing: TimingView{
			LoopInterval:      t.LoopInterval.String(),
			HealthInterval:    t.HealthInterval.String(),
			FenceTimeout:      t.FenceTimeout.String(),
			SwitchoverTimeout: t.SwitchoverTimeout.String(),
		},
		Failover: FailoverView{
			SynchronousMode:        f.Synchronous(),
			MaximumLagOnFailover:   f.MaximumLagOnFailover,
			MaximumLagOnSwitchover: f.MaximumLagOnSwitchover,
			PrimaryRestartWindow:   f.PrimaryRestartWindow.String(),
		},
		Router: RouterView{
			PoolMode: r.PoolMode, PoolSize: r.PoolSize, MaxClientConn: r.MaxClientConn,
			QueryWaitTimeout: r.QueryWaitTimeout.String(), ServerIdleTimeout: r.ServerIdleTimeout.String(), ServerLifetime: r.ServerLifetime.String(),
			LoadBalance: r.LoadBalance, MaxLag: r.MaxLag, ReadYourWrites: r.ReadYourWrites,
			WriteFunctions: writeFunctions(r.WriteFunctions), DrainTimeout: r.DrainTimeout.String(), PrimaryWait: r.PrimaryWait.String(),
			HBA: nonNil(r.HBA),
		},
		PostgreSQL: ConfigPostgresView{Parameters: params, HBA: hba},
		Archive:    archiveOf(st.Config, file.Archive),
		Backup:     backupOf(st.Config, file.Backup, file.Cluster.Name),
	}
	if p := st.Config.PriorFenceTimeout; p > 0 {
		v.PriorFenceTimeout = p.String()
	}
	return v
}

func (a *Agent) handleConfig(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, configView(a.node.State(), a.cfg))
}

// configPatch is PATCH /config's body, a JSON merge patch (RFC 7396) of
// ConfigView: a parameter set to null is removed. "version", if given,
// must be the version the change was made from.
type configPatch struct {
	Version *uint64 `json:"version"`
	Timing  *struct {
		LoopInterval      *string `json:"loop_interval"`
		HealthInterval    *string `json:"health_interval"`
		FenceTimeout      *string `json:"fence_timeout"`
		SwitchoverTimeout *string `json:"switchover_timeout"`
	} `json:"timing"`
	Failover *struct {
		SynchronousMode        *bool   `json:"synchronous_mode"`
		MaximumLagOnFailover   *int64  `json:"maximum_lag_on_failover"`
		MaximumLagOnSwitchover *int64  `json:"maximum_lag_on_switchover"`
		PrimaryRestartWindow   *string `json:"primary_restart_window"`
	} `json:"failover"`
	Router *struct {
		PoolMode          *string   `json:"pool_mode"`
		PoolSize          *int      `json:"pool_size"`
		MaxClientConn     *int      `json:"max_client_conn"`
		QueryWaitTimeout  *string   `json:"query_wait_timeout"`
		ServerIdleTimeout *string   `json:"server_idle_timeout"`
		ServerLifetime    *string   `json:"server_lifetime"`
		LoadBalance       *bool     `json:"load_balance"`
		MaxLag            *int64    `json:"max_lag"`
		ReadYourWrites    *bool     `json:"read_your_writes"`
		WriteFunctions    *[]string `json:"write_functions"` // replaces the list
		DrainTimeout      *string   `json:"drain_timeout"`
		PrimaryWait       *string   `json:"primary_wait"`
		HBA               *[]string `json:"hba"` // replaces the list
	} `json:"router"`
	Archive *struct {
		ArchiveMode    *string `json:"archive_mode"`
		ArchiveCommand *string `json:"archive_command"`
		RestoreCommand *string `json:"restore_command"`
	} `json:"archive"`
	Backup *struct {
		Tool         *string   `json:"tool"`
		Command      *string   `json:"command"`
		Stanza       *string   `json:"stanza"`
		Options      *[]string `json:"options"`       // replaces the list
		CloneMethods *[]string `json:"clone_methods"` // replaces the list
	} `json:"backup"`
	PostgreSQL *struct {
		Parameters map[string]*string `json:"parameters"`
		HBA        *[]string          `json:"pg_hba"` // replaces the list (a merge patch replaces arrays)
	} `json:"postgresql"`
}

// handlePatchConfig validates the change and commits it as one command, on
// the leader; nothing is applied when anything is wrong.
func (a *Agent) handlePatchConfig(w http.ResponseWriter, r *http.Request, body []byte) {
	var p configPatch
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: `body must be a JSON merge patch such as {"postgresql": {"parameters": {"work_mem": "8MB", "old_setting": null}}}: ` + err.Error()})
		return
	}
	st := a.node.State()
	base := st.Config.Version
	if p.Version != nil && *p.Version != base {
		writeJSON(w, http.StatusConflict, apiError{Error: fmt.Sprintf("config changed meanwhile: edited from version %d, version %d is committed; edit it again", *p.Version, base)})
		return
	}
	next := st.Config.Clone()
	if base == 0 {
		next = a.bootstrapConfig() // what version 1 would have been
	}
	if next.Parameters == nil {
		next.Parameters = map[string]string{}
	}
	if p.PostgreSQL != nil {
		if p.PostgreSQL.HBA != nil {
			next.HBA = slices.Clone(*p.PostgreSQL.HBA)
		}
		for k, v := range p.PostgreSQL.Parameters {
			if v == nil {
				delete(next.Parameters, k)
			} else {
				next.Parameters[k] = *v
			}
		}
	}
	t, f, errs := patchSettings(p, timingOf(next, a.cfg.Timing), failoverOf(next, a.cfg.Failover), a.cfg.Raft)
	if len(errs) > 0 {
		writeJSON(w, http.StatusBadRequest, apiError{Error: strings.Join(errs, "; ") + "; nothing was changed"})
		return
	}
	next.Timing, next.Failover = clusterTiming(t), clusterFailover(f)
	rs := clusterRouter(a.cfg.Router)
	if next.Router != nil {
		rs = next.Router
	}
	if errs := patchRouter(p, rs); len(errs) > 0 {
		writeJSON(w, http.StatusBadRequest, apiError{Error: strings.Join(errs, "; ") + "; nothing was changed"})
		return
	}
	next.Router = rs
	if _, err := routerOf(next, a.cfg.Router); err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: err.Error() + "; nothing was changed"})
		return
	}
	ar, bk := patchArchive(p, archiveOf(next, a.cfg.Archive), backupOf(next, a.cfg.Backup, a.cfg.Cluster.Name))
	// archive_mode and the commands given as parameters (--pg
	// archive_mode=on, or a version recorded before the archive section)
	// are the archive section's.
	next.Parameters, ar = liftArchive(next.Parameters, ar)
	var archiveErrs []string
	validateArchive(func(key, format string, args ...any) {
		archiveErrs = append(archiveErrs, key+": "+fmt.Sprintf(format, args...))
	}, ar, bk.withDefaults(a.cfg.Cluster.Name))
	if len(archiveErrs) > 0 {
		writeJSON(w, http.StatusBadRequest, apiError{Error: strings.Join(archiveErrs, "; ") + "; nothing was changed"})
		return
	}
	next.Archive, next.Backup = clusterArchive(ar), clusterBackup(bk)
	// Leases granted under the fence timeout this leader judges by now may
	// still run after a change to a shorter one: every leader keeps judging
	// by it until they have ended (settleLeases).
	if judged := widenForPrimary(a.policy(), a.obs.snapshot()[st.Primary]).FenceTimeout; judged > t.FenceTimeout {
		next.PriorFenceTimeout = judged
	} else {
		next.PriorFenceTimeout = 0
	}
	if err := postgres.ValidateParameters(next.Parameters); err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "postgresql.parameters: " + err.Error() + "; nothing was changed"})
		return
	}
	// In synchronous mode every acknowledged commit must be on a standby of
	// the synchronous set (DESIGN): a cluster-wide synchronous_commit that
	// acknowledges before the standby has it would lose commits at the next
	// failover. (A session may still choose it for itself.)
	if sc := strings.ToLower(next.Parameters["synchronous_commit"]); f.Synchronous() && (sc == "off" || sc == "local" || sc == "false" || sc == "no" || sc == "0") {
		writeJSON(w, http.StatusBadRequest, apiError{Error: fmt.Sprintf("postgresql.parameters: \"synchronous_commit\" = %q acknowledges commits no standby holds, which synchronous mode exists to prevent; nothing was changed", next.Parameters["synchronous_commit"])})
		return
	}
	if err := postgres.ValidateHBA(next.HBA); err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "postgresql.pg_hba" + err.Error() + "; nothing was changed"})
		return
	}
	if base != 0 && sameConfig(next, st.Config) {
		writeJSON(w, http.StatusOK, configView(st, a.cfg))
		return
	}
	a.log.Info("decision", "command", "set_config", "version", base+1, "reason", "an operator changed the cluster-wide configuration", "fence_timeout", t.FenceTimeout, "prior_fence_timeout", next.PriorFenceTimeout)
	if err := a.node.Apply(r.Context(), consensus.SetConfig(base, next)); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, configView(a.node.State(), a.cfg))
}

// patchSettings applies the timing and failover parts of a patch to t and
// f and validates the result as a node's file is validated (against this
// leader's Raft timing); errs names every wrong key.
func patchSettings(p configPatch, t TimingConfig, f FailoverConfig, r RaftConfig) (TimingConfig, FailoverConfig, []string) {
	var errs []string
	bad := func(key, format string, args ...any) {
		errs = append(errs, key+": "+fmt.Sprintf(format, args...))
	}
	duration := func(key string, v *string, into *time.Duration) { patchDuration(bad, key, v, into) }
	if pt := p.Timing; pt != nil {
		duration("timing.loop_interval", pt.LoopInterval, &t.LoopInterval)
		duration("timing.health_interval", pt.HealthInterval, &t.HealthInterval)
		duration("timing.fence_timeout", pt.FenceTimeout, &t.FenceTimeout)
		duration("timing.switchover_timeout", pt.SwitchoverTimeout, &t.SwitchoverTimeout)
	}
	if pf := p.Failover; pf != nil {
		if pf.SynchronousMode != nil {
			sync := *pf.SynchronousMode
			f.SynchronousMode = &sync
		}
		if pf.MaximumLagOnFailover != nil {
			f.MaximumLagOnFailover = *pf.MaximumLagOnFailover
		}
		if pf.MaximumLagOnSwitchover != nil {
			f.MaximumLagOnSwitchover = *pf.MaximumLagOnSwitchover
		}
		duration("failover.primary_restart_window", pf.PrimaryRestartWindow, &f.PrimaryRestartWindow)
	}
	if len(errs) > 0 {
		return t, f, errs
	}
	validateTiming(bad, t, r)
	validateFailover(bad, f)
	return t, f, errs
}

// patchRouter applies the router part of a patch to r (a copy of its own)
// and names every value that is not of its kind; routerOf validates the
// result as a node's file is validated.
func patchRouter(p configPatch, r *consensus.RouterSettings) []string {
	pr := p.Router
	if pr == nil {
		return nil
	}
	var errs []string
	bad := func(key, format string, args ...any) { errs = append(errs, key+": "+fmt.Sprintf(format, args...)) }
	duration := func(key string, v *string, into *time.Duration) { patchDuration(bad, key, v, into) }
	if pr.PoolMode != nil {
		r.PoolMode = *pr.PoolMode
	}
	if pr.PoolSize != nil {
		r.PoolSize = *pr.PoolSize
	}
	if pr.MaxClientConn != nil {
		r.MaxClientConn = *pr.MaxClientConn
	}
	duration("router.query_wait_timeout", pr.QueryWaitTimeout, &r.QueryWaitTimeout)
	duration("router.server_idle_timeout", pr.ServerIdleTimeout, &r.ServerIdleTimeout)
	duration("router.server_lifetime", pr.ServerLifetime, &r.ServerLifetime)
	if pr.LoadBalance != nil {
		r.LoadBalance = *pr.LoadBalance
	}
	if pr.MaxLag != nil {
		r.MaxLag = *pr.MaxLag
	}
	if pr.ReadYourWrites != nil {
		r.ReadYourWrites = *pr.ReadYourWrites
	}
	if pr.WriteFunctions != nil {
		r.WriteFunctions = slices.Clone(*pr.WriteFunctions)
	}
	duration("router.drain_timeout", pr.DrainTimeout, &r.DrainTimeout)
	duration("router.primary_wait", pr.PrimaryWait, &r.PrimaryWait)
	if pr.HBA != nil {
		r.HBA = slices.Clone(*pr.HBA)
	}
	return errs
}

// patchArchive applies the archive and backup parts of a patch to a and b.
// A backup tool changed without clone methods takes its default methods
// (the tool, then basebackup), not the old tool's.
func patchArchive(p configPatch, a ArchiveConfig, b BackupConfig) (ArchiveConfig, BackupConfig) {
	set := func(into *string, v *string) {
		if v != nil {
			*into = *v
		}
	}
	if pa := p.Archive; pa != nil {
		set(&a.ArchiveMode, pa.ArchiveMode)
		set(&a.ArchiveCommand, pa.ArchiveCommand)
		set(&a.RestoreCommand, pa.RestoreCommand)
	}
	if pb := p.Backup; pb != nil {
		if pb.Tool != nil && *pb.Tool != b.Tool {
			if pb.CloneMethods == nil {
				b.CloneMethods = nil
			}
			if pb.Command == nil {
				b.Command = ""
			}
		}
		set(&b.Tool, pb.Tool)
		set(&b.Command, pb.Command)
		set(&b.Stanza, pb.Stanza)
		if pb.Options != nil {
			b.Options = slices.Clone(*pb.Options)
		}
		if pb.CloneMethods != nil {
			b.CloneMethods = slices.Clone(*pb.CloneMethods)
		}
	}
	return a, b
}

// writeFunctions is the list in force: nil stands for the router's own.
func writeFunctions(s []string) []string {
	if s == nil {
		return slices.Clone(router.DefaultWriteFunctions)
	}
	return s
}

// patchDuration sets into from a patch's duration string v, if given, or
// names key as bad.
func patchDuration(bad func(key, format string, args ...any), key string, v *string, into *time.Duration) {
	if v == nil {
		return
	}
	d, err := time.ParseDuration(*v)
	if err != nil {
		bad(key, "%q is not a duration such as 500ms or 2s", *v)
		return
	}
	*into = d
}

// nonNil is s, or an empty list: JSON shows [] rather than null.
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// sameConfig reports whether a and b hold the same settings (versions aside).
func sameConfig(a, b consensus.ClusterConfig) bool {
	eq := func(x, y any) bool { return reflect.DeepEqual(x, y) }
	return maps.Equal(a.Parameters, b.Parameters) && slices.Equal(a.HBA, b.HBA) &&
		eq(a.Timing, b.Timing) && eq(a.Failover, b.Failover) && eq(a.Router, b.Router) && a.PriorFenceTimeout == b.PriorFenceTimeout &&
		eq(a.Archive, b.Archive) && eq(a.Backup, b.Backup)
}

package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
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
	return consensus.ClusterConfig{Parameters: maps.Clone(a.cfg.Postgres.Parameters), HBA: slices.Clone(a.cfg.Postgres.HBA)}
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
	if len(ignored) > 0 {
		slices.Sort(ignored)
		a.log.Warn("postgres.parameters in this node's file differ from the cluster-wide configuration, which wins: edit it with pgha-agent edit-config", "version", st.Config.Version, "ignored", ignored)
	}
}

// ConfigView is GET /config: the cluster-wide configuration in Patroni's
// shape where it maps (postgresql.parameters), with its version.
type ConfigView struct {
	Version    uint64             `json:"version"`
	PostgreSQL ConfigPostgresView `json:"postgresql"`
}

// ConfigPostgresView is the postgresql section of ConfigView.
type ConfigPostgresView struct {
	Parameters map[string]string `json:"parameters"`
	HBA        []string          `json:"pg_hba"`
}

func configView(st consensus.State) ConfigView {
	params := maps.Clone(st.Config.Parameters)
	if params == nil {
		params = map[string]string{}
	}
	hba := slices.Clone(st.Config.HBA)
	if hba == nil {
		hba = []string{}
	}
	return ConfigView{Version: st.Config.Version, PostgreSQL: ConfigPostgresView{Parameters: params, HBA: hba}}
}

func (a *Agent) handleConfig(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, configView(a.node.State()))
}

// configPatch is PATCH /config's body, a JSON merge patch (RFC 7396) of
// ConfigView: a parameter set to null is removed. "version", if given,
// must be the version the change was made from.
type configPatch struct {
	Version    *uint64 `json:"version"`
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
	if err := postgres.ValidateParameters(next.Parameters); err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "postgresql.parameters: " + err.Error() + "; nothing was changed"})
		return
	}
	// In synchronous mode every acknowledged commit must be on a standby of
	// the synchronous set (DESIGN): a cluster-wide synchronous_commit that
	// acknowledges before the standby has it would lose commits at the next
	// failover. (A session may still choose it for itself.)
	if sc := strings.ToLower(next.Parameters["synchronous_commit"]); a.cfg.Failover.Synchronous() && (sc == "off" || sc == "local" || sc == "false" || sc == "no" || sc == "0") {
		writeJSON(w, http.StatusBadRequest, apiError{Error: fmt.Sprintf("postgresql.parameters: \"synchronous_commit\" = %q acknowledges commits no standby holds, which synchronous mode exists to prevent; nothing was changed", next.Parameters["synchronous_commit"])})
		return
	}
	if err := postgres.ValidateHBA(next.HBA); err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "postgresql.pg_hba" + err.Error() + "; nothing was changed"})
		return
	}
	if maps.Equal(next.Parameters, st.Config.Parameters) && slices.Equal(next.HBA, st.Config.HBA) && base != 0 {
		writeJSON(w, http.StatusOK, configView(st))
		return
	}
	a.log.Info("decision", "command", "set_config", "version", base+1, "reason", "an operator changed the cluster-wide configuration")
	if err := a.node.Apply(r.Context(), consensus.SetConfig(base, next)); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, configView(a.node.State()))
}

package agent

import (
	"sort"
	"time"

	"github.com/pgha/pgha/consensus"
)

// Inputs is everything the leader's policy looks at. decide never does I/O,
// so every branch is covered by table tests with a fake clock.
type Inputs struct {
	State        consensus.State
	Observations map[string]memberView
	Now          time.Time
	Self         string   // the Raft leader making the decision
	Voters       []string // Raft's current voters
	NewClusterID string   // used if the cluster is initialised now
}

// Decision is one command for the Raft log and the reason, logged once.
type Decision struct {
	Command consensus.Command
	Reason  string
}

// decide is the leader's policy: given the committed state and the members'
// observations, which commands to commit now. Only the Raft leader calls it,
// and it only proposes: the FSM still checks every precondition on apply.
func decide(in Inputs) []Decision {
	st := in.State
	if !st.Initialized() {
		if d, ok := chooseFirstPrimary(in); ok {
			return []Decision{d}
		}
		return nil
	}
	var out []Decision
	if st.SystemID == 0 {
		if p, ok := in.Observations[st.Primary]; ok && p.reachable && p.obs.Postgres.Running && p.obs.Postgres.SystemID != 0 {
			out = append(out, Decision{
				Command: consensus.SetSystemID(p.obs.Postgres.SystemID),
				Reason:  "the first primary is up: record its PostgreSQL system identifier so no other cluster's data is ever joined",
			})
		}
	}
	return out
}

// chooseFirstPrimary picks who runs initdb (or whose existing data becomes the
// cluster) when the cluster is initialised.
//
//  1. Only members whose agents answered are candidates: an unknown data
//     directory could hold a cluster we would otherwise overwrite by cloning.
//  2. If any candidate already has a valid data directory, the one with the
//     highest LSN is adopted: never initdb beside existing data.
//  3. Otherwise the leader itself, which is certainly alive.
//
// It waits (returns false) until every Raft voter has registered and reported,
// so an existing data directory on a slow member is never missed.
func chooseFirstPrimary(in Inputs) (Decision, bool) {
	st := in.State
	if _, ok := st.Members[in.Self]; !ok {
		return Decision{}, false
	}
	for _, v := range in.Voters {
		if _, ok := st.Members[v]; !ok {
			return Decision{}, false
		}
	}
	var withData []string
	for name := range st.Members {
		o, ok := in.Observations[name]
		if !ok || !o.reachable {
			return Decision{}, false
		}
		if o.obs.DataDir == "invalid" {
			return Decision{}, false
		}
		if o.obs.DataDir == "valid" {
			withData = append(withData, name)
		}
	}
	if len(withData) > 0 {
		sort.Slice(withData, func(i, j int) bool {
			a, b := in.Observations[withData[i]].obs.Postgres, in.Observations[withData[j]].obs.Postgres
			if a.CurrentLSN != b.CurrentLSN {
				return a.CurrentLSN > b.CurrentLSN
			}
			return withData[i] < withData[j]
		})
		return Decision{
			Command: consensus.InitCluster(in.NewClusterID, withData[0]),
			Reason:  "initialise the cluster on the member that already has a PostgreSQL data directory",
		}, true
	}
	return Decision{
		Command: consensus.InitCluster(in.NewClusterID, in.Self),
		Reason:  "initialise the cluster: the Raft leader runs initdb, the others clone from it",
	}, true
}

package agent

import (
	"testing"
	"time"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
)

func members(names ...string) map[string]consensus.Member {
	out := map[string]consensus.Member{}
	for _, n := range names {
		out[n] = consensus.Member{Name: n, RaftAddr: n + ":8300", APIURL: "http://" + n + ":8008", PGHost: n, PGPort: 5432}
	}
	return out
}

var (
	t0         = time.Unix(1000, 0)
	testPolicy = Policy{Synchronous: true, MaxLagOnFailover: 1 << 20, FenceTimeout: time.Second, HealthInterval: 250 * time.Millisecond, SwitchoverTimeout: 15 * time.Second}
)

func seen(dataDir string, pg postgres.Status) memberView {
	return memberView{reachable: true, lastSeen: t0, obs: Observation{DataDir: dataDir, Postgres: pg}}
}

func TestDecideFirstPrimary(t *testing.T) {
	up := postgres.Status{Running: true, SystemID: 7}
	cases := []struct {
		name        string
		state       consensus.State
		obs         map[string]memberView
		voters      []string
		wantType    consensus.CommandType // "" = no decision
		wantPrimary string
	}{
		{
			name:     "all empty: the leader initdb's",
			state:    consensus.State{Members: members("n1", "n2", "n3")},
			obs:      map[string]memberView{"n1": seen("missing", postgres.Status{}), "n2": seen("empty", postgres.Status{}), "n3": seen("missing", postgres.Status{})},
			voters:   []string{"n1", "n2", "n3"},
			wantType: consensus.CmdInitCluster, wantPrimary: "n1",
		},
		{
			name:     "a voter not registered yet: wait",
			state:    consensus.State{Members: members("n1", "n2")},
			obs:      map[string]memberView{"n1": seen("missing", postgres.Status{}), "n2": seen("missing", postgres.Status{})},
			voters:   []string{"n1", "n2", "n3"},
			wantType: "",
		},
		{
			name:     "a member not reporting: wait (its data dir is unknown)",
			state:    consensus.State{Members: members("n1", "n2", "n3")},
			obs:      map[string]memberView{"n1": seen("missing", postgres.Status{}), "n2": seen("missing", postgres.Status{}), "n3": {reachable: false}},
			voters:   []string{"n1", "n2", "n3"},
			wantType: "",
		},
		{
			name:     "existing data on a member is adopted, never initdb beside it",
			state:    consensus.State{Members: members("n1", "n2", "n3")},
			obs:      map[string]memberView{"n1": seen("missing", postgres.Status{}), "n2": seen("missing", postgres.Status{}), "n3": seen("valid", postgres.Status{})}, // several: adopt_test.go
			voters:   []string{"n1", "n2", "n3"},
			wantType: consensus.CmdInitCluster, wantPrimary: "n3",
		},
		{
			name:     "an invalid data dir somewhere: wait for the operator",
			state:    consensus.State{Members: members("n1", "n2", "n3")},
			obs:      map[string]memberView{"n1": seen("missing", postgres.Status{}), "n2": seen("invalid", postgres.Status{}), "n3": seen("missing", postgres.Status{})},
			voters:   []string{"n1", "n2", "n3"},
			wantType: "",
		},
		{
			name:     "leader not registered itself: wait",
			state:    consensus.State{Members: members("n2", "n3")},
			obs:      map[string]memberView{"n2": seen("missing", postgres.Status{}), "n3": seen("missing", postgres.Status{})},
			voters:   []string{"n2", "n3"},
			wantType: "",
		},
		{
			name:     "initialised, primary up: record its system identifier",
			state:    consensus.State{Members: members("n1", "n2", "n3"), Primary: "n1", Epoch: 1},
			obs:      map[string]memberView{"n1": seen("valid", up)},
			voters:   []string{"n1", "n2", "n3"},
			wantType: consensus.CmdSetSystemID,
		},
		{
			name:     "initialised, primary not running yet: nothing",
			state:    consensus.State{Members: members("n1", "n2", "n3"), Primary: "n1", Epoch: 1},
			obs:      map[string]memberView{"n1": seen("valid", postgres.Status{})},
			voters:   []string{"n1", "n2", "n3"},
			wantType: "",
		},
		{
			name:     "system identifier known, sync standby streaming, no cluster-wide configuration: record the leader's",
			state:    consensus.State{Members: members("n1", "n2", "n3"), Primary: "n1", Epoch: 1, SystemID: 7, SyncStandbys: []string{"n2"}},
			obs:      map[string]memberView{"n1": seen("valid", up), "n2": seen("valid", postgres.Status{Running: true, InRecovery: true, Streaming: true})},
			voters:   []string{"n1", "n2", "n3"},
			wantType: consensus.CmdSetConfig,
		},
		{
			name:     "system identifier known, sync standby streaming, configuration recorded: nothing",
			state:    consensus.State{Members: members("n1", "n2", "n3"), Primary: "n1", Epoch: 1, SystemID: 7, SyncStandbys: []string{"n2"}, Config: consensus.ClusterConfig{Version: 1}},
			obs:      map[string]memberView{"n1": seen("valid", up), "n2": seen("valid", postgres.Status{Running: true, InRecovery: true, Streaming: true})},
			voters:   []string{"n1", "n2", "n3"},
			wantType: "",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := decide(Inputs{State: c.state, Observations: c.obs, Now: time.Unix(1000, 0), Self: "n1", Voters: c.voters, NewClusterID: "cid", Policy: testPolicy}).Decisions
			if c.wantType == "" {
				if len(got) != 0 {
					t.Fatalf("want no decision, got %+v", got)
				}
				return
			}
			if len(got) != 1 || got[0].Command.Type != c.wantType {
				t.Fatalf("want one %s, got %+v", c.wantType, got)
			}
			if got[0].Reason == "" {
				t.Error("decision without a reason")
			}
			switch d := got[0].Command.Data.(type) {
			case consensus.InitClusterData:
				if d.Primary != c.wantPrimary || d.ClusterID != "cid" {
					t.Errorf("init %+v, want primary %s cluster cid", d, c.wantPrimary)
				}
			case consensus.SetSystemIDData:
				if d.SystemID != 7 {
					t.Errorf("system id %d, want 7", d.SystemID)
				}
			}
		})
	}
}

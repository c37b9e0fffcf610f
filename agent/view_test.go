package agent

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
)

func TestBuildView(t *testing.T) {
	st := consensus.State{ClusterID: "c1", SystemID: 12345678901234567890, Members: members("n1", "n2", "n3"), Primary: "n1", Epoch: 3, SyncStandbys: []string{"n2"}}
	obs := map[string]memberView{
		"n1": {reachable: true, obs: Observation{RaftState: "leader", Postgres: postgres.Status{Running: true, Timeline: 2, CurrentLSN: 1000}}},
		"n2": {reachable: true, obs: Observation{RaftState: "follower", Postgres: postgres.Status{Running: true, InRecovery: true, Streaming: true, Timeline: 2, ReplayedLSN: 900, ReceivedLSN: 950}}},
		"n3": {reachable: false, err: "connection refused"},
	}
	v := buildView("main", "n1", st, obs)
	if v.Epoch != 3 || v.SystemID != "12345678901234567890" || v.RaftLeader != "n1" {
		t.Fatalf("header wrong: %+v", v)
	}
	byName := map[string]MemberStatus{}
	for _, m := range v.Members {
		byName[m.Name] = m
	}
	want := []struct {
		name, role, state, lag string
	}{
		{"n1", "leader", "running", ""},
		{"n2", "sync_standby", "streaming", "100"},
		{"n3", "replica", "unknown", "unknown"},
	}
	for _, w := range want {
		m := byName[w.name]
		if m.Role != w.role || m.State != w.state || m.Lag.String() != w.lag {
			t.Errorf("%s: role %s state %s lag %q; want %s %s %q", w.name, m.Role, m.State, m.Lag.String(), w.role, w.state, w.lag)
		}
	}
	if !strings.Contains(byName["n3"].Problem, "unreachable") {
		t.Errorf("n3 problem %q should say the agent is unreachable", byName["n3"].Problem)
	}
	// Patroni's shape: lag is a number or "unknown"; it round-trips.
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"lag":100`) || !strings.Contains(string(b), `"lag":"unknown"`) {
		t.Errorf("lag not in Patroni's form: %s", b)
	}
	var back ClusterView
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Members) != 3 || back.Members[1].Lag.Bytes != 100 || !back.Members[2].Lag.Unknown {
		t.Errorf("round trip lost lag: %+v", back.Members)
	}
}

func TestStateOf(t *testing.T) {
	cases := []struct {
		v         memberView
		isPrimary bool
		want      string
	}{
		{memberView{}, false, "unknown"},
		{memberView{reachable: true, obs: Observation{Activity: "cloning"}}, false, "cloning"},
		{memberView{reachable: true}, false, "stopped"},
		{memberView{reachable: true, obs: Observation{Postgres: postgres.Status{Running: true}}}, true, "running"},
		{memberView{reachable: true, obs: Observation{Postgres: postgres.Status{Running: true, InRecovery: true, Streaming: true}}}, false, "streaming"},
		{memberView{reachable: true, obs: Observation{Postgres: postgres.Status{Running: true, InRecovery: true}}}, false, "in archive recovery"},
		{memberView{reachable: true, obs: Observation{Postgres: postgres.Status{Running: true, InRecovery: true}}}, true, "starting"},
	}
	for i, c := range cases {
		if got := stateOf(c.v, c.isPrimary); got != c.want {
			t.Errorf("case %d: %q, want %q", i, got, c.want)
		}
	}
}

func TestHealthRules(t *testing.T) {
	st := consensus.State{Members: members("n1", "n2", "n3"), Primary: "n1", Epoch: 2, SyncStandbys: []string{"n2"}}
	primaryUp := postgres.Status{Running: true}
	primarySync := postgres.Status{Running: true, SyncStandbyNames: `ANY 1 ("n2")`}
	standbyUp := postgres.Status{Running: true, InRecovery: true, Streaming: true, UpstreamHost: "n1", UpstreamPort: 5432}
	standbyNotStreaming := postgres.Status{Running: true, InRecovery: true}
	standbyElsewhere := postgres.Status{Running: true, InRecovery: true, Streaming: true, UpstreamHost: "n3", UpstreamPort: 5432}
	cases := []struct {
		name              string
		h                 localHealth
		primaryOK, replOK bool
	}{
		{"committed primary, running", localHealth{name: "n1", st: st, pg: primaryUp}, true, false},
		{"committed primary, postmaster dead", localHealth{name: "n1", st: st, pg: postgres.Status{}}, false, false},
		{"committed primary, fenced", localHealth{name: "n1", st: st, pg: primaryUp, fenced: true}, false, false},
		{"committed primary, still in recovery", localHealth{name: "n1", st: st, pg: standbyUp}, false, false},
		{"writable but not the committed primary", localHealth{name: "n2", st: st, pg: primaryUp}, false, false},
		{"standby", localHealth{name: "n2", st: st, pg: standbyUp}, false, true},
		{"standby down", localHealth{name: "n2", st: st}, false, false},
		{"standby not streaming", localHealth{name: "n2", st: st, pg: standbyNotStreaming}, false, false},
		{"standby streaming from another server", localHealth{name: "n2", st: st, pg: standbyElsewhere}, false, false},
		{"standby diverged from the primary's timeline", localHealth{name: "n2", st: st, pg: standbyUp, diverged: "its WAL went past the fork"}, false, false},
		{"synchronous: primary naming the set", localHealth{name: "n1", st: st, pg: primarySync, synchronous: true}, true, false},
		{"synchronous: primary naming nobody", localHealth{name: "n1", st: st, pg: primaryUp, synchronous: true}, false, false},
		{"synchronous: primary naming a standby outside the set", localHealth{name: "n1", st: st, pg: postgres.Status{Running: true, SyncStandbyNames: "n3"}, synchronous: true}, false, false},
		{"synchronous: primary naming any standby", localHealth{name: "n1", st: st, pg: postgres.Status{Running: true, SyncStandbyNames: "*"}, synchronous: true}, false, false},
	}
	for _, c := range cases {
		if got := c.h.primaryOK(); got != c.primaryOK {
			t.Errorf("%s: primaryOK %v, want %v", c.name, got, c.primaryOK)
		}
		if got := c.h.replicaOK(); got != c.replOK {
			t.Errorf("%s: replicaOK %v, want %v", c.name, got, c.replOK)
		}
	}
}

// /cluster shows, per member, the data directories its re-clones replaced
// and kept aside, as that member's agent reported them.
func TestBuildViewKeptDataDirs(t *testing.T) {
	st := consensus.State{Members: members("n1", "n2"), Primary: "n1", Epoch: 2}
	kept := []string{"/pg/data.pgha-replaced-20240501T120000Z"}
	obs := map[string]memberView{
		"n1": {reachable: true, obs: Observation{Postgres: postgres.Status{Running: true}}},
		"n2": {reachable: true, obs: Observation{KeptDataDirs: kept, Postgres: postgres.Status{Running: true, InRecovery: true}}},
	}
	b, err := json.Marshal(buildView("main", "n1", st, obs))
	if err != nil {
		t.Fatal(err)
	}
	var v ClusterView
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	if got := v.Members[1].KeptDataDirs; v.Members[1].Name != "n2" || len(got) != 1 || got[0] != kept[0] {
		t.Errorf("n2 kept data dirs in /cluster: %v; want %v (%s)", got, kept, b)
	}
	if v.Members[0].KeptDataDirs != nil || strings.Contains(string(b), `"kept_data_dirs":null`) {
		t.Errorf("n1 keeps nothing; /cluster says %s", b)
	}
}

// The agent's observation lists the kept copies beside its data directory.
func TestKeptDataDirsObserved(t *testing.T) {
	dir := t.TempDir()
	dataDir := dir + "/data"
	for _, d := range []string{dataDir, dataDir + ".pgha-replaced-20240501T120000Z", dataDir + ".pgha-replaced-20240502T120000Z", dataDir + ".pgha-old", dir + "/other.pgha-replaced-20240501T120000Z"} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	a := &Agent{cfg: &Config{}}
	a.cfg.Postgres.DataDir = dataDir
	got := a.keptDataDirs()
	want := []string{dataDir + ".pgha-replaced-20240501T120000Z", dataDir + ".pgha-replaced-20240502T120000Z"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("kept data dirs %v; want %v", got, want)
	}
}

package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
)

// Adopting existing data. When the cluster is initialised, members may
// already hold data directories: a stopped cluster brought under pgha, or
// Raft state lost. The first primary must be the member whose WAL holds
// every other member's, or the others' newer commits are rewound away. A
// stopped server reports no LSN through SQL, so each agent reports where
// its data directory's WAL really ends (Observation.DataDirWAL) while the
// cluster is not initialised, and chooseFirstPrimary compares them.

// firstPrimaryPlan is decide's answer while the cluster is not initialised.
func firstPrimaryPlan(in Inputs) Plan {
	d, waiting, ok := chooseFirstPrimary(in)
	if !ok {
		return Plan{Waiting: waiting}
	}
	return Plan{Decisions: []Decision{d}}
}

// chooseFirstPrimary picks who runs initdb (or whose existing data becomes the
// cluster) when the cluster is initialised, or says why it waits.
//
//  1. It waits until every Raft voter has registered and every member has
//     reported, so an existing data directory on a slow member is never
//     missed; and while a member's data directory is invalid (the operator
//     must fix it). Only members whose agents answered are candidates: an
//     unknown data directory could hold a cluster we would otherwise
//     overwrite by cloning.
//  2. No member has data: the leader itself runs initdb (it is certainly
//     alive).
//  3. One member has data: it is adopted, never initdb beside it.
//  4. Several have data: each must have reported where its WAL ends. They
//     must be one database system (system identifier); a member running
//     writable comes first (it acknowledges commits now: adopting another
//     would discard them), then the highest timeline, then the most WAL,
//     then the name.
//  5. That member is adopted only if its WAL holds every other member's
//     (walContains). Otherwise their histories diverged, or two run
//     writable: no choice is safe, and it waits with what the operator
//     must do. Moving the unwanted data directories aside is that choice:
//     those members then have no data and are cloned.
func chooseFirstPrimary(in Inputs) (Decision, string, bool) {
	st := in.State
	if _, ok := st.Members[in.Self]; !ok {
		return Decision{}, "waiting for this leader to register as a member before choosing the first primary", false
	}
	for _, v := range in.Voters {
		if _, ok := st.Members[v]; !ok {
			return Decision{}, fmt.Sprintf("waiting for every member to register and report before choosing the first primary (%s has not registered)", v), false
		}
	}
	var withData []string
	for _, name := range sortedMembers(st) {
		o, ok := in.Observations[name]
		if !ok || !o.reachable {
			return Decision{}, fmt.Sprintf("waiting for every member to register and report before choosing the first primary (%s does not report)", name), false
		}
		switch o.obs.DataDir {
		case "invalid":
			return Decision{}, fmt.Sprintf("%s's postgres.data_dir is not empty and not a PostgreSQL data directory: move it away or fix postgres.data_dir before the cluster is initialised", name), false
		case "valid":
			withData = append(withData, name)
		}
	}
	switch len(withData) {
	case 0:
		return Decision{
			Command: consensus.InitCluster(in.NewClusterID, in.Self),
			Reason:  "initialise the cluster: the Raft leader runs initdb, the others clone from it",
		}, "", true
	case 1:
		return Decision{
			Command: consensus.InitCluster(in.NewClusterID, withData[0]),
			Reason:  fmt.Sprintf("initialise the cluster on %s, the only member that already has a PostgreSQL data directory", withData[0]),
		}, "", true
	}
	const choose = "; pgha will not choose which data to keep. Decide which member's data directory to keep and move the others' data directories aside (pgha never deletes them; keep them until you are sure): those members are then cloned from the one you kept"
	wal := map[string]postgres.DataDirWAL{}
	for _, name := range withData {
		o := in.Observations[name].obs
		if o.DataDirWAL == nil {
			why := ""
			if o.DataDirWALError != "" {
				why = ": " + o.DataDirWALError
			}
			return Decision{}, fmt.Sprintf("%s hold data directories; waiting for %s to report where its WAL ends, to adopt the newest%s", strings.Join(withData, ", "), name, why), false
		}
		wal[name] = *o.DataDirWAL
	}
	for _, name := range withData[1:] {
		if a, b := wal[withData[0]].SystemID, wal[name].SystemID; a != b {
			return Decision{}, fmt.Sprintf("%s and %s hold different database systems (system identifiers %d and %d)%s", withData[0], name, a, b, choose), false
		}
	}
	writable := func(name string) bool {
		pg := in.Observations[name].obs.Postgres
		return pg.Running && !pg.InRecovery
	}
	sort.SliceStable(withData, func(i, j int) bool {
		a, b := withData[i], withData[j]
		if writable(a) != writable(b) {
			return writable(a)
		}
		ea, eb := wal[a].End, wal[b].End
		if ea.Timeline != eb.Timeline {
			return ea.Timeline > eb.Timeline
		}
		return ea.LSN > eb.LSN // then the name: withData is sorted
	})
	best := withData[0]
	var held []string
	for _, name := range withData[1:] {
		if writable(name) {
			return Decision{}, fmt.Sprintf("%s and %s both run writable PostgreSQL servers and both may have acknowledged commits the other lacks%s", best, name, choose), false
		}
		// A standby streaming the writable member's own timeline holds
		// nothing it lacks: its observation may just be newer.
		streamsBest := writable(best) && in.Observations[name].obs.Postgres.Running &&
			wal[name].End.Timeline == wal[best].End.Timeline && slices.Equal(wal[name].History, wal[best].History)
		if why := walContains(wal[best], wal[name]); why != "" && !streamsBest {
			return Decision{}, fmt.Sprintf("%s's WAL (%s) holds the most but not all of %s's (%s): %s%s", best, wal[best].End, name, wal[name].End, why, choose), false
		}
		held = append(held, fmt.Sprintf("%s's %s", name, wal[name].End))
	}
	return Decision{
		Command: consensus.InitCluster(in.NewClusterID, best),
		Reason:  fmt.Sprintf("initialise the cluster on %s's data directory: its WAL (%s) holds every other member's (%s)", best, wal[best].End, strings.Join(held, ", ")),
	}, "", true
}

func sortedMembers(st consensus.State) []string {
	names := make([]string, 0, len(st.Members))
	for name := range st.Members {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// walContains says why a's WAL does not hold all of b's, or "" if it does:
// b ends on a's timeline at or before a's end, or on an ancestor of a's
// timeline at or before the point where a's history left it. The histories
// must agree as far as b's goes: a timeline ID chosen on two servers apart
// (a split brain, Raft state lost) can name two different branches.
func walContains(a, b postgres.DataDirWAL) string {
	at, bt := a.End.Timeline, b.End.Timeline
	if at > 1 && len(a.History) == 0 || bt > 1 && len(b.History) == 0 {
		return "a timeline's history is unknown, so the two cannot be ordered"
	}
	switch {
	case bt > at:
		return fmt.Sprintf("its timeline %d is newer", bt)
	case bt == at:
		if !slices.Equal(a.History, b.History) {
			return fmt.Sprintf("both are on timeline %d but it branched off at different points (%v and %v): two servers were promoted apart", at, a.History, b.History)
		}
		if b.End.LSN > a.End.LSN {
			return fmt.Sprintf("its WAL goes further on timeline %d", bt)
		}
		return ""
	}
	k := len(b.History)
	if k >= len(a.History) || !slices.Equal(a.History[:k], b.History) || a.History[k].Timeline != bt {
		return fmt.Sprintf("timeline %d (history %v) is not an ancestor of timeline %d (history %v)", bt, b.History, at, a.History)
	}
	if sw := a.History[k].Switch; b.End.LSN > sw {
		return fmt.Sprintf("timeline %d left timeline %d at %s and the other's WAL goes past that point, so each holds commits the other lacks", at, bt, sw)
	}
	return ""
}

// adoptionWAL is what this agent reports in Observation.DataDirWAL: only
// while the cluster is not initialised (nothing else reads it) and the data
// directory is valid. A running server reports its current position; a
// stopped one, what postgres.StoppedWAL reads, cached until pg_control or
// pg_wal change (it runs pg_waldump).
func (a *Agent) adoptionWAL(ctx context.Context, pg postgres.Status, dds postgres.DataDirState) (*postgres.DataDirWAL, string) {
	if a.node.State().Initialized() || dds != postgres.DataDirValid {
		return nil, ""
	}
	if pg.Running {
		a.stoppedWAL.forget()
		w := postgres.DataDirWAL{SystemID: pg.SystemID, Running: true, End: postgres.WALPosition{Timeline: pg.Timeline, LSN: pg.CurrentLSN}}
		if pg.InRecovery {
			w.End.LSN = max(pg.ReceivedLSN, pg.ReplayedLSN)
			if pos, err := a.inst.StandbyWALEnd(ctx); err == nil {
				w.End = pos
			}
		}
		h, err := a.inst.TimelineHistory(w.End.Timeline)
		if err != nil {
			return nil, err.Error()
		}
		w.History = h
		return &w, ""
	}
	return a.stoppedWAL.get(ctx, a.cfg.Postgres.DataDir, a.inst.StoppedWAL)
}

// stoppedWALCache remembers StoppedWAL for as long as the data directory's
// pg_control and pg_wal stay as they were.
type stoppedWALCache struct {
	mu  sync.Mutex
	key string
	wal *postgres.DataDirWAL
	err string
}

func (c *stoppedWALCache) forget() {
	c.mu.Lock()
	c.key = ""
	c.mu.Unlock()
}

func (c *stoppedWALCache) get(ctx context.Context, dataDir string, read func(context.Context) (postgres.DataDirWAL, error)) (*postgres.DataDirWAL, string) {
	key := ""
	for _, p := range []string{filepath.Join(dataDir, "global", "pg_control"), filepath.Join(dataDir, "pg_wal")} {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, err.Error()
		}
		key += fmt.Sprintf("%s:%d:%d;", p, fi.ModTime().UnixNano(), fi.Size())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if key == c.key {
		return c.wal, c.err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	w, err := read(ctx)
	if err != nil {
		if ctx.Err() == nil {
			c.key, c.wal, c.err = key, nil, err.Error()
		}
		return nil, err.Error()
	}
	c.key, c.wal, c.err = key, &w, ""
	return c.wal, ""
}

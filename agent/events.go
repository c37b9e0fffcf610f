package agent

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pgha/pgha/consensus"
)

// The status page's event timeline has two sources:
//
//  1. The replicated history (State.History): every committed promotion,
//     with its epoch, timeline, kind and reason. Every agent has it, and it
//     survives restarts.
//  2. What this agent saw change between two of its observation rounds:
//     a member fenced or unfenced, the VIP moving, a rewind or a clone, its
//     PostgreSQL stopping or starting, its agent going silent, a new Raft
//     leader. These facts are not in Raft (fencing and the VIP happen
//     precisely when Raft may not be reachable), so each agent keeps its
//     own, in memory, bounded, since it started.

// Event is one entry of the status page's timeline.
type Event struct {
	At       time.Time `json:"at"`
	Kind     string    `json:"kind"` // failover, switchover, forced failover (history); fenced, vip, rewind, clone, ... (observed)
	Member   string    `json:"member,omitempty"`
	Text     string    `json:"text"`
	Epoch    uint64    `json:"epoch,omitempty"`
	Timeline uint32    `json:"timeline,omitempty"`
	// Source is "history" (committed in Raft) or "observed" (by the agent
	// that serves the page).
	Source string `json:"source"`
}

// maxObservedEvents bounds the events an agent remembers: a member that
// flaps for hours must not grow the agent's memory.
const maxObservedEvents = 200

// memberFacts is what the timeline compares for one member between two
// observation rounds.
type memberFacts struct {
	reachable, fenced, vip, running bool
	activity, rejoin                string
}

// clusterFacts is one observation round as the timeline sees it.
type clusterFacts struct {
	raftLeader string
	term       uint64
	members    map[string]memberFacts
}

func factsOf(raftLeader string, term uint64, obs map[string]memberView) clusterFacts {
	f := clusterFacts{raftLeader: raftLeader, term: term, members: make(map[string]memberFacts, len(obs))}
	for name, v := range obs {
		f.members[name] = memberFacts{
			reachable: v.reachable,
			fenced:    v.reachable && v.obs.Fenced,
			vip:       v.reachable && v.obs.VIPHeld,
			running:   v.obs.Postgres.Running,
			activity:  v.obs.Activity,
			rejoin:    v.obs.LastRejoin,
		}
	}
	return f
}

// observedChanges lists what changed from prev to cur, in a stable order.
// Only members in both rounds are compared: a member joining or leaving
// is not a change of its state.
func observedChanges(at time.Time, prev, cur clusterFacts) []Event {
	var out []Event
	add := func(kind, member, format string, args ...any) {
		out = append(out, Event{At: at, Kind: kind, Member: member, Text: fmt.Sprintf(format, args...), Source: "observed"})
	}
	if cur.raftLeader != "" && cur.raftLeader != prev.raftLeader {
		add("raft_leader", cur.raftLeader, "%s is the Raft leader (term %d)", cur.raftLeader, cur.term)
	}
	names := make([]string, 0, len(cur.members))
	for name := range cur.members {
		names = append(names, name)
	}
	sort.Strings(names)
	var vipBefore, vipNow []string
	for _, name := range names {
		c := cur.members[name]
		p, ok := prev.members[name]
		if !ok {
			continue
		}
		if p.vip {
			vipBefore = append(vipBefore, name)
		}
		if c.vip {
			vipNow = append(vipNow, name)
		}
		switch {
		case p.reachable && !c.reachable:
			add("unreachable", name, "%s's agent stopped answering", name)
			continue // nothing else about it is known now
		case !p.reachable && c.reachable:
			add("reachable", name, "%s's agent answers again", name)
		}
		if !c.reachable || !p.reachable {
			continue
		}
		switch {
		case !p.fenced && c.fenced:
			add("fenced", name, "%s fenced: it holds no lease from the Raft leader, so its PostgreSQL may not be writable", name)
		case p.fenced && !c.fenced:
			add("unfenced", name, "%s no longer fenced", name)
		}
		switch {
		case p.running && !c.running:
			add("postgres_stopped", name, "%s's PostgreSQL stopped", name)
		case !p.running && c.running:
			add("postgres_started", name, "%s's PostgreSQL started", name)
		}
		if c.activity != p.activity {
			switch c.activity {
			case "rewinding":
				add("rewind", name, "%s rewinding (pg_rewind) onto the new timeline", name)
			case "cloning":
				add("clone", name, "%s cloning (pg_basebackup)", name)
			}
		}
		if c.rejoin != p.rejoin && c.rejoin != "" {
			add("rejoin", name, "%s rejoined as a standby by %s", name, c.rejoin)
		}
	}
	if !slices.Equal(vipBefore, vipNow) {
		if len(vipNow) == 0 {
			add("vip", "", "no member holds the VIP (it was on %s)", strings.Join(vipBefore, ", "))
		} else {
			add("vip", strings.Join(vipNow, ","), "VIP on %s", strings.Join(vipNow, ", "))
		}
	}
	return out
}

// eventLog is this agent's observed events. The observe loop records
// (observe); REST handlers read (recent). Its zero value is ready to use.
type eventLog struct {
	mu     sync.Mutex
	prev   *clusterFacts
	events []Event // oldest first, at most maxObservedEvents
}

// observe compares this round with the last and keeps what changed. The
// first round only sets the baseline.
func (l *eventLog) observe(at time.Time, cur clusterFacts) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.prev != nil {
		l.events = append(l.events, observedChanges(at, *l.prev, cur)...)
		if over := len(l.events) - maxObservedEvents; over > 0 {
			l.events = slices.Delete(l.events, 0, over)
		}
	}
	l.prev = &cur
}

func (l *eventLog) recent() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events)
}

// timeline merges the committed promotions with the observed events,
// newest first, at most limit of them.
func timeline(history []consensus.Promotion, observed []Event, limit int) []Event {
	out := slices.Clone(observed)
	for _, p := range history {
		e := Event{At: p.At, Kind: p.Kind, Member: p.Primary, Epoch: p.Epoch, Timeline: p.Timeline, Source: "history"}
		if e.Kind == "" {
			e.Kind = "promotion"
		}
		e.Text = fmt.Sprintf("%s promoted (%s), epoch %d", p.Primary, e.Kind, p.Epoch)
		if p.From != "" && p.From != p.Primary {
			e.Text = fmt.Sprintf("%s: %s → %s, epoch %d", e.Kind, p.From, p.Primary, p.Epoch)
		}
		if p.Timeline != 0 {
			e.Text += fmt.Sprintf(", timeline %d", p.Timeline)
		}
		if p.Reason != "" {
			e.Text += ": " + p.Reason
		}
		out = append(out, e)
	}
	// Stable: events of one round keep their order; the newest first.
	slices.SortStableFunc(out, func(a, b Event) int { return b.At.Compare(a.At) })
	if len(out) > limit {
		out = out[:limit]
	}
	return out
}

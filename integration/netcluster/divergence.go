package netcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgha/pgha/postgres"
)

// Divergence: which standbys hold WAL off the primary's history (DESIGN
// "Rewind before rejoin": such a standby gets no reads and no 200). The
// harness judges it itself, from positions, not from the agents' opinion:
//
//  1. Every round (DivergenceProber's interval), each host's PostgreSQL is
//     asked over its unix socket, on sessions kept open: a primary for its
//     timeline (the name of its current WAL file); a standby first for its
//     replayed LSN, then, over a replication session, IDENTIFY_SYSTEM for
//     the timeline that replay is on. Asked in that order, the LSN lies on
//     that timeline or an older one, never a newer.
//  2. The round's reference is the writable server on the newest timeline;
//     its history is its timeline history file, read from its pg_wal.
//  3. A standby is off the reference's history if its timeline is not in
//     it, or if it replayed past the point where the reference's history
//     left its timeline (offHistory). A standby merely behind is not.
//
// Off-history is sticky while the server runs: its WAL only grows, and
// PostgreSQL lets it switch only to a timeline that branched after its
// position. A restart (pg_rewind, a re-clone) breaks the sessions, so a
// failed round separates one spell of divergence from the next. A /replica
// answer or a read served between two diverged samples of one spell was
// therefore served by a diverged standby (see Served).

// Position is one round's observation of one host.
type Position struct {
	Start, End time.Time // when the questions were sent, when the last answer came
	// OK: the host answered and the round had a reference primary.
	OK bool
	// Diverged: a standby off the reference's history; Why says how.
	Diverged bool
	Why      string
	// Session counts the host's probe sessions: samples of one spell share it.
	Session int
}

// hostWAL is what one host answered in one round.
type hostWAL struct {
	ok         bool
	inRecovery bool
	pos        postgres.WALPosition // replayed (standby) or current (primary)
	history    []postgres.TimelineSwitch
}

// DivergenceProber samples every host's WAL position; its goroutine is
// owned by it (Stop). Positions may be read at any time.
type DivergenceProber struct {
	c        *Cluster
	interval time.Duration

	mu  sync.Mutex
	pos map[string][]Position

	loops loops
}

// StartDivergenceProber samples every interval (250ms if 0).
func (c *Cluster) StartDivergenceProber(interval time.Duration) *DivergenceProber {
	if interval == 0 {
		interval = 250 * time.Millisecond
	}
	p := &DivergenceProber{c: c, interval: interval, pos: map[string][]Position{}, loops: newLoops()}
	p.loops.run(p.run)
	return p
}

// Stop ends sampling and waits.
func (p *DivergenceProber) Stop() { p.loops.stop() }

// walSessions are one host's probe sessions.
type walSessions struct {
	sql   *pgx.Conn
	repl  *pgconn.PgConn
	count int // sessions opened so far
}

func (s *walSessions) close() {
	if s.sql != nil {
		s.sql.Close(context.Background())
		s.sql = nil
	}
	if s.repl != nil {
		s.repl.Close(context.Background())
		s.repl = nil
	}
}

func (p *DivergenceProber) run(ctx context.Context) {
	sessions := map[string]*walSessions{}
	for _, h := range p.c.Hosts {
		sessions[h.Name] = &walSessions{}
	}
	defer func() {
		for _, s := range sessions {
			s.close()
		}
	}()
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		obs := make([]hostWAL, len(p.c.Hosts))
		var wg sync.WaitGroup
		for i, h := range p.c.Hosts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				obs[i] = p.observe(ctx, h, sessions[h.Name])
			}()
		}
		wg.Wait()
		end := time.Now()
		if ctx.Err() != nil {
			return
		}
		ref := -1
		for i, o := range obs {
			if o.ok && !o.inRecovery && (ref < 0 || o.pos.Timeline > obs[ref].pos.Timeline) {
				ref = i
			}
		}
		p.mu.Lock()
		for i, h := range p.c.Hosts {
			s := Position{Start: start, End: end, Session: sessions[h.Name].count}
			o := obs[i]
			if o.ok && ref >= 0 {
				s.OK = true
				if o.inRecovery {
					s.Why = offHistory(obs[ref].pos.Timeline, obs[ref].history, o.pos)
					s.Diverged = s.Why != ""
					if s.Diverged {
						s.Why = fmt.Sprintf("%s (primary %s on timeline %d)", s.Why, p.c.Hosts[ref].Name, obs[ref].pos.Timeline)
					}
				}
			}
			p.pos[h.Name] = append(p.pos[h.Name], s)
		}
		p.mu.Unlock()
	}
}

// observe asks one host; any failure closes its sessions, so the next
// answer starts a new spell.
func (p *DivergenceProber) observe(ctx context.Context, h *Host, s *walSessions) hostWAL {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	o, err := p.ask(ctx, h, s)
	if err != nil {
		s.close()
		return hostWAL{}
	}
	return o
}

func (p *DivergenceProber) ask(ctx context.Context, h *Host, s *walSessions) (hostWAL, error) {
	if s.sql == nil || s.repl == nil {
		s.close()
		s.count++
		var err error
		if s.sql, err = p.c.SocketConn(ctx, h, time.Second); err != nil {
			return hostWAL{}, err
		}
		if s.repl, err = pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%d user=%s replication=true application_name=%s", h.SocketDir, PGPort, User, ProbeApplicationName)); err != nil {
			return hostWAL{}, err
		}
	}
	var o hostWAL
	var lsn, walfile *string
	err := s.sql.QueryRow(ctx, `SELECT pg_is_in_recovery(),
		CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text ELSE pg_current_wal_lsn()::text END,
		CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END`).Scan(&o.inRecovery, &lsn, &walfile)
	if err != nil {
		return o, err
	}
	if lsn == nil {
		return o, errors.New("no replayed position yet")
	}
	if o.pos.LSN, err = postgres.ParseLSN(*lsn); err != nil {
		return o, err
	}
	if !o.inRecovery {
		if walfile == nil || len(*walfile) < 8 {
			return o, errors.New("no current WAL file")
		}
		tli, err := strconv.ParseUint((*walfile)[:8], 16, 32)
		if err != nil {
			return o, err
		}
		o.pos.Timeline = uint32(tli)
		if tli > 1 {
			b, err := os.ReadFile(filepath.Join(h.PGData, "pg_wal", fmt.Sprintf("%08X.history", tli)))
			if err != nil {
				return o, err
			}
			if o.history, err = postgres.ParseTimelineHistory(string(b)); err != nil {
				return o, err
			}
		}
		o.ok = true
		return o, nil
	}
	res, err := s.repl.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll()
	if err != nil {
		return o, err
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) < 2 {
		return o, errors.New("IDENTIFY_SYSTEM: unexpected answer")
	}
	tli, err := strconv.ParseUint(string(res[0].Rows[0][1]), 10, 32)
	if err != nil {
		return o, err
	}
	o.pos.Timeline = uint32(tli)
	o.ok = true
	return o, nil
}

// offHistory says why WAL reaching pos is not on the history of timeline
// tli (hist: its history file's switch points), or "" if it is (the same
// timeline, or an ancestor reached no further than where tli's history
// left it). Written here rather than borrowed from the agent, so that a
// mistake in the agent's judgement is not shared by its judge.
func offHistory(tli uint32, hist []postgres.TimelineSwitch, pos postgres.WALPosition) string {
	if pos.Timeline == tli {
		return ""
	}
	for _, s := range hist {
		if s.Timeline == pos.Timeline {
			if pos.LSN <= s.Switch {
				return ""
			}
			return fmt.Sprintf("replayed to %s, past %s where the primary's history left timeline %d", pos, s.Switch, pos.Timeline)
		}
	}
	return fmt.Sprintf("replayed to %s, a timeline not in the primary's history", pos)
}

// Positions returns a copy of every host's samples, in time order.
func (p *DivergenceProber) Positions() map[string][]Position {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string][]Position{}
	for h, s := range p.pos {
		out[h] = append([]Position(nil), s...)
	}
	return out
}

// Summary counts, per host, the samples answered and those diverged.
func (p *DivergenceProber) Summary() string {
	pos := p.Positions()
	var b []byte
	for _, h := range p.c.Hosts {
		ok, div := 0, 0
		for _, s := range pos[h.Name] {
			if s.OK {
				ok++
			}
			if s.OK && s.Diverged {
				div++
			}
		}
		b = fmt.Appendf(b, "%s: %d of %d WAL samples answered, %d diverged; ", h.Name, ok, len(pos[h.Name]), div)
	}
	return string(b)
}

// Served is one time a host served: a /replica answer of 200 or a read
// through the router's read-only port, between Start and End.
type Served struct {
	Host       string
	What       string // "/replica 200" or "read"
	Start, End time.Time
}

// DivergedServe is an event served by a diverged standby.
type DivergedServe struct {
	Served
	Why string
}

func (d DivergedServe) String() string {
	return fmt.Sprintf("%s: %s at %s while %s", d.Host, d.What, d.Start.Format("15:04:05.000"), d.Why)
}

// DivergedServing returns the events of served that happened while their
// host was off the primary's history: a diverged sample of the host ended
// before the event began, one started after it ended, both of one session
// and every sample between them diverged (see the comment at the top).
func DivergedServing(positions map[string][]Position, served []Served) []DivergedServe {
	var out []DivergedServe
	for _, e := range served {
		ps := positions[e.Host]
		before := -1
		for i, s := range ps {
			if !s.End.After(e.Start) {
				before = i
			}
		}
		if before < 0 || !ps[before].OK || !ps[before].Diverged {
			continue
		}
		for i := before + 1; i < len(ps); i++ {
			s := ps[i]
			if !s.OK || !s.Diverged || s.Session != ps[before].Session {
				break
			}
			if !s.Start.Before(e.End) {
				out = append(out, DivergedServe{Served: e, Why: ps[before].Why})
				break
			}
		}
	}
	return out
}

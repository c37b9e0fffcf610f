package postgres

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// TimelineSwitch is one line of a timeline history file: Timeline ended at
// Switch, where the next timeline of the history began.
type TimelineSwitch struct {
	Timeline uint32 `json:"timeline"`
	Switch   LSN    `json:"switch"`
}

// WALPosition is a point of the WAL on one timeline.
type WALPosition struct {
	Timeline uint32 `json:"timeline"`
	LSN      LSN    `json:"lsn"`
}

func (p WALPosition) String() string { return fmt.Sprintf("%s on timeline %d", p.LSN, p.Timeline) }

// ParseTimelineHistory parses a timeline history file (pg_wal/0000000N.history):
// one "parent-timeline<TAB>switch-LSN<TAB>reason" line per ancestor of
// timeline N, oldest first; blank lines and '#' comments are skipped, as
// PostgreSQL's readTimeLineHistory does.
func ParseTimelineHistory(s string) ([]TimelineSwitch, error) {
	var out []TimelineSwitch
	sc := bufio.NewScanner(strings.NewReader(s))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			return nil, fmt.Errorf("timeline history line %d %q: want a timeline and a switch LSN", n, line)
		}
		tli, err := strconv.ParseUint(f[0], 10, 32)
		if err != nil || tli == 0 {
			return nil, fmt.Errorf("timeline history line %d %q: bad timeline %q", n, line, f[0])
		}
		lsn, err := ParseLSN(f[1])
		if err != nil {
			return nil, fmt.Errorf("timeline history line %d %q: %w", n, line, err)
		}
		if len(out) > 0 && (uint32(tli) <= out[len(out)-1].Timeline || lsn < out[len(out)-1].Switch) {
			return nil, fmt.Errorf("timeline history line %d %q: timelines must increase and switch points must not go back", n, line)
		}
		out = append(out, TimelineSwitch{Timeline: uint32(tli), Switch: lsn})
	}
	return out, sc.Err()
}

// ForkedOff says why WAL that reaches pos cannot be followed by a standby of
// a server on timeline tli whose history is hist (ParseTimelineHistory of
// its history file; empty for timeline 1), or "" if it can or if that is
// unknown.
//
// A standby follows a newer timeline only if its own WAL stops at or before
// the point where that timeline's history left the standby's timeline.
// Past it (it received WAL the promoted server never had), PostgreSQL logs
// "new timeline N forked off current database system timeline M before
// current recovery point" and retries forever. A standby that is merely
// behind (pos at or before the switch point) follows by itself. A position
// on a timeline that is not in the history at all (a branch the primary
// never took) cannot be followed either.
func ForkedOff(tli uint32, hist []TimelineSwitch, pos WALPosition) string {
	if pos.Timeline == 0 || pos.LSN == 0 || pos.Timeline == tli {
		return ""
	}
	for _, s := range hist {
		if s.Timeline != pos.Timeline {
			continue
		}
		if pos.LSN <= s.Switch {
			return "" // behind: it reaches the switch point and follows
		}
		return fmt.Sprintf("its WAL reaches %s, past %s where the primary's timeline %d left timeline %d", pos, s.Switch, tli, pos.Timeline)
	}
	if tli > 1 && len(hist) == 0 {
		return "" // the primary's history is not known
	}
	return fmt.Sprintf("its WAL reaches %s, a timeline that is not in the history of the primary's timeline %d", pos, tli)
}

// OnHistory tells whether WAL ending at pos lies on the history of timeline
// tli (hist is that timeline's parsed history file) at or before the point
// where tli's history left pos's timeline, so a server whose WAL ends there
// can follow tli without rewinding. Unlike ForkedOff, which answers "can
// follow" when it cannot tell, OnHistory needs proof: an unknown history
// or position is false, and so is pos on tli itself (then no timeline
// switch tells where the other server's WAL was cut, and the two could
// have written different WAL on one timeline).
func OnHistory(tli uint32, hist []TimelineSwitch, pos WALPosition) bool {
	if pos.Timeline == 0 || pos.LSN == 0 || pos.Timeline >= tli {
		return false
	}
	for _, s := range hist {
		if s.Timeline == pos.Timeline {
			return pos.LSN <= s.Switch
		}
	}
	return false
}

// historyFile names timeline tli's history file in pg_wal.
func historyFile(tli uint32) string { return fmt.Sprintf("%08X.history", tli) }

// TimelineHistory reads and parses the history file of timeline tli from
// the data directory's pg_wal (nil for timeline 1, which has none).
// PostgreSQL never removes history files.
func (i *Instance) TimelineHistory(tli uint32) ([]TimelineSwitch, error) {
	if tli <= 1 {
		return nil, nil
	}
	b, err := os.ReadFile(filepath.Join(i.cfg.DataDir, "pg_wal", historyFile(tli)))
	if err != nil {
		return nil, fmt.Errorf("read the history of timeline %d: %w", tli, err)
	}
	h, err := ParseTimelineHistory(string(b))
	if err != nil {
		return nil, fmt.Errorf("read the history of timeline %d: %w", tli, err)
	}
	return h, nil
}

// StandbyWALEnd is how far the running standby's WAL reaches, and on which
// timeline: its replayed position, or what its WAL receiver has written to
// disk if that is further on the same timeline. No SQL function gives the
// timeline of the replayed position; IDENTIFY_SYSTEM on a replication
// connection to the standby itself does (what a cascaded standby would be
// offered), so this uses one over the unix socket.
func (i *Instance) StandbyWALEnd(ctx context.Context) (WALPosition, error) {
	conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%d user=%s replication=true connect_timeout=2 application_name=pgha-agent",
		quoteConnValue(i.cfg.SocketDir), i.cfg.Port, quoteConnValue(i.cfg.Superuser)))
	if err != nil {
		return WALPosition{}, fmt.Errorf("replication connection to the local server: %w", err)
	}
	defer conn.Close(context.Background())
	res, err := conn.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll()
	if err != nil {
		return WALPosition{}, fmt.Errorf("IDENTIFY_SYSTEM on the local server: %w", err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) < 3 {
		return WALPosition{}, errors.New("IDENTIFY_SYSTEM on the local server: unexpected answer")
	}
	row := res[0].Rows[0] // systemid, timeline, xlogpos, dbname
	tli, err := strconv.ParseUint(string(row[1]), 10, 32)
	if err != nil {
		return WALPosition{}, fmt.Errorf("IDENTIFY_SYSTEM timeline %q: %w", row[1], err)
	}
	lsn, err := ParseLSN(string(row[2]))
	if err != nil {
		return WALPosition{}, fmt.Errorf("IDENTIFY_SYSTEM position: %w", err)
	}
	return WALPosition{Timeline: uint32(tli), LSN: lsn}, nil
}

// StoppedWALEnds are the positions pg_control of a stopped server vouches
// its WAL reached: its latest checkpoint and its minimum recovery point (a
// standby shut down cleanly sets it to where replay stopped). Zero
// positions are left out.
func (i *Instance) StoppedWALEnds(ctx context.Context) ([]WALPosition, error) {
	fields, err := i.controlData(ctx)
	if err != nil {
		return nil, fmt.Errorf("read where the WAL ends: %w", err)
	}
	return controlWALEnds(fields)
}

func controlWALEnds(fields map[string]string) ([]WALPosition, error) {
	var out []WALPosition
	for _, k := range [][2]string{
		{"Latest checkpoint location", "Latest checkpoint's TimeLineID"},
		{"Minimum recovery ending location", "Min recovery ending loc's timeline"},
	} {
		lsn, err := ParseLSN(fields[k[0]])
		if err != nil {
			return nil, fmt.Errorf("pg_controldata %q: %w", k[0], err)
		}
		tli, err := strconv.ParseUint(fields[k[1]], 10, 32)
		if err != nil {
			return nil, fmt.Errorf("pg_controldata %q: %w", k[1], err)
		}
		if lsn != 0 && tli != 0 {
			out = append(out, WALPosition{Timeline: uint32(tli), LSN: lsn})
		}
	}
	return out, nil
}

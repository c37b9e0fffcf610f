package postgres

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
)

// DataDirWAL is what a data directory's WAL holds: which database system it
// belongs to, where its WAL ends and on which timeline, and that timeline's
// history. Comparing two of them tells whether one holds all of the other's
// WAL (see the agent's chooseFirstPrimary) without starting either server.
type DataDirWAL struct {
	SystemID uint64           `json:"system_id"`
	End      WALPosition      `json:"end"`
	History  []TimelineSwitch `json:"history,omitempty"` // of End.Timeline (ParseTimelineHistory); empty for timeline 1
	// Running: taken from the running server, so End still moves.
	Running bool `json:"running,omitempty"`
}

// StoppedWAL reads where the WAL of the stopped server's data directory
// really ends, for the data directory's own timeline:
//
//  1. pg_controldata: the system identifier, the segment size, and the
//     positions pg_control vouches for (StoppedWALEnds: latest checkpoint,
//     minimum recovery point). A crashed primary's WAL goes past them.
//  2. The WAL segments in pg_wal, newest timeline first, newest segment
//     first: pg_waldump lists the records of each until one holds a valid
//     record; the end of its last record is the end of the WAL. Segments a
//     checkpoint recycled (renamed ahead, old content) hold none.
//  3. The later of the two, by timeline then LSN, and the history of its
//     timeline from pg_wal (an error if a timeline above 1 has none: the
//     WAL could not be ordered against another member's).
//
// It reads at most a segment or two of WAL: call it while the server is
// stopped, and not at every observation (the agent caches it).
func (i *Instance) StoppedWAL(ctx context.Context) (DataDirWAL, error) {
	fields, err := i.controlData(ctx)
	if err != nil {
		return DataDirWAL{}, fmt.Errorf("read where the WAL ends: %w", err)
	}
	var w DataDirWAL
	if w.SystemID, err = strconv.ParseUint(fields["Database system identifier"], 10, 64); err != nil {
		return DataDirWAL{}, fmt.Errorf("read where the WAL ends: pg_controldata system identifier: %w", err)
	}
	segSize, err := strconv.ParseUint(fields["Bytes per WAL segment"], 10, 64)
	if err != nil || segSize == 0 {
		return DataDirWAL{}, fmt.Errorf("read where the WAL ends: pg_controldata %q: %q", "Bytes per WAL segment", fields["Bytes per WAL segment"])
	}
	ends, err := controlWALEnds(fields)
	if err != nil {
		return DataDirWAL{}, fmt.Errorf("read where the WAL ends: %w", err)
	}
	scanned, err := i.scanWALEnd(ctx, segSize)
	if err != nil {
		return DataDirWAL{}, fmt.Errorf("read where the WAL ends: %w", err)
	}
	if scanned.LSN != 0 {
		ends = append(ends, scanned)
	}
	if len(ends) == 0 {
		return DataDirWAL{}, errors.New("read where the WAL ends: neither pg_control nor pg_wal names a WAL position")
	}
	for _, e := range ends {
		if e.Timeline > w.End.Timeline || e.Timeline == w.End.Timeline && e.LSN > w.End.LSN {
			w.End = e
		}
	}
	if w.History, err = i.TimelineHistory(w.End.Timeline); err != nil {
		return DataDirWAL{}, fmt.Errorf("read where the WAL ends: %w", err)
	}
	return w, nil
}

// walSegment is a WAL segment file in pg_wal.
type walSegment struct {
	name     string
	timeline uint32
	segNo    uint64
}

var walSegmentName = regexp.MustCompile(`^[0-9A-F]{24}$`)

// walSegments lists pg_wal's complete segment files (not .partial, .history
// or others), newest timeline first, then newest segment first.
func walSegments(dir string, segSize uint64) ([]walSegment, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	perID := uint64(0x100000000) / segSize // segments per "xlogid"
	var out []walSegment
	for _, e := range entries {
		n := e.Name()
		if !e.Type().IsRegular() || !walSegmentName.MatchString(n) {
			continue
		}
		tli, _ := strconv.ParseUint(n[0:8], 16, 32)
		hi, _ := strconv.ParseUint(n[8:16], 16, 32)
		lo, _ := strconv.ParseUint(n[16:24], 16, 32)
		out = append(out, walSegment{name: n, timeline: uint32(tli), segNo: hi*perID + lo})
	}
	sort.Slice(out, func(a, b int) bool {
		if out[a].timeline != out[b].timeline {
			return out[a].timeline > out[b].timeline
		}
		return out[a].segNo > out[b].segNo
	})
	return out, nil
}

// scanWALEnd finds the end of the last valid record in pg_wal (step 2 of
// StoppedWAL); zero if no segment holds one.
func (i *Instance) scanWALEnd(ctx context.Context, segSize uint64) (WALPosition, error) {
	dir := filepath.Join(i.cfg.DataDir, "pg_wal")
	segs, err := walSegments(dir, segSize)
	if err != nil {
		return WALPosition{}, err
	}
	for _, s := range segs {
		end, err := i.lastRecordEnd(ctx, dir, s, segSize)
		if err != nil {
			return WALPosition{}, err
		}
		if end != 0 {
			return WALPosition{Timeline: s.timeline, LSN: end}, nil
		}
	}
	return WALPosition{}, nil
}

// walRecordLine matches pg_waldump's record lines:
// "rmgr: Heap len (rec/tot):   54/   54, tx: 735, lsn: 0/01526058, prev 0/01526018, desc: ..."
var walRecordLine = regexp.MustCompile(`^rmgr: (\w+)\s+len \(rec/tot\):\s*\d+/\s*(\d+), tx:\s*\d+, lsn: ([0-9A-F]+/[0-9A-F]+), prev [0-9A-F]+/[0-9A-F]+, desc: (\w*)`)

// lastRecordEnd runs pg_waldump from the start of segment s on its timeline
// to wherever the valid WAL ends (pg_waldump stops there with an error,
// which is expected), and returns the end of the last record it listed; 0
// if none.
func (i *Instance) lastRecordEnd(ctx context.Context, dir string, s walSegment, segSize uint64) (LSN, error) {
	start := LSN(s.segNo * segSize)
	cmd, err := i.command(ctx, "pg_waldump", "-p", dir, "-t", strconv.FormatUint(uint64(s.timeline), 10), "-s", start.String())
	if err != nil {
		return 0, err
	}
	cmd.Env = append(cmd.Env, "LC_ALL=C")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("pg_waldump: %w", err)
	}
	var last, lastLen string
	var lastSwitch bool
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		if m := walRecordLine.FindSubmatch(sc.Bytes()); m != nil {
			lastLen, last = string(m[2]), string(m[3])
			lastSwitch = string(m[1]) == "XLOG" && string(m[4]) == "SWITCH"
		}
	}
	scanErr := sc.Err()
	waitErr := cmd.Wait()
	if scanErr != nil {
		return 0, fmt.Errorf("pg_waldump %s: %w", s.name, scanErr)
	}
	if last == "" {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, nil // no valid record (a recycled segment)
	}
	if waitErr != nil && ctx.Err() != nil {
		return 0, ctx.Err() // cut short: the last record listed need not be the last
	}
	lsn, err := ParseLSN(last)
	if err != nil {
		return 0, fmt.Errorf("pg_waldump %s: %w", s.name, err)
	}
	n, err := strconv.ParseUint(lastLen, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("pg_waldump %s: record length %q: %w", s.name, lastLen, err)
	}
	if lastSwitch {
		// pg_switch_wal(): the rest of the segment is skipped, the WAL
		// goes on at the start of the next one.
		return LSN((uint64(lsn)/segSize + 1) * segSize), nil
	}
	return recordEnd(lsn, n, segSize), nil
}

// WAL page layout (PostgreSQL's xlog_internal.h with the default 8 kB
// XLOG_BLCKSZ): each page starts with a header, a segment's first page
// with the long one; records are MAXALIGNed (8 bytes).
const (
	walPageSize      = 8192
	walShortPageHead = 24
	walLongPageHead  = 40
)

// recordEnd is where a record of size bytes that starts at lsn ends: its
// bytes, skipping the headers of the pages it continues on, MAXALIGNed.
// This is where the next record would begin (PostgreSQL's EndRecPtr).
func recordEnd(lsn LSN, size, segSize uint64) LSN {
	pos := uint64(lsn)
	for size > 0 {
		pageEnd := (pos/walPageSize + 1) * walPageSize
		if avail := pageEnd - pos; size <= avail {
			pos += size
			break
		} else {
			size -= avail
		}
		pos = pageEnd + walShortPageHead
		if pageEnd%segSize == 0 {
			pos = pageEnd + walLongPageHead
		}
	}
	return LSN((pos + 7) &^ 7)
}

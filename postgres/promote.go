package postgres

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// What a standby needs before it is promoted (the agent's becomeWritable
// uses these in this order): its synchronous_standby_names in force, the
// replication slots of the members that will stream from it, and the
// history files of every timeline a promotion ever took, so PostgreSQL
// picks a timeline ID that no other server has used.

// SyncNames is a parsed synchronous_standby_names.
type SyncNames struct {
	Num   int      // how many of Names must confirm a commit
	Names []string // standby application names; "*" is any standby
}

// ParseSyncStandbyNames parses synchronous_standby_names in any of
// PostgreSQL's forms: "", "a, b" (FIRST 1), "n (a, b)", "FIRST n (...)",
// "ANY n (...)"; names may be double-quoted. "" gives the zero SyncNames
// (asynchronous).
func ParseSyncStandbyNames(s string) (SyncNames, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return SyncNames{}, nil
	}
	num, list := 1, s
	if open := strings.IndexByte(s, '('); open >= 0 {
		if !strings.HasSuffix(s, ")") {
			return SyncNames{}, fmt.Errorf("synchronous_standby_names %q: no closing parenthesis", s)
		}
		head := strings.Fields(s[:open])
		if len(head) > 0 && (strings.EqualFold(head[0], "ANY") || strings.EqualFold(head[0], "FIRST")) {
			head = head[1:]
		}
		if len(head) != 1 {
			return SyncNames{}, fmt.Errorf("synchronous_standby_names %q: want [ANY|FIRST] num (names)", s)
		}
		n, err := strconv.Atoi(head[0])
		if err != nil || n < 1 {
			return SyncNames{}, fmt.Errorf("synchronous_standby_names %q: bad number %q", s, head[0])
		}
		num, list = n, s[open+1:len(s)-1]
	}
	var names []string
	for _, part := range strings.Split(list, ",") {
		n := strings.TrimSpace(part)
		if len(n) >= 2 && n[0] == '"' && n[len(n)-1] == '"' {
			n = strings.ReplaceAll(n[1:len(n)-1], `""`, `"`)
		}
		if n == "" {
			return SyncNames{}, fmt.Errorf("synchronous_standby_names %q: an empty name", s)
		}
		names = append(names, n)
	}
	return SyncNames{Num: num, Names: names}, nil
}

// SetSyncStandbyNames rewrites only the synchronous_standby_names line of
// pgha.conf, leaving every other setting (a standby's primary_conninfo) and
// standby.signal as they are: a standby about to be promoted gets its
// synchronous set without ceasing to be a standby. (PostgreSQL removes
// standby.signal itself when it promotes, and fails the promotion if it is
// already gone.) The caller reloads.
func (i *Instance) SetSyncStandbyNames(names []string) error {
	for _, n := range names {
		if n == "" || strings.ContainsAny(n, "\n'") {
			return fmt.Errorf("synchronous_standby_names: member name %q is empty or contains a quote", n)
		}
	}
	path := filepath.Join(i.cfg.DataDir, PghaConfFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("set synchronous_standby_names: %w", err)
	}
	line := renderPghaConf([]setting{{"synchronous_standby_names", SyncStandbyNames(1, names)}})
	line = line[strings.LastIndex(strings.TrimSuffix(line, "\n"), "\n")+1:]
	var out strings.Builder
	found := false
	for _, l := range strings.SplitAfter(string(b), "\n") {
		if m := confLineRe.FindStringSubmatch(strings.TrimSuffix(l, "\n")); m != nil && m[1] == "synchronous_standby_names" {
			out.WriteString(line)
			found = true
			continue
		}
		out.WriteString(l)
	}
	if !found {
		if s := out.String(); s != "" && !strings.HasSuffix(s, "\n") {
			out.WriteString("\n")
		}
		out.WriteString(line)
	}
	if err := WriteFileAs(path, []byte(out.String()), 0o600, i.cfg.RunAs); err != nil {
		return fmt.Errorf("set synchronous_standby_names: %w", err)
	}
	return nil
}

// ShowSetting is the value of a setting as the server uses it now (SHOW),
// which is what a reload has taken effect as, whatever the files say.
func (i *Instance) ShowSetting(ctx context.Context, name string) (string, error) {
	var v string
	err := i.with(ctx, &i.conn, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v)
	})
	if err != nil {
		return "", fmt.Errorf("show %s: %w", name, err)
	}
	return v, nil
}

// ResetAlteredSetting removes an ALTER SYSTEM override of a setting pgha
// manages (postgresql.auto.conf wins over pgha.conf) and reloads.
func (i *Instance) ResetAlteredSetting(ctx context.Context, name string) error {
	if !settingRe.MatchString(name) {
		return fmt.Errorf("reset %q: not a setting name", name)
	}
	if err := i.Exec(ctx, "ALTER SYSTEM RESET "+name); err != nil {
		return err
	}
	return i.Exec(ctx, "SELECT pg_reload_conf()")
}

var settingRe = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)

// CreateMissingSlots creates the physical replication slots in names that
// do not exist yet, on a primary or a standby, without reserving WAL (a slot
// reserves from the position its first user asks for). A standby keeps the
// slots of the members that will stream from it once it is promoted, so
// they find them at once instead of retrying every
// wal_retrieve_retry_interval. It never drops a slot.
func (i *Instance) CreateMissingSlots(ctx context.Context, names []string) error {
	for _, n := range names {
		if !slotRe.MatchString(n) {
			return fmt.Errorf("create slots: %q is not a slot name", n)
		}
	}
	err := i.with(ctx, &i.conn, func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, "SELECT slot_name FROM pg_replication_slots")
		if err != nil {
			return err
		}
		have, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		for _, n := range names {
			if slices.Contains(have, n) {
				continue
			}
			i.log.Info("creating replication slot", "slot", n, "reason", "ready before members stream from this server")
			if _, err := c.Exec(ctx, "SELECT pg_create_physical_replication_slot($1, false)", n); err != nil {
				return fmt.Errorf("create slot %s: %w", n, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("create slots: %w", err)
	}
	return nil
}

// placeholderHistory marks a history file pgha wrote only so that
// PostgreSQL's choice of a new timeline ID skips a timeline it used.
const placeholderHistory = "# Written by pgha-agent: timeline %d was taken by another primary, whose history file never reached this server.\n"

// ReserveTimeline makes a promotion of this standby, now on timeline
// current, take timeline next: PostgreSQL takes one above the newest
// timeline whose history file it finds (findNewestTimeLine), so every
// missing history file between current and next gets a placeholder. A
// history file for next itself means some server took it: an error.
func (i *Instance) ReserveTimeline(current, next uint32) error {
	if next == 0 {
		return nil
	}
	if next <= current {
		return fmt.Errorf("reserve timeline %d: this server is already on timeline %d", next, current)
	}
	dir := filepath.Join(i.cfg.DataDir, "pg_wal")
	if _, err := os.Stat(filepath.Join(dir, historyFile(next))); err == nil {
		return fmt.Errorf("reserve timeline %d: %s exists: another server took that timeline", next, historyFile(next))
	}
	for tli := current + 1; tli < next; tli++ {
		path := filepath.Join(dir, historyFile(tli))
		_, err := os.Stat(path)
		if err == nil {
			continue
		}
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("reserve timeline %d: %w", next, err)
		}
		if err := WriteFileAs(path, fmt.Appendf(nil, placeholderHistory, tli), 0o600, i.cfg.RunAs); err != nil {
			return fmt.Errorf("reserve timeline %d: %w", next, err)
		}
		i.log.Info("wrote a placeholder timeline history", "timeline", tli, "reason", "another primary took it; promotion must take "+strconv.Itoa(int(next)))
	}
	return nil
}

// ReleaseSyncWaiters wakes commits that wait for a synchronous standby
// once synchronous_standby_names names (the caller wrote and reloaded it).
// PostgreSQL releases them only when a standby of the new setting replies,
// and an idle standby that already holds their WAL replies only every
// wal_receiver_status_interval (10 s by default): writes that waited on a
// lost standby would wait that long, or until their statement timeout,
// after the setting named a live one. A transaction of the agent's own
// (its session commits with synchronous_commit=local, see connString)
// sends the standbys new WAL, and each replies at once. The waiters are
// still released only by a standby the setting names.
//
// It first waits until the agent's session shows the new setting: the
// postmaster has then passed the reload on to every process, and a WAL
// sender handles a pending reload before it sends anything.
func (i *Instance) ReleaseSyncWaiters(ctx context.Context, names []string) error {
	want := SyncStandbyNames(1, names)
	for {
		got, err := i.ShowSetting(ctx, "synchronous_standby_names")
		if err != nil {
			return fmt.Errorf("release synchronous waiters: %w", err)
		}
		if got == want {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("release synchronous waiters: synchronous_standby_names is %q, not yet %q: %w", got, want, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	if err := i.Exec(ctx, "SELECT pg_current_xact_id()"); err != nil {
		return fmt.Errorf("release synchronous waiters: %w", err)
	}
	return nil
}

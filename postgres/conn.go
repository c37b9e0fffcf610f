package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// connSlot caches one superuser connection. A pgx.Conn is not safe for
// concurrent use, so the slot is a one-token semaphore: whoever holds the
// token owns the connection; waiting for the token honours the context.
type connSlot struct {
	sem  chan struct{}
	conn *pgx.Conn // guarded by sem
}

func (s *connSlot) init() { s.sem = make(chan struct{}, 1) }

func (s *connSlot) acquire(ctx context.Context) error {
	select {
	case s.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for the connection: %w", ctx.Err())
	}
}

func (s *connSlot) release() { <-s.sem }

// drop closes the cached connection; the caller holds the token.
func (s *connSlot) drop() {
	if s.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		s.conn.Close(ctx)
		cancel()
		s.conn = nil
	}
}

// connString is the libpq connection string of the superuser over the unix
// socket (peer authentication, through the "pgha" ident map). The agent's own
// statements (roles, slots) commit with synchronous_commit=local: they must
// not wait for a standby, which may itself be waiting for those very roles
// and slots before it can clone and stream.
func (i *Instance) connString() string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=postgres connect_timeout=2 application_name=pgha-agent options='-c synchronous_commit=local'",
		quoteConnValue(i.cfg.SocketDir), i.cfg.Port, quoteConnValue(i.cfg.Superuser))
}

// quoteConnValue quotes a libpq conninfo value when it needs it.
func quoteConnValue(v string) string {
	if v != "" && !strings.ContainsAny(v, " '\\\t\n") {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// with runs f on the slot's connection, connecting first if needed. Any
// error that is not an SQL error from the server drops the connection, so
// the next call reconnects.
func (i *Instance) with(ctx context.Context, s *connSlot, f func(*pgx.Conn) error) error {
	if err := s.acquire(ctx); err != nil {
		return err
	}
	defer s.release()
	if s.conn != nil && s.conn.IsClosed() {
		s.drop()
	}
	if s.conn == nil {
		cc, err := pgx.ParseConfig(i.connString())
		if err != nil {
			return fmt.Errorf("connect to postgres at %s port %d: %w", i.cfg.SocketDir, i.cfg.Port, err)
		}
		conn, err := pgx.ConnectConfig(ctx, cc)
		if err != nil {
			return fmt.Errorf("connect to postgres at %s port %d: %w", i.cfg.SocketDir, i.cfg.Port, err)
		}
		s.conn = conn
	}
	err := f(s.conn)
	var pgErr *pgconn.PgError
	if err != nil && !errors.As(err, &pgErr) {
		s.drop()
	}
	return err
}

// Exec runs sql as the superuser over the unix socket (one statement when
// args are given; several separated by ";" without args).
func (i *Instance) Exec(ctx context.Context, sql string, args ...any) error {
	return i.with(ctx, &i.conn, func(c *pgx.Conn) error {
		if _, err := c.Exec(ctx, sql, args...); err != nil {
			return fmt.Errorf("exec %q: %w", abbrev(sql), err)
		}
		return nil
	})
}

// Query runs f with the superuser connection for queries that return rows
// (used by tests and the agent). f must not keep c.
func (i *Instance) Query(ctx context.Context, f func(c *pgx.Conn) error) error {
	return i.with(ctx, &i.conn, f)
}

// PendingRestart lists settings changed in the configuration files that
// only take effect after a restart (pg_settings.pending_restart, after a
// Reload). It is the authoritative check; ConfigChange.NeedsRestart is a
// prediction from a static list.
func (i *Instance) PendingRestart(ctx context.Context) ([]string, error) {
	var names []string
	err := i.with(ctx, &i.conn, func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, "SELECT name FROM pg_settings WHERE pending_restart ORDER BY name")
		if err != nil {
			return err
		}
		names, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list settings pending restart: %w", err)
	}
	return names, nil
}

// Close closes the cached connections. The Instance stays usable; the next
// call reconnects.
func (i *Instance) Close() {
	for _, s := range []*connSlot{&i.conn, &i.stat} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if s.acquire(ctx) == nil {
			s.drop()
			s.release()
		}
		cancel()
	}
}

func abbrev(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 60 {
		return s[:57] + "..."
	}
	return s
}

// quoteIdent quotes an SQL identifier.
func quoteIdent(s string) string { return pgx.Identifier{s}.Sanitize() }

// quoteLiteral quotes an SQL string literal (standard_conforming_strings on).
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

package netcluster

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// Ack is one acknowledged insert.
type Ack struct {
	ID   int64
	Sent time.Time // when the INSERT was sent
	At   time.Time // when its acknowledgement arrived
	Host string    // whose PostgreSQL acknowledged it (inet_server_addr)
}

// WriterOptions configure a Writer. Zero values take the defaults.
type WriterOptions struct {
	Table string // default "acks"
	// Conns is the number of concurrent sessions, each inserting in turn;
	// default 2.
	Conns int
	// Interval is each session's pause between inserts; default 20ms.
	Interval time.Duration
	// Timeout bounds one insert (and one connection attempt); default 3s.
	// An insert that times out has an unknown outcome and is not counted.
	Timeout time.Duration
}

// Writer inserts rows with unique ids through the router on VIP:9999 from
// the client namespace, the way an application would, and records every
// acknowledgement. An insert whose outcome is unknown (error, timeout) is
// not recorded; its id is never reused. Each session reconnects after an
// error, to whatever the VIP reaches then.
//
// Its goroutines are owned by the Writer: Stop ends them. Acks, Errors and
// the other readers may be called from any goroutine meanwhile.
type Writer struct {
	c    *Cluster
	opts WriterOptions
	next atomic.Int64

	mu      sync.Mutex
	acks    []Ack
	errors  int
	lastErr string

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// StartWriter creates the table through the VIP (waiting up to a minute for
// the router to answer) and starts the sessions.
func (c *Cluster) StartWriter(ctx context.Context, opts WriterOptions) (*Writer, error) {
	if opts.Table == "" {
		opts.Table = "acks"
	}
	if opts.Conns == 0 {
		opts.Conns = 2
	}
	if opts.Interval == 0 {
		opts.Interval = 20 * time.Millisecond
	}
	if opts.Timeout == 0 {
		opts.Timeout = 3 * time.Second
	}
	create := fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s (id bigint PRIMARY KEY, session int, at timestamptz DEFAULT clock_timestamp())", pgx.Identifier{opts.Table}.Sanitize())
	err := Poll(ctx, time.Minute, func() (bool, string) {
		conn, err := c.DialVIP(ctx, RouterPort, opts.Timeout)
		if err != nil {
			return false, err.Error()
		}
		defer conn.Close(context.Background())
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if _, err := conn.Exec(cctx, create); err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	if err != nil {
		return nil, fmt.Errorf("create table %s through the VIP: %w", opts.Table, err)
	}
	wctx, cancel := context.WithCancel(context.Background())
	w := &Writer{c: c, opts: opts, cancel: cancel}
	for i := range opts.Conns {
		w.wg.Add(1)
		go w.session(wctx, i)
	}
	return w, nil
}

func (w *Writer) session(ctx context.Context, n int) {
	defer w.wg.Done()
	insert := fmt.Sprintf("INSERT INTO %s (id, session) VALUES ($1, $2) RETURNING host(inet_server_addr())", pgx.Identifier{w.opts.Table}.Sanitize())
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	t := time.NewTicker(w.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if conn == nil {
			var err error
			if conn, err = w.c.DialVIP(ctx, RouterPort, w.opts.Timeout); err != nil {
				w.fail(err)
				continue
			}
		}
		id := w.next.Add(1)
		sent := time.Now()
		ictx, cancel := context.WithTimeout(ctx, w.opts.Timeout)
		var addr string
		err := conn.QueryRow(ictx, insert, id, n).Scan(&addr)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				w.fail(err)
			}
			conn.Close(context.Background())
			conn = nil
			continue
		}
		at := time.Now()
		host := addr
		for _, h := range w.c.Hosts {
			if h.IP.String() == addr {
				host = h.Name
			}
		}
		w.mu.Lock()
		w.acks = append(w.acks, Ack{ID: id, Sent: sent, At: at, Host: host})
		w.mu.Unlock()
	}
}

func (w *Writer) fail(err error) {
	w.mu.Lock()
	w.errors++
	w.lastErr = err.Error()
	w.mu.Unlock()
}

// Stop ends the sessions and waits for them.
func (w *Writer) Stop() {
	w.cancel()
	w.wg.Wait()
}

// Table is the table the writer inserts into.
func (w *Writer) Table() string { return w.opts.Table }

// Acks returns the acknowledgements so far, in the order they arrived.
func (w *Writer) Acks() []Ack {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Ack(nil), w.acks...)
}

// Errors is the number of failed attempts and the last error.
func (w *Writer) Errors() (int, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.errors, w.lastErr
}

// Status is a one-line summary for logs.
func (w *Writer) Status() string {
	n, last := w.Errors()
	return fmt.Sprintf("%d acknowledged, %d failed attempts (last: %s)", len(w.Acks()), n, last)
}

// FirstAckSentAfter is the earliest acknowledgement of an insert sent after
// t, by a host not in notOn. An insert sent before t and acknowledged after
// it says nothing about the cluster after t, so it does not count.
func (w *Writer) FirstAckSentAfter(t time.Time, notOn ...string) (Ack, bool) {
	var best Ack
	found := false
	for _, a := range w.Acks() {
		if !a.Sent.After(t) || slices.Contains(notOn, a.Host) {
			continue
		}
		if !found || a.At.Before(best.At) {
			best, found = a, true
		}
	}
	return best, found
}

// AwaitAckSentAfter polls until an insert sent after t (by a host not in
// notOn) is acknowledged, and returns it.
func (w *Writer) AwaitAckSentAfter(ctx context.Context, t time.Time, timeout time.Duration, notOn ...string) (Ack, error) {
	var ack Ack
	err := Poll(ctx, timeout, func() (bool, string) {
		var ok bool
		ack, ok = w.FirstAckSentAfter(t, notOn...)
		return ok, w.Status()
	})
	return ack, err
}

// IDs reads every id in table from h's PostgreSQL (from inside h's
// namespace).
func (c *Cluster) IDs(ctx context.Context, h *Host, table string) (map[int64]bool, error) {
	conn, err := c.DialHost(ctx, h, 3*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	rows, err := conn.Query(qctx, fmt.Sprintf("SELECT id FROM %s", pgx.Identifier{table}.Sanitize()))
	if err != nil {
		return nil, err
	}
	ids := map[int64]bool{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids[id] = true
	}
	return ids, rows.Err()
}

// Missing returns the acknowledged ids absent from h's copy of the table,
// in order. The acknowledgements are taken before the table is read, so a
// writer still running cannot make a row look missing.
func (w *Writer) Missing(ctx context.Context, h *Host) ([]int64, error) {
	acks := w.Acks()
	have, err := w.c.IDs(ctx, h, w.opts.Table)
	if err != nil {
		return nil, err
	}
	var missing []int64
	for _, a := range acks {
		if !have[a.ID] {
			missing = append(missing, a.ID)
		}
	}
	sort.Slice(missing, func(i, j int) bool { return missing[i] < missing[j] })
	return missing, nil
}

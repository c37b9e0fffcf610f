package netcluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgha/pgha/internal/wait"
)

// ViaVIP is Ack.Via for an insert through the router on VIP:RouterPort.
const ViaVIP = "vip"

// Ack is one acknowledged insert.
type Ack struct {
	ID int64
	// Via is how it was sent: ViaVIP, or the name of the host whose
	// PostgreSQL a direct session talks to (as a client behind HAProxy's
	// /primary check, or one configured with a host's address, would).
	Via  string
	Sent time.Time // when the INSERT was sent
	At   time.Time // when its acknowledgement arrived
	// Executed is the server's clock_timestamp() while it ran the INSERT,
	// before its commit (every namespace shares the kernel's clock, so it
	// compares with Sent and At).
	Executed time.Time
	Host     string // whose PostgreSQL acknowledged it (inet_server_addr)
	Timeline uint32 // the timeline that server wrote on
	// CancelAcked: the writer cancelled the statement while the commit
	// waited for a synchronous standby, and PostgreSQL answered success
	// with the WARNING "canceling wait for synchronous replication due to
	// user request ... The transaction has already committed locally, but
	// might not have been replicated to the standby". The application was
	// told it committed, but no standby had confirmed it: a bounded,
	// accepted risk that is counted apart, never as a plain
	// acknowledgement.
	CancelAcked bool
}

// WriterOptions configure a Writer. Zero values take the defaults.
type WriterOptions struct {
	Table string // default "acks"
	// Conns is the number of concurrent sessions through the VIP, each
	// inserting in turn; default 2.
	Conns int
	// Direct adds one session per host, to that host's PostgreSQL from the
	// client namespace, inserting every DirectInterval (default 50ms)
	// whatever the host's role: a standby refuses (counted, not an error;
	// asked with pg_is_in_recovery() first, not by a failing INSERT);
	// a deposed primary that still acknowledges is what the checks look for.
	Direct         bool
	DirectInterval time.Duration
	// Interval is each VIP session's pause between inserts; default 20ms.
	Interval time.Duration
	// CancelAfter, if set, is the application's statement timeout: an
	// insert not answered by then gets a CancelRequest (through the router
	// for VIP sessions), as a client library's timeout would send. A commit
	// waiting for its synchronous standby then returns as committed with a
	// WARNING, which the writer records as Ack.CancelAcked.
	CancelAfter time.Duration
	// Timeout bounds one insert (and one connection attempt); default 3s,
	// and at least CancelAfter+3s. An insert that times out has an unknown
	// outcome and is not counted; its session reconnects.
	Timeout time.Duration
}

// Writer inserts rows with unique ids through the router on VIP:9999 from
// the client namespace, the way an application would, and, with
// WriterOptions.Direct, directly to every host's PostgreSQL; it records
// every acknowledgement. An insert whose outcome is unknown (error,
// timeout) is not recorded; its id is never reused. Each session
// reconnects after an error that is not an SQL error, to whatever its
// address reaches then.
//
// Its goroutines are owned by the Writer: Stop ends them. Acks, Errors and
// the other readers may be called from any goroutine meanwhile.
type Writer struct {
	c    *Cluster
	opts WriterOptions
	next atomic.Int64

	mu      sync.Mutex
	acks    []Ack
	errors  int // VIP sessions
	lastErr string
	refused map[string]int // direct sessions, per host: the server is read-only
	failed  map[string]int // direct sessions, per host: other errors

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
	if opts.DirectInterval == 0 {
		opts.DirectInterval = 50 * time.Millisecond
	}
	if opts.Timeout == 0 {
		opts.Timeout = 3 * time.Second
	}
	if opts.CancelAfter > 0 && opts.Timeout < opts.CancelAfter+3*time.Second {
		opts.Timeout = opts.CancelAfter + 3*time.Second
	}
	create := fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s (id bigint PRIMARY KEY, session int, at timestamptz DEFAULT clock_timestamp())", pgx.Identifier{opts.Table}.Sanitize())
	err := wait.Until(ctx, time.Minute, func() (bool, string) {
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
	w := &Writer{c: c, opts: opts, cancel: cancel, refused: map[string]int{}, failed: map[string]int{}}
	vip := c.VIP.Addr().String() + ":" + strconv.Itoa(RouterPort)
	for i := range opts.Conns {
		w.wg.Add(1)
		go w.session(wctx, i, ViaVIP, vip, opts.Interval)
	}
	if opts.Direct {
		for i, h := range c.Hosts {
			w.wg.Add(1)
			go w.session(wctx, opts.Conns+i, h.Name, h.PGAddr(), opts.DirectInterval)
		}
	}
	return w, nil
}

// syncCancelWarning starts PostgreSQL's WARNING for a commit whose wait for
// a synchronous standby was cancelled (syncrep.c).
const syncCancelWarning = "canceling wait for synchronous replication"

// session inserts through addr (from the client namespace) until ctx ends.
func (w *Writer) session(ctx context.Context, n int, via, addr string, interval time.Duration) {
	defer w.wg.Done()
	insert := fmt.Sprintf("INSERT INTO %s (id, session) VALUES ($1, $2) RETURNING host(inet_server_addr()), clock_timestamp(), pg_walfile_name(pg_current_wal_lsn())", pgx.Identifier{w.opts.Table}.Sanitize())
	// Set by the connection's notice handler, which runs on this
	// goroutine while it reads the answer.
	var syncCancelled atomic.Bool
	onNotice := func(_ *pgconn.PgConn, n *pgconn.Notice) {
		if strings.HasPrefix(n.Message, syncCancelWarning) {
			syncCancelled.Store(true)
		}
	}
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if conn == nil {
			var err error
			conn, err = connectIn(ctx, w.c.Client.NS, addr, w.opts.Timeout, func(cfg *pgx.ConnConfig) { cfg.OnNotice = onNotice })
			if err != nil {
				w.fail(via, err)
				continue
			}
		}
		// A direct session asks first whether the server is a standby, and
		// counts it refused without an INSERT: the refusals would otherwise
		// fill every standby's server log, which is the evidence read
		// after a failure. A server promoted in between gets the INSERT.
		if via != ViaVIP {
			qctx, cancel := context.WithTimeout(ctx, w.opts.Timeout)
			var inRecovery bool
			err := conn.QueryRow(qctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery)
			cancel()
			if err == nil && inRecovery {
				w.mu.Lock()
				w.refused[via]++
				w.mu.Unlock()
				continue
			}
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				w.fail(via, err)
				conn.Close(context.Background())
				conn = nil
				continue
			}
		}
		id := w.next.Add(1)
		syncCancelled.Store(false)
		sent := time.Now()
		ictx, cancel := context.WithTimeout(ctx, w.opts.Timeout)
		var timer *time.Timer
		if w.opts.CancelAfter > 0 {
			pg := conn.PgConn()
			timer = time.AfterFunc(w.opts.CancelAfter, func() {
				cctx, ccancel := context.WithTimeout(ctx, time.Second)
				defer ccancel()
				_ = pg.CancelRequest(cctx) // safe while the query runs: it dials anew
			})
		}
		var addrOf, walfile string
		var executed time.Time
		err := conn.QueryRow(ictx, insert, id, n).Scan(&addrOf, &executed, &walfile)
		if timer != nil {
			timer.Stop()
		}
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			var pgErr *pgconn.PgError
			if via != ViaVIP && errors.As(err, &pgErr) && pgErr.Code == "25006" { // read_only_sql_transaction
				w.mu.Lock()
				w.refused[via]++
				w.mu.Unlock()
				continue
			}
			w.fail(via, err)
			if !errors.As(err, &pgErr) || conn.IsClosed() {
				conn.Close(context.Background())
				conn = nil
			}
			continue
		}
		a := Ack{ID: id, Via: via, Sent: sent, At: time.Now(), Executed: executed, Host: addrOf, CancelAcked: syncCancelled.Load()}
		if len(walfile) >= 8 {
			if tli, err := strconv.ParseUint(walfile[:8], 16, 32); err == nil {
				a.Timeline = uint32(tli)
			}
		}
		for _, h := range w.c.Hosts {
			if h.IP.String() == addrOf {
				a.Host = h.Name
			}
		}
		w.mu.Lock()
		w.acks = append(w.acks, a)
		w.mu.Unlock()
	}
}

func (w *Writer) fail(via string, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if via != ViaVIP {
		w.failed[via]++
		return
	}
	w.errors++
	w.lastErr = err.Error()
}

// Stop ends the sessions and waits for them.
func (w *Writer) Stop() {
	w.cancel()
	w.wg.Wait()
}

// Table is the table the writer inserts into.
func (w *Writer) Table() string { return w.opts.Table }

// Acks returns the acknowledgements so far (plain and cancel-acknowledged,
// through the VIP and direct), in the order they arrived.
func (w *Writer) Acks() []Ack {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Ack(nil), w.acks...)
}

// Errors is the number of failed attempts through the VIP and the last
// error.
func (w *Writer) Errors() (int, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.errors, w.lastErr
}

// DirectSummary says, per host, what the direct sessions saw: inserts
// acknowledged, refused by a read-only server, failed otherwise.
func (w *Writer) DirectSummary() string {
	acks := w.Acks()
	w.mu.Lock()
	defer w.mu.Unlock()
	var parts []string
	for _, h := range w.c.Hosts {
		n := 0
		for _, a := range acks {
			if a.Via == h.Name {
				n++
			}
		}
		parts = append(parts, fmt.Sprintf("%s: %d acknowledged, %d refused (read-only), %d failed", h.Name, n, w.refused[h.Name], w.failed[h.Name]))
	}
	return strings.Join(parts, "; ")
}

// Status is a one-line summary for logs.
func (w *Writer) Status() string {
	n, last := w.Errors()
	return fmt.Sprintf("%d acknowledged, %d failed attempts through the VIP (last: %s)", len(w.Acks()), n, last)
}

// FirstAckSentAfter is the earliest acknowledgement through the VIP of an
// insert sent after t, by a host not in notOn. An insert sent before t and
// acknowledged after it says nothing about the cluster after t, so it does
// not count; nor do direct sessions, which say nothing about the VIP.
func (w *Writer) FirstAckSentAfter(t time.Time, notOn ...string) (Ack, bool) {
	var best Ack
	found := false
	for _, a := range w.Acks() {
		if a.Via != ViaVIP || !a.Sent.After(t) || slices.Contains(notOn, a.Host) {
			continue
		}
		if !found || a.At.Before(best.At) {
			best, found = a, true
		}
	}
	return best, found
}

// AwaitAckSentAfter polls until an insert sent after t (by a host not in
// notOn) is acknowledged through the VIP, and returns it.
func (w *Writer) AwaitAckSentAfter(ctx context.Context, t time.Time, timeout time.Duration, notOn ...string) (Ack, error) {
	var ack Ack
	err := wait.Until(ctx, timeout, func() (bool, string) {
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

// Missing returns the plainly acknowledged ids absent from h's copy of the
// table, in order (cancel-acknowledged ones are the caller's to judge). The
// acknowledgements are taken before the table is read, so a writer still
// running cannot make a row look missing.
func (w *Writer) Missing(ctx context.Context, h *Host) ([]int64, error) {
	acks := w.Acks()
	have, err := w.c.IDs(ctx, h, w.opts.Table)
	if err != nil {
		return nil, err
	}
	var missing []int64
	for _, a := range acks {
		if !a.CancelAcked && !have[a.ID] {
			missing = append(missing, a.ID)
		}
	}
	sort.Slice(missing, func(i, j int) bool { return missing[i] < missing[j] })
	return missing, nil
}

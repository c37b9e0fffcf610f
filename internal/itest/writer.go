package itest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgha/pgha/internal/localcluster"
	"github.com/pgha/pgha/internal/wait"
)

// Ack is one acknowledged insert.
type Ack struct {
	ID int64
	// Via is how it was sent: WriterTargets.Via for a session to the
	// primary (through the router on the VIP, or to the node the agents
	// name primary), or the name of the host whose PostgreSQL a direct
	// session talks to (as a client behind HAProxy's /primary check, or
	// one configured with a host's address, would).
	Via  string
	Sent time.Time // when the INSERT was sent
	At   time.Time // when its acknowledgement arrived
	// Executed is the server's clock_timestamp() while it ran the INSERT,
	// before its commit (every namespace shares the kernel's clock, so it
	// compares with Sent and At).
	Executed time.Time
	// Host is whose PostgreSQL acknowledged it: the WriterHost whose Addr
	// is the server's (inet_server_addr(), inet_server_port()), else that
	// address.
	Host     string
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

// Endpoint says where a session connects: the configuration of a new
// connection (address, user, and a DialFunc for a session that must start
// in a network namespace). It may do I/O (ask the agents which node is the
// primary) and is called before every connection; the writer adds its
// timeout and notice handler.
type Endpoint func(ctx context.Context) (*pgx.ConnConfig, error)

// WriterHost is one member's PostgreSQL as the writer knows it.
type WriterHost struct {
	Name string
	// Addr is the server's address as it reports it (inet_server_addr(),
	// inet_server_port()): an insert it acknowledges is recorded with Name.
	Addr netip.AddrPort
	// Direct reaches it the way a client does, for WriterOptions.Direct.
	Direct Endpoint
	// Read reaches it to read its copy of the table (Missing); default
	// Direct. It may differ: from inside the host's namespace, which works
	// while the host is cut off from the client.
	Read Endpoint
}

// WriterTargets say where a Writer's sessions connect; the cluster
// harnesses fill them (LoopbackTargets, netcluster's Cluster.StartWriter).
type WriterTargets struct {
	// Primary is how the WriterOptions.Conns sessions reach the primary,
	// the way an application does: through the router on the VIP, or by
	// asking the agents which node is the primary.
	Primary Endpoint
	// Via names those sessions in Ack.Via; default "primary".
	Via string
	// Rediscover: a session to Primary reconnects after every failed
	// insert, an SQL error too, because Primary chose one server, which
	// may have stopped being the primary. Without it a session keeps its
	// connection after an SQL error (a router behind it re-routes) and
	// reconnects after any other error.
	Rediscover bool
	// Hosts are the members, in the order DirectSummary lists them.
	Hosts []WriterHost
}

// WriterOptions configure a Writer. Zero values take the defaults.
type WriterOptions struct {
	Table string // default "acks"
	// Conns is the number of concurrent sessions to the primary, each
	// inserting in turn; default 2.
	Conns int
	// Interval is each primary session's pause between inserts; default
	// 20ms.
	Interval time.Duration
	// Direct adds one session per host, to that host's PostgreSQL
	// (WriterHost.Direct), inserting every DirectInterval (default 50ms)
	// whatever the host's role: a standby refuses (counted, not an error;
	// asked with pg_is_in_recovery() first, not by a failing INSERT); a
	// deposed primary that still acknowledges is what the checks look for.
	Direct         bool
	DirectInterval time.Duration
	// CancelAfter, if set, is the application's statement timeout: an
	// insert not answered by then gets a CancelRequest (through the router
	// for sessions through it), as a client library's timeout would send.
	// A commit waiting for its synchronous standby then returns as
	// committed with a WARNING, which the writer records as
	// Ack.CancelAcked.
	CancelAfter time.Duration
	// Timeout bounds one insert (and one connection attempt); default 3s,
	// and at least CancelAfter+3s. An insert that times out has an unknown
	// outcome and is not counted; its session reconnects.
	Timeout time.Duration
}

// Writer inserts rows with unique ids into the primary the way an
// application would (WriterTargets.Primary) and, with WriterOptions.Direct,
// directly into every host's PostgreSQL; it records every acknowledgement.
// An insert whose outcome is unknown (error, timeout) is not recorded; its
// id is never reused.
//
// Its goroutines are owned by the Writer: Stop ends them. Acks, Errors and
// the other readers may be called from any goroutine meanwhile.
type Writer struct {
	to   WriterTargets
	opts WriterOptions
	next atomic.Int64

	mu      sync.Mutex
	acks    []Ack
	errors  int // sessions to the primary
	lastErr string
	refused map[string]int // direct sessions, per host: the server is read-only
	failed  map[string]int // direct sessions, per host: other errors

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// StartWriter creates the table through to.Primary (trying for up to a
// minute) and starts the sessions.
func StartWriter(ctx context.Context, to WriterTargets, opts WriterOptions) (*Writer, error) {
	if to.Via == "" {
		to.Via = "primary"
	}
	to.Hosts = slices.Clone(to.Hosts)
	for i := range to.Hosts {
		if to.Hosts[i].Read == nil {
			to.Hosts[i].Read = to.Hosts[i].Direct
		}
	}
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
	w := &Writer{to: to, opts: opts, refused: map[string]int{}, failed: map[string]int{}}
	create := fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s (id bigint PRIMARY KEY, session int, at timestamptz DEFAULT clock_timestamp())", pgx.Identifier{opts.Table}.Sanitize())
	err := wait.Until(ctx, time.Minute, func() (bool, string) {
		conn, err := w.connect(ctx, to.Primary, nil)
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
		return nil, fmt.Errorf("create table %s through %s: %w", opts.Table, to.Via, err)
	}
	wctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	for i := range opts.Conns {
		w.wg.Add(1)
		go w.session(wctx, i, to.Via, to.Primary, opts.Interval)
	}
	if opts.Direct {
		for i, h := range to.Hosts {
			w.wg.Add(1)
			go w.session(wctx, opts.Conns+i, h.Name, h.Direct, opts.DirectInterval)
		}
	}
	return w, nil
}

// connect opens a session to e within the writer's timeout; onNotice, if
// set, receives the server's notices.
func (w *Writer) connect(ctx context.Context, e Endpoint, onNotice pgconn.NoticeHandler) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, w.opts.Timeout)
	defer cancel()
	cfg, err := e(ctx)
	if err != nil {
		return nil, err
	}
	cfg.ConnectTimeout = w.opts.Timeout
	if onNotice != nil {
		cfg.OnNotice = onNotice
	}
	return pgx.ConnectConfig(ctx, cfg)
}

// syncCancelWarning starts PostgreSQL's WARNING for a commit whose wait for
// a synchronous standby was cancelled (syncrep.c).
const syncCancelWarning = "canceling wait for synchronous replication"

// session inserts through e until ctx ends: a session to the primary when
// via is WriterTargets.Via, else a direct one to the host named via.
func (w *Writer) session(ctx context.Context, n int, via string, e Endpoint, interval time.Duration) {
	defer w.wg.Done()
	direct := via != w.to.Via
	insert := fmt.Sprintf("INSERT INTO %s (id, session) VALUES ($1, $2) RETURNING coalesce(host(inet_server_addr()), ''), coalesce(inet_server_port(), 0), clock_timestamp(), pg_walfile_name(pg_current_wal_lsn())", pgx.Identifier{w.opts.Table}.Sanitize())
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
			if conn, err = w.connect(ctx, e, onNotice); err != nil {
				w.fail(via, err)
				continue
			}
		}
		// A direct session asks first whether the server is a standby, and
		// counts it refused without an INSERT: the refusals would otherwise
		// fill every standby's server log, which is the evidence read
		// after a failure. A server promoted in between gets the INSERT.
		if direct {
			qctx, cancel := context.WithTimeout(ctx, w.opts.Timeout)
			var inRecovery bool
			err := conn.QueryRow(qctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery)
			cancel()
			if err == nil && inRecovery {
				w.refuse(via)
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
		var addr, walfile string
		var port int
		var executed time.Time
		err := conn.QueryRow(ictx, insert, id, n).Scan(&addr, &port, &executed, &walfile)
		if timer != nil {
			timer.Stop()
		}
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			var pgErr *pgconn.PgError
			if direct && errors.As(err, &pgErr) && pgErr.Code == "25006" { // read_only_sql_transaction
				w.refuse(via)
				continue
			}
			w.fail(via, err)
			if !errors.As(err, &pgErr) || conn.IsClosed() || (!direct && w.to.Rediscover) {
				conn.Close(context.Background())
				conn = nil
			}
			continue
		}
		a := Ack{ID: id, Via: via, Sent: sent, At: time.Now(), Executed: executed, Host: w.hostOf(addr, port), CancelAcked: syncCancelled.Load()}
		if len(walfile) >= 8 {
			if tli, err := strconv.ParseUint(walfile[:8], 16, 32); err == nil {
				a.Timeline = uint32(tli)
			}
		}
		w.mu.Lock()
		w.acks = append(w.acks, a)
		w.mu.Unlock()
	}
}

// hostOf names the host whose server reports addr and port.
func (w *Writer) hostOf(addr string, port int) string {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return addr
	}
	ap := netip.AddrPortFrom(ip, uint16(port))
	for _, h := range w.to.Hosts {
		if h.Addr == ap {
			return h.Name
		}
	}
	return ap.String()
}

func (w *Writer) refuse(via string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.refused[via]++
}

func (w *Writer) fail(via string, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if via != w.to.Via {
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
// to the primary and direct), in the order they arrived.
func (w *Writer) Acks() []Ack {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Ack(nil), w.acks...)
}

// Errors is the number of failed attempts of the sessions to the primary
// and the last error.
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
	for _, h := range w.to.Hosts {
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
	return fmt.Sprintf("%d acknowledged, %d failed attempts via %s (last: %s)", len(w.Acks()), n, w.to.Via, last)
}

// FirstAckSentAfter is the earliest acknowledgement to a session to the
// primary of an insert sent after t, by a host not in notOn. An insert sent
// before t and acknowledged after it says nothing about the cluster after
// t, so it does not count; nor do direct sessions, which say nothing about
// how an application reaches the primary.
func (w *Writer) FirstAckSentAfter(t time.Time, notOn ...string) (Ack, bool) {
	var best Ack
	found := false
	for _, a := range w.Acks() {
		if a.Via != w.to.Via || !a.Sent.After(t) || slices.Contains(notOn, a.Host) {
			continue
		}
		if !found || a.At.Before(best.At) {
			best, found = a, true
		}
	}
	return best, found
}

// AwaitAckSentAfter polls until an insert sent after t (by a host not in
// notOn) is acknowledged to a session to the primary, and returns it.
func (w *Writer) AwaitAckSentAfter(ctx context.Context, t time.Time, timeout time.Duration, notOn ...string) (Ack, error) {
	var ack Ack
	err := wait.Until(ctx, timeout, func() (bool, string) {
		var ok bool
		ack, ok = w.FirstAckSentAfter(t, notOn...)
		return ok, w.Status()
	})
	return ack, err
}

// Missing returns the plainly acknowledged ids absent from the copy of the
// table on the host named host (read through WriterHost.Read), in order;
// cancel-acknowledged ones are the caller's to judge. The acknowledgements
// are taken before the table is read, so a writer still running cannot make
// a row look missing.
func (w *Writer) Missing(ctx context.Context, host string) ([]int64, error) {
	acks := w.Acks()
	i := slices.IndexFunc(w.to.Hosts, func(h WriterHost) bool { return h.Name == host })
	if i < 0 {
		return nil, fmt.Errorf("missing rows: no host %q", host)
	}
	conn, err := w.connect(ctx, w.to.Hosts[i].Read, nil)
	if err != nil {
		return nil, fmt.Errorf("read %s on %s: %w", w.opts.Table, host, err)
	}
	defer conn.Close(context.Background())
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	rows, err := conn.Query(qctx, fmt.Sprintf("SELECT id FROM %s", pgx.Identifier{w.opts.Table}.Sanitize()))
	if err != nil {
		return nil, fmt.Errorf("read %s on %s: %w", w.opts.Table, host, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("read %s on %s: %w", w.opts.Table, host, err)
	}
	have := make(map[int64]bool, len(ids))
	for _, id := range ids {
		have[id] = true
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

// LoopbackTargets are the targets of a Writer on a loopback cluster: the
// sessions to the primary connect to the node whose agent answers GET
// /primary with 200 (as a client behind HAProxy's check would) and look
// again after every failed insert; a direct session or a read goes to the
// node's port on 127.0.0.1.
func LoopbackTargets(lc *localcluster.Cluster) WriterTargets {
	to := WriterTargets{Via: "primary", Rediscover: true}
	client := &http.Client{Timeout: 300 * time.Millisecond}
	to.Primary = func(ctx context.Context) (*pgx.ConnConfig, error) {
		for _, n := range lc.Nodes() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, n.APIURL+"/primary", nil)
			resp, err := client.Do(req)
			if err != nil {
				continue
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return loopbackConfig(n.PGPort)
			}
		}
		return nil, fmt.Errorf("no node answers /primary with 200")
	}
	for _, n := range lc.Nodes() {
		port := n.PGPort
		to.Hosts = append(to.Hosts, WriterHost{
			Name:   n.Name,
			Addr:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(port)),
			Direct: func(context.Context) (*pgx.ConnConfig, error) { return loopbackConfig(port) },
		})
	}
	return to
}

// loopbackConfig is Dial's configuration: postgres on 127.0.0.1:port.
func loopbackConfig(port int) (*pgx.ConnConfig, error) {
	return pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable connect_timeout=2", port))
}

package router_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgha/pgha/internal/wait"
	"github.com/pgha/pgha/router"
)

// logRecorder is a slog.Handler that keeps every record.
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, r.Clone())
	return nil
}

// about counts the records at Info or above whose attribute key is val.
func (l *logRecorder) about(key, val string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.recs {
		if r.Level < slog.LevelInfo {
			continue
		}
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == key && a.Value.String() == val {
				n++
			}
			return true
		})
	}
	return n
}

func testHostile(t *testing.T, cl *cluster) {
	t.Run("HugeLength", func(t *testing.T) { testHugeLength(t, cl) })
	t.Run("MaxClientConn", func(t *testing.T) { testMaxClientConn(t, cl) })
	t.Run("LoginTimeout", func(t *testing.T) { testLoginTimeout(t, cl) })
}

// testHugeLength: clients announcing a 1 GiB message, at startup and after
// logging in, then streaming garbage, are refused at once with one
// ErrorResponse and one log line each; the router allocates nothing of
// that size, and a well-behaved client's queries meanwhile stay fast.
func testHugeLength(t *testing.T, cl *cluster) {
	logs := &logRecorder{}
	cfg := routerConfig(router.PoolTransaction)
	cfg.Logger = slog.New(logs)
	tr := startRouter(t, cl, cfg)
	ctx := testContext(t)
	good := connect(t, tr.rw, trustUser, "")
	const gib = 1 << 30
	startup := binary.BigEndian.AppendUint32(nil, gib)
	query := binary.BigEndian.AppendUint32([]byte{'Q'}, gib)
	protoErrs := tr.Snapshot().ProtocolErrors

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	const perKind = 8
	type result struct {
		addr    string
		code    string
		elapsed time.Duration
		err     error
	}
	results := make(chan result, 2*perKind)
	var wg sync.WaitGroup
	for i := range 2 * perKind {
		var conn net.Conn
		var fe *pgproto3.Frontend
		hdr := startup
		if i%2 == 1 {
			conn, fe = rawSession(t, tr.rw)
			hdr = query
		} else {
			conn = dialRaw(t, tr.rw)
			fe = pgproto3.NewFrontend(conn, conn)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			res := result{addr: conn.LocalAddr().String()}
			if _, err := conn.Write(hdr); err != nil {
				res.err = err
				results <- res
				return
			}
			// Keep streaming what the header announced; the router must
			// answer without waiting for it. Write errors are expected
			// once the router closes.
			go func() {
				junk := make([]byte, 64<<10)
				for range 16 {
					if _, err := conn.Write(junk); err != nil {
						return
					}
				}
			}()
			for {
				msg, err := fe.Receive()
				if err != nil {
					res.err = err
					break
				}
				if e, ok := msg.(*pgproto3.ErrorResponse); ok {
					res.code = e.Code
					res.elapsed = time.Since(start)
					break
				}
			}
			results <- res
		}()
	}
	// Meanwhile, the well-behaved client.
	var slowest time.Duration
	for i := range 50 {
		start := time.Now()
		var n int
		if err := good.QueryRow(ctx, "SELECT $1::int", i).Scan(&n); err != nil || n != i {
			t.Fatalf("query %d during the attack: %d %v", i, n, err)
		}
		slowest = max(slowest, time.Since(start))
	}
	wg.Wait()
	close(results)
	runtime.ReadMemStats(&after)

	if slowest > time.Second {
		t.Errorf("a query took %v while hostile clients were refused", slowest)
	}
	if grown := after.TotalAlloc - before.TotalAlloc; grown > 256<<20 {
		t.Errorf("%d MiB allocated while refusing %d clients that announced 1 GiB", grown>>20, 2*perKind)
	}
	for res := range results {
		if res.code != "08P01" {
			t.Errorf("client %s: want an 08P01 ErrorResponse, got code %q (%v)", res.addr, res.code, res.err)
			continue
		}
		if res.elapsed > 2*time.Second {
			t.Errorf("client %s refused after %v, want at once", res.addr, res.elapsed)
		}
		// The router logs when it has sent the error: poll.
		wait.For(t, 5*time.Second, "the router to log refusing "+res.addr, func() (bool, string) {
			n := logs.about("client", res.addr)
			return n == 1, fmt.Sprintf("client %s: %d log lines, want 1", res.addr, n)
		})
	}
	if d := tr.Snapshot().ProtocolErrors - protoErrs; d != 2*perKind {
		t.Errorf("protocol errors counted %d, want %d", d, 2*perKind)
	}
}

// testMaxClientConn: the client over the limit gets PostgreSQL's error,
// the others keep working, and a freed slot is usable again.
func testMaxClientConn(t *testing.T, cl *cluster) {
	logs := &logRecorder{}
	cfg := routerConfig(router.PoolTransaction)
	cfg.MaxClientConn = 2
	cfg.Logger = slog.New(logs)
	tr := startRouter(t, cl, cfg)
	ctx := testContext(t)
	c1 := connect(t, tr.rw, trustUser, "")
	c2 := connect(t, tr.ro, trustUser, "") // the limit spans both listeners
	for _, addr := range []string{tr.rw, tr.ro} {
		_, err := pgx.Connect(ctx, connString(addr, trustUser, ""))
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "53300" || pgErr.Message != "sorry, too many clients already" {
			t.Fatalf("third client on %s: want 53300 \"sorry, too many clients already\", got %v", addr, err)
		}
	}
	for _, c := range []*pgx.Conn{c1, c2} {
		var one int
		if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatalf("a client within the limit: %v", err)
		}
	}
	if n := logs.about("code", "53300"); n != 2 {
		t.Errorf("%d log lines for 2 refusals", n)
	}
	c1.Close(ctx)
	wait.For(t, 10*time.Second, "the router to accept a client again", func() (bool, string) {
		c, err := pgx.Connect(ctx, connString(tr.rw, trustUser, ""))
		if err != nil {
			return false, err.Error()
		}
		c.Close(ctx)
		return true, ""
	})
}

// testLoginTimeout: clients that do not finish logging in within
// ClientLoginTimeout are dropped with an error; a logged-in session idle
// for longer is not.
func testLoginTimeout(t *testing.T, cl *cluster) {
	cfg := routerConfig(router.PoolTransaction)
	cfg.ClientLoginTimeout = 500 * time.Millisecond
	tr := startRouter(t, cl, cfg)
	ctx := testContext(t)
	idle := connect(t, tr.rw, trustUser, "")
	rejected := tr.Snapshot().ClientsRejected
	startupMsg, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": scramUser, "database": "postgres"}}).Encode(nil)
	for _, tc := range []struct {
		name string
		send []byte
	}{
		{"silent", nil},
		{"half a startup packet", startupMsg[:len(startupMsg)/2]},
		{"no answer to the SCRAM challenge", startupMsg},
	} {
		conn := dialRaw(t, tr.rw)
		start := time.Now()
		if _, err := conn.Write(tc.send); err != nil {
			t.Fatal(err)
		}
		fe := pgproto3.NewFrontend(conn, conn)
		var code string
		for {
			msg, err := fe.Receive()
			if err != nil {
				if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
					t.Errorf("%s: %v", tc.name, err)
				}
				break
			}
			if e, ok := msg.(*pgproto3.ErrorResponse); ok {
				code = e.Code
			}
		}
		elapsed := time.Since(start)
		if code != "57014" || elapsed < 400*time.Millisecond || elapsed > 5*time.Second {
			t.Errorf("%s: dropped after %v with error %q, want 57014 after the 500ms login timeout", tc.name, elapsed, code)
		}
	}
	if d := tr.Snapshot().ClientsRejected - rejected; d != 3 {
		t.Errorf("rejected clients counted %d, want 3", d)
	}
	// idle logged in before all that, more than the timeout ago.
	var one int
	if err := idle.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("a logged-in session idle longer than the login timeout: %v", err)
	}
}

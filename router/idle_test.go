package router

import (
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestIdleSessionsHoldNothing: a logged-in transaction-mode client that
// sends nothing costs no goroutine, no read buffer and no decoder, only
// its session's state (issue 20: 10 000 idle clients at <= 4 kB each; the
// router held a goroutine, a 32 kB read buffer and pgproto3's 8 kB one per
// client, 13-15 kB resident). And a client that leaves with Terminate
// ends its session on the event loop.
func TestIdleSessionsHoldNothing(t *testing.T) {
	r := fuzzRouter(t) // transaction mode, trust, server parameters known: logins need no server
	if r.poller == nil {
		t.Fatal("the fast path is off; this test is about the sessions it holds")
	}
	ln := listen(t)
	go r.Serve(t.Context(), ln, ReadWrite)
	login := startupBytes(map[string]string{"user": "u", "database": "postgres"})
	const n = 500
	runtime.GC()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	goroutines := runtime.NumGoroutine()
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(login); err != nil {
			t.Fatal(err)
		}
		fe := pgproto3.NewFrontend(c, c)
		for {
			m, err := fe.Receive()
			if err != nil {
				t.Fatalf("login: %v", err)
			}
			if _, ok := m.(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
	}
	// Each session's goroutine ends once the session is on the fast path.
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > goroutines+n/10 {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines for %d idle clients (%d before they logged in): a goroutine per idle session", runtime.NumGoroutine(), n, goroutines)
		}
		time.Sleep(10 * time.Millisecond)
	}
	runtime.GC()
	runtime.GC() // sync.Pool keeps what it was given for one more cycle
	runtime.ReadMemStats(&after)
	perClient := (int64(after.HeapInuse+after.StackInuse) - int64(before.HeapInuse+before.StackInuse)) / n
	t.Logf("%d idle clients: %d bytes of heap and stack each (client sockets of this test included)", n, perClient)
	if !raceOn && perClient > 4096 {
		t.Errorf("an idle client costs %d bytes of heap and stack, want at most 4096", perClient)
	}

	// Terminate from each: every session ends without a goroutine of its own.
	handBacks := r.stats.FastHandBacks.Load()
	for _, c := range conns {
		if _, err := c.Write([]byte{'X', 0, 0, 0, 4}); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan struct{})
	go func() {
		r.sessions.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("sessions still open 10 s after their clients sent Terminate")
	}
	if got := r.stats.FastHandBacks.Load() - handBacks; got != 0 {
		t.Errorf("%d sessions went back to a goroutine to read their Terminate, want 0", got)
	}
	r.mu.Lock()
	left := r.nClient
	r.mu.Unlock()
	if left != 0 {
		t.Errorf("%d clients still counted against MaxClientConn", left)
	}
}

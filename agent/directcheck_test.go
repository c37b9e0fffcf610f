package agent

import (
	"context"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgha/pgha/postgres/pgtest"
)

// The leader's direct check of a silent primary, against a real server:
// only "nothing accepts the connection" is down; every answer, and an
// accepted connection that never answers, is alive (DESIGN "Dead means
// gone"). Before the check bounded only its dial, an accepted connection
// with no reply in two seconds counted as down.
func TestMayBeWriter(t *testing.T) {
	inst := pgtest.StartPrimary(t)
	port := inst.Config().Port
	ctx := context.Background()
	const dial = 250 * time.Millisecond

	if !mayBeWriter(ctx, "127.0.0.1", port, pgtest.MonitorUser, pgtest.MonitorPassword, dial) {
		t.Error("a running primary was judged down")
	}
	if !mayBeWriter(ctx, "127.0.0.1", port, pgtest.MonitorUser, "wrong password", dial) {
		t.Error("a primary that refused our password was judged down")
	}
	if err := inst.Exec(ctx, "ALTER ROLE "+pgtest.MonitorUser+" CONNECTION LIMIT 0"); err != nil {
		t.Fatal(err)
	}
	if !mayBeWriter(ctx, "127.0.0.1", port, pgtest.MonitorUser, pgtest.MonitorPassword, dial) {
		t.Error(`a primary that answered "too many connections" was judged down`)
	}

	// Something accepts on the port and never answers: a postmaster too
	// loaded to fork a backend looks the same from here.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	if !mayBeWriter(ctx, "127.0.0.1", silent.Addr().(*net.TCPAddr).Port, pgtest.MonitorUser, pgtest.MonitorPassword, dial) {
		t.Error("an accepted connection with no reply was judged down")
	}

	// Nothing listens: refused, down.
	closed := pgtest.FreePort(t)
	if mayBeWriter(ctx, "127.0.0.1", closed, pgtest.MonitorUser, pgtest.MonitorPassword, dial) {
		t.Error("a port where nothing listens was judged alive")
	}
}

// A host that drops packets answers no connect. pgx would dial once per
// fallback (sslmode=prefer: TLS, then plain), each waiting out the dial
// timeout; the check dials once, so it stays within the budget the leader
// plans for (directCheckBudget). Measured before on the network-namespace
// cluster: a two-try check took 1.0 s against a 0.5 s budget, and the
// failover waited for it.
func TestMayBeWriterDialsOnceWhenUnanswered(t *testing.T) {
	var dials atomic.Int32
	dropped := func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond): // the dial timeout
		}
		return nil, &net.OpError{Op: "dial", Net: network, Err: os.ErrDeadlineExceeded}
	}
	if mayBeWriterVia(context.Background(), "127.0.0.1", 5432, "pgha_monitor", "x", dropped) {
		t.Error("a host that answers no connect counts as a possible writer")
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("dialed %d times; want 1 (each unanswered dial waits out the dial timeout)", n)
	}
}

// The direct check's second try starts while the first still waits for a
// connect that is never answered, so a host that drops packets costs one
// dial timeout, not two one after the other (the check a leader elected
// after the fence deadline makes before it fails over: 0.5 s of a 2.7 s
// host loss in the campaign). Either try saying alive is the answer; a
// quick "no" starts the second at once.
func TestTwoTries(t *testing.T) {
	ctx := context.Background()
	t.Run("the second starts while the first waits", func(t *testing.T) {
		release := make(chan struct{})
		started := make(chan int, 2)
		var n atomic.Int32
		done := make(chan bool, 1)
		go func() {
			done <- twoTries(ctx, time.Millisecond, func(ctx context.Context) bool {
				i := int(n.Add(1))
				started <- i
				<-release // an unanswered connect, until its timeout
				return false
			})
		}()
		for want := 1; want <= 2; want++ {
			select {
			case i := <-started:
				if i != want {
					t.Fatalf("try %d started, want %d", i, want)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("try %d did not start while try 1 was still waiting", want)
			}
		}
		close(release)
		if <-done {
			t.Error("two unanswered tries: judged alive")
		}
	})
	t.Run("one alive is enough, and the other is cancelled", func(t *testing.T) {
		var cancelled atomic.Bool
		var n atomic.Int32
		alive := twoTries(ctx, time.Millisecond, func(ctx context.Context) bool {
			if n.Add(1) == 1 {
				<-ctx.Done() // the first hangs until the answer is in
				cancelled.Store(true)
				return false
			}
			return true
		})
		if !alive {
			t.Error("the second try found it alive: judged down")
		}
		if !waitTrue(&cancelled) {
			t.Error("the hanging first try was not cancelled")
		}
	})
	t.Run("a quick no starts the second at once", func(t *testing.T) {
		var n atomic.Int32
		start := time.Now()
		if twoTries(ctx, time.Hour, func(context.Context) bool { n.Add(1); return false }) {
			t.Error("two refusals: judged alive")
		}
		if n.Load() != 2 || time.Since(start) > time.Minute {
			t.Errorf("%d tries; the second waited for the stagger", n.Load())
		}
	})
}

func waitTrue(b *atomic.Bool) bool {
	for range 1000 {
		if b.Load() {
			return true
		}
		time.Sleep(time.Millisecond)
	}
	return false
}

package agent

import (
	"context"
	"net"
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

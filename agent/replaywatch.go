package agent

import (
	"fmt"
	"sync"
	"time"

	"github.com/pgha/pgha/postgres"
)

// A standby that receives WAL but does not replay it (its startup process
// stuck on a record it cannot apply — "incorrect prev-link" after a fork
// nobody noticed —, a replay paused by pg_wal_replay_pause(), a long
// recovery conflict) answers reads from a past it does not leave: it is
// not replaying the primary's WAL, so it must not count as streaming
// (`list`), answer /replica 200 or get reads. Its WAL receiver can show
// "streaming" all the while; replay progress cannot.

// replayStallAfter is how long replay may stand still while received WAL
// waits before the standby stops counting as streaming: longer than a
// pause of replay for a checkpoint or a short conflict, much shorter than
// what an operator would call a broken standby.
const replayStallAfter = 5 * time.Second

// replayWatch follows a standby's replay position between observations.
type replayWatch struct {
	mu       sync.Mutex
	replayed postgres.LSN
	since    time.Time // the first observation of replay standing at replayed with WAL waiting
}

// stalled returns why pg's replay has not moved for replayStallAfter
// while received WAL waits for it, or "". now is the observation's time.
func (w *replayWatch) stalled(pg postgres.Status, now time.Time) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !pg.Running || !pg.InRecovery || pg.ReceivedLSN <= pg.ReplayedLSN {
		// Not a standby, or caught up: nothing waits.
		w.replayed, w.since = pg.ReplayedLSN, time.Time{}
		return ""
	}
	if pg.ReplayedLSN != w.replayed || w.since.IsZero() {
		// Moving, or WAL waits from now on: the clock starts here.
		w.replayed, w.since = pg.ReplayedLSN, now
		return ""
	}
	if d := now.Sub(w.since); d >= replayStallAfter {
		return fmt.Sprintf("replay stands still at %s for %s although WAL up to %s was received", pg.ReplayedLSN, d.Round(time.Second), pg.ReceivedLSN)
	}
	return ""
}

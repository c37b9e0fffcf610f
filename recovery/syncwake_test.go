package recovery_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgha/pgha/internal/wait"
	"github.com/pgha/pgha/postgres"
)

// A commit that waits for a lost synchronous standby goes through as soon
// as synchronous_standby_names names a live one that holds its WAL and
// ReleaseSyncWaiters runs, not when that idle standby next reports on its
// own (wal_receiver_status_interval, set to a minute here so that the
// test fails without the release). Chaos, host loss of the synchronous
// standby: writes resumed only at the statement timeout, 2 s, although the
// set had been switched to the other standby 0.8 s earlier.
func TestReleaseSyncWaitersAfterTheSetChanged(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	passFile := writeRolesPassFile(t)
	a, b := primaryAndStandby(t, ctx, passFile, func(c *postgres.Config) {
		c.Parameters = map[string]string{"wal_receiver_status_interval": "60s"}
	})

	setSync := func(names ...string) {
		t.Helper()
		if err := a.SetSyncStandbyNames(names); err != nil {
			t.Fatal(err)
		}
		if err := a.Reload(ctx); err != nil {
			t.Fatal(err)
		}
		want := postgres.SyncStandbyNames(1, names)
		wait.For(t, 10*time.Second, "synchronous_standby_names "+want, func() (bool, string) {
			got, err := a.ShowSetting(ctx, "synchronous_standby_names")
			return err == nil && got == want, fmt.Sprintf("shown %q, %v", got, err)
		})
	}
	setSync("lost") // a standby that is gone

	cfg := a.Config()
	c, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%d user=%s dbname=postgres", cfg.SocketDir, cfg.Port, cfg.Superuser))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	committed := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, "INSERT INTO t VALUES ('waited')")
		committed <- err
	}()
	wait.For(t, 10*time.Second, "the insert to wait for the synchronous standby", func() (bool, string) {
		var n int
		err := a.Query(ctx, func(c *pgx.Conn) error {
			return c.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'").Scan(&n)
		})
		return err == nil && n == 1, fmt.Sprintf("%d waiting, %v", n, err)
	})

	setSync("pgha_b") // the standby that streams
	if err := a.ReleaseSyncWaiters(ctx, []string{"pgha_b"}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-committed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the insert still waits 5 s after the setting named the streaming standby and the waiters were released")
	}
	waitRow(t, ctx, b, "waited")
}

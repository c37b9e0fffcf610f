package chaos

import (
	"fmt"
	"testing"
	"time"

	"github.com/pgha/pgha/internal/itest"
)

// TestDoubleAcks checks the proof of two servers acknowledging at once on
// made-up acknowledgements (no root needed).
func TestDoubleAcks(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	// ack: id, host, timeline, executed and acknowledged at (ms).
	ack := func(id int64, host string, tl uint32, exec, at int) itest.Ack {
		return itest.Ack{ID: id, Host: host, Timeline: tl, Executed: ms(exec), At: ms(at), Sent: ms(exec - 1)}
	}
	cancelled := func(a itest.Ack) itest.Ack { a.CancelAcked = true; return a }
	for _, tc := range []struct {
		name        string
		acks        []itest.Ack
		cancelAcked bool
		want        []string // "A B start end"
	}{
		{"a clean failover", []itest.Ack{
			ack(1, "h1", 1, 0, 5), ack(2, "h1", 1, 100, 105), ack(3, "h1", 1, 200, 205),
			ack(4, "h2", 2, 2000, 2005), ack(5, "h2", 2, 2100, 2105),
		}, false, nil},
		{"the old primary acknowledges after the new one began", []itest.Ack{
			ack(1, "h1", 1, 0, 5), ack(2, "h1", 1, 300, 305),
			ack(3, "h2", 2, 100, 105), ack(4, "h2", 2, 400, 405),
		}, false, []string{"h1 (timeline 1) h2 (timeline 2) 105 300"}},
		{"one acknowledgement of the old primary inside the new one's span", []itest.Ack{
			ack(1, "h1", 1, 250, 260),
			ack(3, "h2", 2, 100, 105), ack(4, "h2", 2, 400, 405),
		}, false, []string{"h1 (timeline 1) h2 (timeline 2) 250 260"}},
		{"a slow acknowledgement whose window straddles the handover proves nothing", []itest.Ack{
			ack(1, "h1", 1, 0, 5), ack(2, "h1", 1, 90, 500),
			ack(3, "h2", 2, 100, 105), ack(4, "h2", 2, 400, 405),
		}, false, nil},
		{"one server on two timelines is a handover to itself", []itest.Ack{
			ack(1, "h1", 1, 0, 5), ack(2, "h1", 1, 300, 305),
			ack(3, "h1", 2, 100, 105), ack(4, "h1", 2, 400, 405),
		}, false, nil},
		{"cancel-acknowledged commits are judged apart", []itest.Ack{
			ack(1, "h1", 1, 0, 5), cancelled(ack(2, "h1", 1, 300, 305)),
			ack(3, "h2", 2, 100, 105), ack(4, "h2", 2, 400, 405),
		}, false, nil},
		{"and counted when asked for", []itest.Ack{
			ack(1, "h1", 1, 0, 5), cancelled(ack(2, "h1", 1, 300, 305)),
			ack(3, "h2", 2, 100, 105), ack(4, "h2", 2, 400, 405),
		}, true, []string{"h1 (timeline 1) h2 (timeline 2) 105 300"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, d := range DoubleAcks(tc.acks, tc.cancelAcked) {
				got = append(got, fmt.Sprintf("%s %s %d %d", d.A, d.B, d.Start.Sub(t0).Milliseconds(), d.End.Sub(t0).Milliseconds()))
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

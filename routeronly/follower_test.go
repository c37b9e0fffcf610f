package routeronly

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/internal/wait"
	"github.com/pgha/pgha/router"
)

func topo(epoch uint64, primary string, fence time.Duration) agent.RouterTopology {
	return agent.RouterTopology{
		Primary: primary, Epoch: epoch, FenceTimeout: fence, Version: primary,
		Backends: []router.Backend{
			{Name: "n1", Host: "127.0.0.1", Port: 5433, Primary: primary == "n1", Healthy: true},
			{Name: "n2", Host: "127.0.0.1", Port: 5434, Primary: primary == "n2", Healthy: true},
		},
	}
}

// The fence clock: a confirmation is good for the fence timeout counted
// from when its request was SENT; at and after that every backend is
// unhealthy and expired, and before any confirmation there is nothing.
func TestConfirmationExpiresFromTheSendTime(t *testing.T) {
	sent := time.Now()
	c := confirmation{topo: topo(3, "n1", time.Second), sent: sent}
	if got := c.validUntil(); !got.Equal(sent.Add(time.Second)) {
		t.Fatalf("validUntil %v, want sent + fence timeout %v", got, sent.Add(time.Second))
	}
	for _, tc := range []struct {
		at      time.Duration
		healthy bool
	}{{0, true}, {999 * time.Millisecond, true}, {time.Second, false}, {time.Hour, false}} {
		for _, b := range c.backendsAt(sent.Add(tc.at)) {
			if b.Healthy != tc.healthy || !b.ValidUntil.Equal(sent.Add(time.Second)) {
				t.Errorf("%s at sent+%v: healthy %v valid until %v; want healthy %v until sent+1s", b.Name, tc.at, b.Healthy, b.ValidUntil, tc.healthy)
			}
		}
	}
	for _, b := range (confirmation{}).backendsAt(time.Now()) {
		t.Errorf("no confirmation yet, but backend %s", b.Name)
	}
}

func newTestFollower(set *router.BackendSet) *Follower {
	return NewFollower([]string{"http://unused"}, http.DefaultClient, set, func(agent.RouterTopology) {}, slog.New(slog.DiscardHandler))
}

// A router that was frozen (SIGSTOP) sent its request before the freeze
// and gets the answer after waking: the answer is already expired, so
// the router publishes no healthy primary. An answer naming an older
// epoch than the one followed is ignored.
func TestFollowerAcceptsByEpochAndSendTime(t *testing.T) {
	set := router.NewBackendSet()
	f := newTestFollower(set)
	now := time.Now()
	f.accept(answer{topo: topo(2, "n1", time.Second), sent: now.Add(-5 * time.Second), from: "a"})
	f.publish(now)
	if primaryOf(set.Backends()) != "" || !f.fenced {
		t.Fatalf("an answer to a request sent 5s ago with a 1s fence: primary %q fenced %v; want none, fenced", primaryOf(set.Backends()), f.fenced)
	}
	f.accept(answer{topo: topo(2, "n1", time.Second), sent: now, from: "a"})
	f.publish(now)
	if primaryOf(set.Backends()) != "n1" || f.fenced {
		t.Fatalf("a fresh answer: primary %q fenced %v; want n1, not fenced", primaryOf(set.Backends()), f.fenced)
	}
	f.accept(answer{topo: topo(3, "n2", time.Second), sent: now, from: "b"})
	f.accept(answer{topo: topo(2, "n1", time.Second), sent: now.Add(time.Millisecond), from: "c"}) // a deposed leader's, late
	f.publish(now)
	if primaryOf(set.Backends()) != "n2" {
		t.Fatalf("after epoch 3 (n2) then a late epoch 2 (n1): primary %q, want n2", primaryOf(set.Backends()))
	}
}

func primaryOf(bs []router.Backend) string {
	for _, b := range bs {
		if b.Primary && b.Healthy {
			return b.Name
		}
	}
	return ""
}

// The whole loop against a fake agent: the router follows its long poll,
// and when the agent stops answering it fences once the fence timeout
// has passed since the last answered request was sent (not before the
// last answer, not much after), and recovers when the agent answers again.
func TestFollowerFencesWhenTheAgentsGoSilent(t *testing.T) {
	const fence = 600 * time.Millisecond
	var silent atomic.Bool
	var lastServed atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if silent.Load() {
			http.Error(w, `{"error":"cut off"}`, http.StatusServiceUnavailable)
			return
		}
		lastServed.Store(time.Now().UnixNano())
		d, _ := time.ParseDuration(r.URL.Query().Get("wait"))
		if r.URL.Query().Get("version") == "n1" {
			select { // a long poll with no change: answer when the wait ends
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		json.NewEncoder(w).Encode(topo(1, "n1", fence))
	}))
	defer srv.Close()
	set := router.NewBackendSet()
	f := NewFollower([]string{srv.URL}, srv.Client(), set, func(agent.RouterTopology) {}, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	if err := wait.Until(ctx, 5*time.Second, func() (bool, string) {
		return primaryOf(set.Backends()) == "n1", "no primary yet"
	}); err != nil {
		t.Fatal(err)
	}
	// Several fence timeouts with the agent answering: never fenced.
	stable := time.Now().Add(3 * fence)
	for time.Now().Before(stable) {
		if primaryOf(set.Backends()) != "n1" {
			t.Fatalf("fenced although the agent answers (fence %v, poll wait %v)", fence, pollWait(fence))
		}
		time.Sleep(20 * time.Millisecond) // sampling, not synchronisation
	}
	silent.Store(true)
	cut := time.Now()
	if err := wait.Until(ctx, 5*time.Second, func() (bool, string) {
		return primaryOf(set.Backends()) == "", "still routing to n1"
	}); err != nil {
		t.Fatal(err)
	}
	fencedAfter := time.Since(cut)
	// The last request answered was sent at most a poll wait before its
	// answer, which came before the cut: fenced no later than fence after
	// the cut (plus scheduling), and never earlier than fence minus a wait.
	if fencedAfter > fence+200*time.Millisecond || fencedAfter < fence-pollWait(fence)-50*time.Millisecond {
		t.Fatalf("fenced %v after the agent went silent; want about the fence timeout %v", fencedAfter, fence)
	}
	t.Logf("fenced %v after the agent went silent (fence timeout %v)", fencedAfter.Round(time.Millisecond), fence)
	silent.Store(false)
	if err := wait.Until(ctx, 5*time.Second, func() (bool, string) {
		return primaryOf(set.Backends()) == "n1", "not routing again"
	}); err != nil {
		t.Fatal(err)
	}
}

package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/agent"
)

// `pgha-agent history` asks the agents in turn and prints one row per
// promotion, oldest first, with Patroni's columns and pgha's kind and
// reason; an agent that does not answer is skipped.
func TestHistory(t *testing.T) {
	at := time.Date(2026, 12, 6, 7, 1, 2, 0, time.UTC)
	body := `[{"epoch":2,"timeline":2,"lsn":"0/3000060","at":"2026-12-06T07:01:02Z","from":"n1","primary":"n2","kind":"failover","reason":"failover: n1's PostgreSQL is not running"},
	          {"epoch":3,"timeline":3,"lsn":"0/4000000","at":"2026-12-06T07:05:00Z","from":"n2","primary":"n1","kind":"switchover","reason":"switchover: n2 stopped cleanly"}]`
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/history" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(body))
	}))
	defer up.Close()
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	down.Close()

	c := &apiClient{apis: []string{down.URL, up.URL}, http: http.DefaultClient}
	h, err := fetchHistory(t.Context(), c)
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 2 || h[0].Kind != "failover" || !h[0].At.Equal(at) || h[1].From != "n2" {
		t.Fatalf("history %+v", h)
	}
	var b bytes.Buffer
	printHistory(&b, h)
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "NEW PRIMARY") {
		t.Fatalf("table:\n%s", b.String())
	}
	for _, want := range []string{"2", "0/3000060", "2026-12-06 07:01:02.000Z", "n1", "n2", "failover", "n1's PostgreSQL is not running"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("row %q lacks %q", lines[1], want)
		}
	}
	b.Reset()
	printHistory(&b, []agent.HistoryEntry{})
	if !strings.Contains(b.String(), "no promotion yet") {
		t.Errorf("empty history:\n%s", b.String())
	}
}

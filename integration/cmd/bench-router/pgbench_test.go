package main

import (
	"math"
	"testing"
)

func TestParsePgbench(t *testing.T) {
	tests := []struct {
		name string
		out  string
		want result
		fail bool
	}{
		{name: "persistent connections", out: `pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 10
query mode: simple
number of clients: 16
number of threads: 2
maximum number of tries: 1
duration: 10 s
number of transactions actually processed: 123456
number of failed transactions: 3 (0.002%)
latency average = 1.296 ms
initial connection time = 12.345 ms
tps = 12345.678901 (without initial connection time)
`, want: result{tps: 12345.678901, latencyMs: 1.296, connMs: 12.345, xacts: 123456, failed: 3}},
		{name: "new connection per transaction", out: `number of transactions actually processed: 29587
number of failed transactions: 0 (0.000%)
latency average = 5.408 ms
average connection time = 0.634 ms
tps = 2958.7 (including reconnection times)
`, want: result{tps: 2958.7, latencyMs: 5.408, connMs: 0.634, xacts: 29587}},
		{name: "no summary", out: "pgbench: error: connection to server failed\n", fail: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parsePgbench(tt.out)
			if (err != nil) != tt.fail {
				t.Fatalf("error %v, want failure %v", err, tt.fail)
			}
			if tt.fail {
				return
			}
			if got.tps != tt.want.tps || got.latencyMs != tt.want.latencyMs || got.connMs != tt.want.connMs ||
				got.xacts != tt.want.xacts || got.failed != tt.want.failed {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestMedian(t *testing.T) {
	for _, tt := range []struct {
		in   []float64
		want float64
	}{{[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(tt.in); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestSplitCell(t *testing.T) {
	tests := []struct {
		clients, n int
		want       []int // clients of each part
		threads    []int
	}{
		{16, 2, []int{8, 8}, []int{1, 1}},
		{1, 2, []int{1}, []int{1}},
		{5, 2, []int{3, 2}, []int{1, 1}},
		{64, 1, []int{64}, []int{2}},
	}
	for _, tt := range tests {
		parts := splitCell(cell{workload: "select", clients: tt.clients}, tt.n)
		if len(parts) != len(tt.want) {
			t.Fatalf("%d clients over %d: %d parts, want %d", tt.clients, tt.n, len(parts), len(tt.want))
		}
		total := 0
		for i, p := range parts {
			total += p.clients
			if p.clients != tt.want[i] || p.threads() != tt.threads[i] {
				t.Errorf("%d clients over %d, part %d: -c %d -j %d, want -c %d -j %d", tt.clients, tt.n, i, p.clients, p.threads(), tt.want[i], tt.threads[i])
			}
		}
		if total != tt.clients {
			t.Errorf("%d clients over %d: parts add up to %d", tt.clients, tt.n, total)
		}
	}
}

func TestAddUp(t *testing.T) {
	r := addUp([]result{
		{tps: 100, latencyMs: 1, xacts: 1000, connMs: 2},
		{tps: 300, latencyMs: 3, xacts: 3000, connMs: 4, failed: 2},
	})
	if r.tps != 400 || r.xacts != 4000 || r.failed != 2 {
		t.Errorf("sums: tps %v xacts %d failed %d", r.tps, r.xacts, r.failed)
	}
	if r.latencyMs != 2.5 || r.connMs != 3.5 {
		t.Errorf("averages over the transactions: latency %v conn %v, want 2.5 and 3.5", r.latencyMs, r.connMs)
	}
	if bad := addUp([]result{{tps: 1, xacts: 1}, {err: "boom"}}); bad.ok() {
		t.Error("a failed part must fail the whole run")
	}
}

func TestPairedRatio(t *testing.T) {
	// The machine slowed down in round 2 for b and in round 3 for a: the
	// quotient of the medians (220/200) says 1.10, every round but one
	// says 0.91.
	as := []result{{tps: 100}, {tps: 220}, {tps: 300}}
	bs := []result{{tps: 110}, {tps: 200}, {tps: 330}}
	got, ok := pairedRatio(as, bs)
	if !ok || math.Abs(got-100.0/110) > 1e-9 {
		t.Errorf("pairedRatio = %v, %v; want %v, true", got, ok, 100.0/110)
	}
	if _, ok := pairedRatio(as, bs[:2]); ok {
		t.Error("rounds of different counts paired")
	}
	failed := []result{{tps: 110}, {err: "pgbench: exit status 2"}, {tps: 330}}
	if _, ok := pairedRatio(as, failed); ok {
		t.Error("a failed round paired")
	}
	if _, ok := pairedRatio(nil, nil); ok {
		t.Error("no rounds paired")
	}
}

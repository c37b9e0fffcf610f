package main

import "testing"

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

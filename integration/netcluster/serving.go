package netcluster

import (
	"context"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// ServingProber records when each host served as a standby: its agent's
// GET /replica answered 200 (what HAProxy's replica backend checks), asked
// from the client namespace as HAProxy would ask; and which server answered
// each read through the router's read-only port on the VIP. With a
// DivergenceProber's positions, DivergedServing finds those served by a
// diverged standby. Its goroutines are owned by it (Stop).
type ServingProber struct {
	c *Cluster

	mu     sync.Mutex
	served []Served
	reads  int

	loops loops
}

// StartServingProber asks every host's /replica every interval and reads
// through VIP:RouterReadOnlyPort every interval/4 (interval 200ms if 0).
func (c *Cluster) StartServingProber(interval time.Duration) *ServingProber {
	if interval == 0 {
		interval = 200 * time.Millisecond
	}
	p := &ServingProber{c: c, loops: newLoops()}
	for _, h := range c.Hosts {
		p.loops.run(func(ctx context.Context) { p.replicaChecks(ctx, h, interval) })
	}
	p.loops.run(func(ctx context.Context) { p.reader(ctx, interval/4) })
	return p
}

// Stop ends the probes and waits.
func (p *ServingProber) Stop() { p.loops.stop() }

// Served returns what was served so far.
func (p *ServingProber) Served() []Served {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Served(nil), p.served...)
}

// Reads is the number of reads the router's read-only port answered.
func (p *ServingProber) Reads() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reads
}

func (p *ServingProber) add(s Served) {
	p.mu.Lock()
	p.served = append(p.served, s)
	p.mu.Unlock()
}

func (p *ServingProber) replicaChecks(ctx context.Context, h *Host, interval time.Duration) {
	client := &http.Client{Timeout: time.Second, Transport: p.c.clientHTTP.Transport}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.APIURL+"/replica", nil)
		resp, err := client.Do(req)
		if err != nil {
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			p.add(Served{Host: h.Name, What: "/replica 200", Start: start, End: time.Now()})
		}
	}
}

func (p *ServingProber) reader(ctx context.Context, interval time.Duration) {
	addr := netip.AddrPortFrom(p.c.VIP.Addr(), RouterReadOnlyPort).String()
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if conn == nil {
			var err error
			if conn, err = ConnectIn(ctx, p.c.Client.NS, addr, time.Second); err != nil {
				continue
			}
		}
		start := time.Now()
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		var server string
		var inRecovery bool
		err := conn.QueryRow(qctx, "SELECT host(inet_server_addr()), pg_is_in_recovery()").Scan(&server, &inRecovery)
		cancel()
		if err != nil {
			conn.Close(context.Background())
			conn = nil
			continue
		}
		end := time.Now()
		for _, h := range p.c.Hosts {
			if h.IP.String() == server {
				server = h.Name
			}
		}
		p.mu.Lock()
		p.reads++
		p.mu.Unlock()
		if inRecovery {
			p.add(Served{Host: server, What: "read", Start: start, End: end})
		}
	}
}

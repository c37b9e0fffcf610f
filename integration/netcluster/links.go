package netcluster

import "github.com/pgha/pgha/internal/netns"

// One-link faults, between two hosts (netns.CutBetween, CutOneWay), and a
// slow, lossy link of one host (netns.Slow). Cut and Heal, in process.go,
// isolate a host from everyone.

// CutLink stops unicast between a and b, both ways; the rest of the segment
// (the client, the third host, the VIP) still reaches both.
func (c *Cluster) CutLink(a, b *Host) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Topo.CutBetween(a.Node, b.Node)
}

// CutOneWay stops what from sends to to; to's packets to from still arrive.
func (c *Cluster) CutOneWay(from, to *Host) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Topo.CutOneWay(from.Node, to.Node)
}

// HealLink undoes CutLink and CutOneWay between a and b.
func (c *Cluster) HealLink(a, b *Host) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Topo.HealBetween(a.Node, b.Node)
}

// SlowLink makes h's link slow and lossy under load, both ways: a token
// bucket of rateKbit with a queue of latencyMs (see netns.Shape; the kernel
// may lack netem).
func (c *Cluster) SlowLink(h *Host, rateKbit, latencyMs int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Topo.Slow(h.Node, netns.Shape{RateKbit: rateKbit, LatencyMs: latencyMs})
}

// HealSlowLink undoes SlowLink.
func (c *Cluster) HealSlowLink(h *Host) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Topo.Unslow(h.Node)
}

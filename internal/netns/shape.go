package netns

import (
	"fmt"
	"slices"
	"strings"
)

// A slow, lossy link. The kernels this runs on may lack sch_netem (it is a
// module that minimal kernels do not build), so Slow uses what every
// kernel has, a token bucket filter (tbf): packets beyond the rate wait in
// a queue up to latency, and those that would wait longer are dropped. A
// link loaded beyond its rate is therefore both slow (queueing delay up to
// latency) and lossy (tail drops), as a congested or degraded link is; an
// idle link stays fast. (netem's random loss and fixed delay would need
// sch_netem.)

// Shape is a tbf setting: rate in kbit/s, the queue's worth in ms.
type Shape struct {
	RateKbit  int
	LatencyMs int
}

// Slow shapes both directions of n's link: n's eth0 (what n sends) and its
// bridge port in the switch namespace (what n receives). Idempotent.
func (t *Topology) Slow(n *Node, s Shape) error {
	burst := max(s.RateKbit*1000/8/100, 4096) // 10ms worth of bytes, at least a few packets
	for _, dev := range [][2]string{{n.NS, Ifname}, {t.Switch, n.port}} {
		err := tcCmd(dev[0], "qdisc", "replace", "dev", dev[1], "root", "tbf",
			"rate", fmt.Sprintf("%dkbit", s.RateKbit), "burst", fmt.Sprint(burst), "latency", fmt.Sprintf("%dms", s.LatencyMs))
		if err != nil {
			return fmt.Errorf("netns: slow %s's link: %w", n.Name, err)
		}
	}
	return nil
}

// Unslow removes what Slow set. Idempotent.
func (t *Topology) Unslow(n *Node) error {
	for _, dev := range [][2]string{{n.NS, Ifname}, {t.Switch, n.port}} {
		// Deleting the root qdisc restores the default; it fails when
		// there is none to delete, which is the goal anyway.
		out, err := output("ip", "netns", "exec", dev[0], "tc", "qdisc", "show", "dev", dev[1])
		if err != nil {
			return fmt.Errorf("netns: unslow %s's link: %w", n.Name, err)
		}
		if !slices.Contains(strings.Fields(out), "tbf") {
			continue
		}
		if err := tcCmd(dev[0], "qdisc", "del", "dev", dev[1], "root"); err != nil {
			return fmt.Errorf("netns: unslow %s's link: %w", n.Name, err)
		}
	}
	return nil
}

func tcCmd(ns string, args ...string) error {
	_, err := output("ip", append([]string{"netns", "exec", ns, "tc"}, args...)...)
	return err
}

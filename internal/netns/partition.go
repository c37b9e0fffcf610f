package netns

import (
	"errors"
	"fmt"
)

// Faults. Two kinds, chosen for what only iproute2 offers on a minimal kernel
// (no tc classifiers, no nft binary needed):
//
//   - Cut(n) isolates a node completely: its bridge port is set to the STP
//     state "disabled", so the bridge drops every frame from and to it in both
//     directions, broadcasts and ARP included. The node's eth0 keeps its
//     carrier and addresses, as when a switch or link further away fails:
//     the node's processes only see silence, never "link down". (A node that
//     bounces its own eth0 re-enables the port; nothing in pgha does.)
//
//   - CutBetween(a, b) stops IPv4 unicast between the two nodes' own
//     addresses, both ways, and nothing else: each pins the other's address
//     to a MAC nobody owns (a permanent neighbour entry), so packets leave
//     and are silently lost, as in a real partition (timeouts, not errors).
//     Broadcasts, ARP, and traffic to other addresses (such as a VIP) still
//     pass. Use Cut for a node that must hear nothing at all.
//
//   - CutOneWay(from, to) does the same in from's namespace only: from's
//     packets to to's address are lost, to's packets to from still arrive.
//     TCP between them then fails in both directions (the SYN-ACKs or the
//     ACKs of one side are lost), but each side notices at its own time, and
//     whatever is not TCP (or is already in flight) still gets through one
//     way: an asymmetric fault. HealBetween undoes it.

// blackholeMAC is a locally administered unicast address no node uses.
const blackholeMAC = "02:00:5e:de:ad:00"

// Cut isolates n from the segment; see the Faults comment. Idempotent.
func (t *Topology) Cut(n *Node) error {
	return t.setPortState(n, "0") // BR_STATE_DISABLED
}

// Heal undoes Cut. Idempotent.
func (t *Topology) Heal(n *Node) error {
	return t.setPortState(n, "3") // BR_STATE_FORWARDING
}

func (t *Topology) setPortState(n *Node, state string) error {
	if err := bridgeCmd("-n", t.Switch, "link", "set", "dev", n.port, "state", state); err != nil {
		return fmt.Errorf("netns: set %s's bridge port state to %s: %w", n.Name, state, err)
	}
	return nil
}

// CutBetween stops IPv4 unicast between a's and b's addresses; see the Faults
// comment. Idempotent.
func (t *Topology) CutBetween(a, b *Node) error {
	for _, p := range [][2]*Node{{a, b}, {b, a}} {
		from, to := p[0], p[1]
		err := ipCmd("-n", from.NS, "neigh", "replace", to.IP().String(),
			"lladdr", blackholeMAC, "dev", Ifname, "nud", "permanent")
		if err != nil {
			return fmt.Errorf("netns: cut %s from %s: %w", to.Name, from.Name, err)
		}
	}
	t.mu.Lock()
	t.pinned[pairKey(a, b)] = struct{}{}
	t.mu.Unlock()
	return nil
}

// CutOneWay stops IPv4 unicast from from's address to to's, and nothing
// else; see the Faults comment. Idempotent.
func (t *Topology) CutOneWay(from, to *Node) error {
	err := ipCmd("-n", from.NS, "neigh", "replace", to.IP().String(),
		"lladdr", blackholeMAC, "dev", Ifname, "nud", "permanent")
	if err != nil {
		return fmt.Errorf("netns: cut %s from %s: %w", to.Name, from.Name, err)
	}
	t.mu.Lock()
	t.pinned[pairKey(from, to)] = struct{}{}
	t.mu.Unlock()
	return nil
}

// HealBetween undoes CutBetween and CutOneWay; the nodes resolve each other by ARP again.
// Idempotent.
func (t *Topology) HealBetween(a, b *Node) error {
	for _, p := range [][2]*Node{{a, b}, {b, a}} {
		from, to := p[0], p[1]
		mac, _, err := Neighbour(from.NS, to.IP().String())
		if err != nil {
			return err
		}
		if mac != blackholeMAC {
			continue
		}
		if err := ipCmd("-n", from.NS, "neigh", "del", to.IP().String(), "dev", Ifname); err != nil {
			return fmt.Errorf("netns: heal %s to %s: %w", from.Name, to.Name, err)
		}
	}
	t.mu.Lock()
	delete(t.pinned, pairKey(a, b))
	t.mu.Unlock()
	return nil
}

// HealAll undoes every Cut and CutBetween.
func (t *Topology) HealAll() error {
	var errs []error
	for _, n := range t.Nodes() {
		errs = append(errs, t.Heal(n))
	}
	t.mu.Lock()
	pairs := make([][2]string, 0, len(t.pinned))
	for p := range t.pinned {
		pairs = append(pairs, p)
	}
	t.mu.Unlock()
	for _, p := range pairs {
		errs = append(errs, t.HealBetween(t.Node(p[0]), t.Node(p[1])))
	}
	return errors.Join(errs...)
}

// pairKey orders a pair so that CutBetween(a, b) and (b, a) are one entry.
func pairKey(a, b *Node) [2]string {
	if a.Name > b.Name {
		a, b = b, a
	}
	return [2]string{a.Name, b.Name}
}

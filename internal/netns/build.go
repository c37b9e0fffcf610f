package netns

import (
	"fmt"
	"net/netip"
)

// build creates the switch namespace with its bridge, then one namespace per
// node. Every namespace is recorded before anything is put into it, so Close
// removes it even if a later step fails.
func (t *Topology) build(opts Options) error {
	t.Switch = t.ID + "-sw"
	if err := t.addNamespace(t.Switch); err != nil {
		return err
	}
	// STP stays off (the default): ports forward as soon as they are up, and
	// Cut can disable a port by hand, which the kernel refuses under STP.
	if err := ipCmd("-n", t.Switch, "link", "add", "name", bridgeName, "type", "bridge"); err != nil {
		return err
	}
	if err := ipCmd("-n", t.Switch, "link", "set", "dev", bridgeName, "up"); err != nil {
		return err
	}
	for i := range opts.Hosts {
		addr, _ := hostAddress(t.subnet, firstHostNumber+i)
		n, err := t.addNode(fmt.Sprintf("h%d", i+1), addr)
		if err != nil {
			return err
		}
		t.Hosts = append(t.Hosts, n)
	}
	if opts.Client {
		addr, _ := hostAddress(t.subnet, clientNumber)
		n, err := t.addNode("client", addr)
		if err != nil {
			return err
		}
		// Linux creates a neighbour entry from an unsolicited (gratuitous)
		// ARP only with arp_accept; without it, a GARP only updates an
		// entry that already exists. Routers in front of a VIP are set up
		// this way, and it lets a test see the VIP's announcement itself.
		for _, key := range []string{"net.ipv4.conf.all.arp_accept", "net.ipv4.conf." + Ifname + ".arp_accept"} {
			if err := Sysctl(n.NS, key, "1"); err != nil {
				return err
			}
		}
		t.Client = n
	}
	return nil
}

// addNode creates a namespace with loopback up and an eth0 whose veth peer
// (named after the node) is a port of the bridge.
func (t *Topology) addNode(name string, addr netip.Prefix) (*Node, error) {
	n := &Node{Name: name, NS: t.ID + "-" + name, Addr: addr, port: name}
	if err := t.addNamespace(n.NS); err != nil {
		return nil, err
	}
	steps := [][]string{
		// Both ends are created in their namespaces directly: the caller's
		// namespace never sees them, even for a moment.
		{"-n", n.NS, "link", "add", "name", Ifname, "type", "veth", "peer", "name", n.port, "netns", t.Switch},
		{"-n", t.Switch, "link", "set", "dev", n.port, "master", bridgeName},
		{"-n", t.Switch, "link", "set", "dev", n.port, "up"},
		{"-n", n.NS, "addr", "add", addr.String(), "dev", Ifname},
		{"-n", n.NS, "link", "set", "dev", Ifname, "up"},
	}
	for _, args := range steps {
		if err := ipCmd(args...); err != nil {
			return nil, err
		}
	}
	mac, err := MAC(n.NS, Ifname)
	if err != nil {
		return nil, err
	}
	n.MAC = mac
	return n, nil
}

// addNamespace creates a named namespace with loopback up and remembers it
// for Close. It is remembered only once created, so that Close never
// deletes a namespace of the same name that it did not create.
func (t *Topology) addNamespace(name string) error {
	if err := ipCmd("netns", "add", name); err != nil {
		return err
	}
	t.mu.Lock()
	t.namespaces = append(t.namespaces, name)
	t.mu.Unlock()
	return ipCmd("-n", name, "link", "set", "dev", "lo", "up")
}

// ipCmd runs iproute2's ip with args and returns its output in the error.
func ipCmd(args ...string) error {
	_, err := output("ip", args...)
	return err
}

// bridgeCmd runs iproute2's bridge with args.
func bridgeCmd(args ...string) error {
	_, err := output("bridge", args...)
	return err
}

// Package netns builds throwaway network topologies out of Linux network
// namespaces for tests and demos, and tears them down again.
//
// A Topology is one Ethernet segment: a bridge inside its own "switch"
// namespace, and one namespace per node (hosts h1..hN, optionally a client),
// each with an interface eth0 plugged into the bridge by a veth pair.
// Every interface is created directly inside its namespace, so nothing is
// ever added to, or sent from, the caller's own network namespace; deleting
// the namespaces deletes everything.
//
// Names are unique per run ("pgha-<pid>-<random>-<role>"), so parallel runs
// do not collide, and SweepStale removes what a killed run left behind.
//
// Everything here shells out to iproute2 (ip, bridge) and needs root
// (CAP_NET_ADMIN and CAP_SYS_ADMIN for namespaces).
package netns

import (
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
)

// Options describes a topology. The zero value, apart from Hosts, is usable.
type Options struct {
	// Hosts is the number of host namespaces, named h1..hN. At least 1.
	Hosts int
	// Client adds a namespace "client" on the same segment with
	// net.ipv4.conf.{all,eth0}.arp_accept=1, so that it learns a virtual
	// IP from a gratuitous ARP without having talked to it first — what
	// operators configure on routers and clients in front of a VIP. Tests
	// that want the kernel default can set it back with Sysctl.
	Client bool
	// Subnet of the segment; default 10.77.0.0/24. Host i gets host number
	// 10+i (10.77.0.11, …), the client 50. Use Topology.Address for others.
	Subnet string
	// Prefix starts every namespace name; default "pgha". SweepStale takes
	// the same prefix.
	Prefix string
}

// DefaultSubnet is the segment's subnet when Options.Subnet is empty.
const DefaultSubnet = "10.77.0.0/24"

const (
	defaultPrefix   = "pgha"
	firstHostNumber = 11
	clientNumber    = 50
	bridgeName      = "br0"
	// Ifname is the name of every node's interface inside its namespace.
	Ifname = "eth0"
)

// Node is one namespace plugged into the segment.
type Node struct {
	// Name is the node's role: "h1", "h2", …, or "client".
	Name string
	// NS is the network namespace's name (as in `ip netns list`).
	NS string
	// Addr is eth0's address with the segment's prefix length.
	Addr netip.Prefix
	// MAC is eth0's hardware address, lower case.
	MAC string

	// port is the bridge port in the switch namespace (the veth peer).
	port string
}

// IP is the node's address without the prefix length.
func (n *Node) IP() netip.Addr { return n.Addr.Addr() }

// Path is the namespace's file, e.g. for vip.InNamespace.
func (n *Node) Path() string { return Path(n.NS) }

// Run runs a command inside the node's namespace; see Run.
func (n *Node) Run(args ...string) (string, error) { return Run(n.NS, args...) }

// Command prepares a command inside the node's namespace; see Command.
func (n *Node) Command(name string, args ...string) *exec.Cmd {
	return Command(n.NS, name, args...)
}

// Do runs fn on an OS thread inside the node's namespace; see Do.
func (n *Node) Do(fn func() error) error { return Do(n.NS, fn) }

// Topology is a built segment. Its methods may be called from several
// goroutines; Close must be called once everything using it has stopped.
type Topology struct {
	// ID is this run's unique name stem, e.g. "pgha-4242-9f3c".
	ID string
	// Switch is the namespace holding the bridge.
	Switch string
	// Hosts are h1..hN in order.
	Hosts []*Node
	// Client is nil unless Options.Client was set.
	Client *Node

	subnet netip.Prefix

	mu         sync.Mutex
	namespaces []string               // created so far, in order; Close deletes them
	pinned     map[[2]string]struct{} // CutBetween pairs, by node name
	closed     bool
}

// Build creates a topology (tests use New, which wraps it). On error,
// whatever was created is removed again. The caller must Close it.
//
// Build first removes namespaces that earlier, killed runs with the same
// prefix left behind (see SweepStale).
func Build(opts Options) (*Topology, error) {
	opts, subnet, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("netns: iproute2's ip command not found: %w", err)
	}
	if err := SweepStale(opts.Prefix); err != nil {
		return nil, err
	}
	return buildAs(runID(opts.Prefix), opts, subnet)
}

// buildAs builds a topology whose namespace names start with id.
func buildAs(id string, opts Options, subnet netip.Prefix) (*Topology, error) {
	t := &Topology{ID: id, subnet: subnet, pinned: map[[2]string]struct{}{}}
	if err := t.build(opts); err != nil {
		return nil, errors.Join(fmt.Errorf("netns: build %s: %w", id, err), t.Close())
	}
	return t, nil
}

func (o Options) withDefaults() (Options, netip.Prefix, error) {
	if o.Prefix == "" {
		o.Prefix = defaultPrefix
	}
	if o.Subnet == "" {
		o.Subnet = DefaultSubnet
	}
	if o.Hosts < 1 {
		return o, netip.Prefix{}, fmt.Errorf("netns: Options.Hosts must be at least 1, got %d", o.Hosts)
	}
	if strings.ContainsAny(o.Prefix, "/ \t\n") || len(o.Prefix) > 32 {
		return o, netip.Prefix{}, fmt.Errorf("netns: Options.Prefix %q: want a short name without slashes or spaces", o.Prefix)
	}
	subnet, err := netip.ParsePrefix(o.Subnet)
	if err != nil || !subnet.Addr().Is4() {
		return o, netip.Prefix{}, fmt.Errorf("netns: Options.Subnet %q: want an IPv4 CIDR such as %s", o.Subnet, DefaultSubnet)
	}
	subnet = subnet.Masked()
	last := firstHostNumber + o.Hosts - 1
	if o.Client && clientNumber > last {
		last = clientNumber
	}
	if _, ok := hostAddress(subnet, last); !ok || o.Hosts > clientNumber-firstHostNumber {
		return o, netip.Prefix{}, fmt.Errorf("netns: %d hosts do not fit in Options.Subnet %s", o.Hosts, subnet)
	}
	return o, subnet, nil
}

// Address is host number n of the segment with its prefix length, e.g.
// Address(100) is 10.77.0.100/24 on the default subnet. It panics if n does
// not fit in the subnet, which is a bug in the test.
func (t *Topology) Address(n int) netip.Prefix {
	p, ok := hostAddress(t.subnet, n)
	if !ok {
		panic(fmt.Sprintf("netns: host number %d does not fit in %s", n, t.subnet))
	}
	return p
}

// hostAddress adds n to the subnet's network address.
func hostAddress(subnet netip.Prefix, n int) (netip.Prefix, bool) {
	if n <= 0 {
		return netip.Prefix{}, false
	}
	a := subnet.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += uint32(n)
	ip := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	// The last address of the subnet is its broadcast address.
	if !subnet.Contains(ip) || (subnet.Bits() < 31 && !subnet.Contains(ip.Next())) {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(ip, subnet.Bits()), true
}

// Nodes are the hosts followed by the client, if any.
func (t *Topology) Nodes() []*Node {
	nodes := append([]*Node(nil), t.Hosts...)
	if t.Client != nil {
		nodes = append(nodes, t.Client)
	}
	return nodes
}

// Node finds a node by name ("h1", "client"); nil if there is none.
func (t *Topology) Node(name string) *Node {
	for _, n := range t.Nodes() {
		if n.Name == name {
			return n
		}
	}
	return nil
}

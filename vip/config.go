package vip

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Config is the `vip` section of a node's configuration. Leave Address and
// Interface empty for a node without a VIP.
type Config struct {
	// Address is the VIP with the segment's prefix length, e.g. "10.77.0.100/24".
	Address string `yaml:"address"`
	// Interface carries the VIP, e.g. "eth0".
	Interface string `yaml:"interface"`
	// Label tags the address (`ip addr` shows it) so operators and Release
	// can tell the VIP from the host's own addresses. It must start with
	// Interface and be at most 15 characters (the kernel's IFNAMSIZ-1).
	// Default Interface+":pgha", shortened to fit.
	Label string `yaml:"label"`
	// Announcements is how many gratuitous ARPs follow an Acquire. Default 5.
	Announcements int `yaml:"announcements"`
	// AnnounceInterval spaces the announcements. Default 200ms, so about a
	// second in all: enough to outlast one lost frame or a busy switch.
	AnnounceInterval time.Duration `yaml:"announce_interval"`
	// ProbeTimeout is how long Acquire waits for another host to answer an
	// ARP probe for the VIP before adding it. Default 150ms.
	ProbeTimeout time.Duration `yaml:"probe_timeout"`
}

// Defaults for the zero values of Config.
const (
	DefaultAnnouncements    = 5
	DefaultAnnounceInterval = 200 * time.Millisecond
	DefaultProbeTimeout     = 150 * time.Millisecond
	labelSuffix             = ":pgha"
	maxNameLen              = 15 // IFNAMSIZ (16) minus the terminating NUL
)

// Enabled reports whether a VIP is configured.
func (c Config) Enabled() bool { return c.Address != "" || c.Interface != "" }

// WithDefaults fills the zero values.
func (c Config) WithDefaults() Config {
	if c.Label == "" && c.Interface != "" {
		c.Label = defaultLabel(c.Interface)
	}
	if c.Announcements == 0 {
		c.Announcements = DefaultAnnouncements
	}
	if c.AnnounceInterval == 0 {
		c.AnnounceInterval = DefaultAnnounceInterval
	}
	if c.ProbeTimeout == 0 {
		c.ProbeTimeout = DefaultProbeTimeout
	}
	return c
}

// defaultLabel is iface+":pgha", cut to the kernel's limit; an interface
// name that leaves no room is its own label.
func defaultLabel(iface string) string {
	label := iface + labelSuffix
	if len(label) > maxNameLen {
		label = strings.TrimSuffix(label[:maxNameLen], ":")
	}
	return label
}

// Validate checks c with its defaults applied. An empty Config (no VIP) is
// valid. Errors name the configuration key.
func (c Config) Validate() error {
	if !c.Enabled() {
		return nil
	}
	c = c.WithDefaults()
	if _, err := c.prefix(); err != nil {
		return err
	}
	switch {
	case c.Interface == "":
		return fmt.Errorf("vip.interface: required with vip.address: name the interface that carries the VIP, e.g. eth0")
	case len(c.Interface) > maxNameLen || strings.ContainsAny(c.Interface, "/: \t\n") || c.Interface == "." || c.Interface == "..":
		return fmt.Errorf("vip.interface: %q is not an interface name (at most %d characters, no '/', ':' or spaces)", c.Interface, maxNameLen)
	case len(c.Label) > maxNameLen:
		return fmt.Errorf("vip.label: %q is longer than the kernel's %d characters", c.Label, maxNameLen)
	case !strings.HasPrefix(c.Label, c.Interface) || strings.ContainsAny(c.Label, " \t\n"):
		return fmt.Errorf("vip.label: %q must start with the interface name %q, e.g. %q", c.Label, c.Interface, defaultLabel(c.Interface))
	case c.Announcements < 1:
		return fmt.Errorf("vip.announcements: %d: at least 1 gratuitous ARP is needed to move clients", c.Announcements)
	case c.AnnounceInterval < 0:
		return fmt.Errorf("vip.announce_interval: %s is negative", c.AnnounceInterval)
	case c.ProbeTimeout < 0:
		return fmt.Errorf("vip.probe_timeout: %s is negative", c.ProbeTimeout)
	}
	return nil
}

// prefix parses and checks Address.
func (c Config) prefix() (netip.Prefix, error) {
	if c.Address == "" {
		return netip.Prefix{}, fmt.Errorf("vip.address: required with vip.interface: the virtual IP with its prefix length, e.g. 10.77.0.100/24")
	}
	p, err := netip.ParsePrefix(c.Address)
	if err != nil {
		if ip, ipErr := netip.ParseAddr(c.Address); ipErr == nil {
			return netip.Prefix{}, fmt.Errorf("vip.address: %q has no prefix length; write it as the segment's, e.g. %s/24", c.Address, ip)
		}
		return netip.Prefix{}, fmt.Errorf("vip.address: %q is not an address with a prefix length such as 10.77.0.100/24", c.Address)
	}
	ip := p.Addr()
	switch {
	case !ip.Is4():
		return netip.Prefix{}, fmt.Errorf("vip.address: %s: only IPv4 is supported (gratuitous ARP); IPv6 would need unsolicited neighbour advertisements", c.Address)
	case ip.IsUnspecified() || ip.IsLoopback() || ip.IsMulticast() || ip.IsLinkLocalUnicast() || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return netip.Prefix{}, fmt.Errorf("vip.address: %s is not a unicast address a client can reach", c.Address)
	case p.Bits() < 31 && ip == p.Masked().Addr():
		return netip.Prefix{}, fmt.Errorf("vip.address: %s is the network address of its subnet; pick a host address", c.Address)
	case p.Bits() < 31 && !p.Contains(ip.Next()):
		return netip.Prefix{}, fmt.Errorf("vip.address: %s is the broadcast address of its subnet; pick a host address", c.Address)
	}
	return p, nil
}

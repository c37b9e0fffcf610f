package vip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetlinkManager holds the VIP with netlink and announces it with gratuitous
// ARP. It needs CAP_NET_ADMIN (addresses) and CAP_NET_RAW (ARP).
//
// All methods may be called from any goroutine; one mutex serialises them,
// so Held may wait for an Acquire in progress (at most ProbeTimeout and a few
// netlink calls). Held asks the kernel each time, so it also sees an address
// that someone else deleted or added.
type NetlinkManager struct {
	cfg    Config // defaults applied
	prefix netip.Prefix
	log    *slog.Logger
	ns     netns.NsHandle  // namespace to work in; netns.None(): the caller's
	nl     *netlink.Handle // bound to ns

	mu sync.Mutex // guards everything below and the use of nl and ns
	// ann repeats the announcements of the last Acquire; nil when idle.
	ann *announcer
	// announced: the address present now was announced by this manager, so
	// a repeated Acquire has nothing to do.
	announced bool
	// conflictMAC is the other holder last logged, so that a conflict is
	// logged once and not at every retry.
	conflictMAC string
	closed      bool
}

// New validates cfg and returns a manager for the network namespace the
// process runs in, or the one given with InNamespace. It neither adds nor
// removes anything; the agent calls Release at start for that. Call Close
// when done.
func New(cfg Config, log *slog.Logger, opts ...Option) (*NetlinkManager, error) {
	if !cfg.Enabled() {
		return nil, errors.New("vip.address: required: no VIP is configured (use vip.Disabled for nodes without one)")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	prefix, _ := cfg.prefix()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ns, err := openNamespace(o.nsPath)
	if err != nil {
		return nil, err
	}
	nl := &netlink.Handle{} // the caller's namespace, one socket per request
	if ns.IsOpen() {
		if nl, err = netlink.NewHandleAt(ns, unix.NETLINK_ROUTE); err != nil {
			ns.Close()
			return nil, fmt.Errorf("vip: netlink in %s: %w", o.nsPath, err)
		}
	}
	return &NetlinkManager{
		cfg:    cfg,
		prefix: prefix,
		log:    log.With("vip", prefix.String(), "interface", cfg.Interface),
		ns:     ns,
		nl:     nl,
	}, nil
}

// Acquire adds the VIP to the interface and announces it. Steps:
//  1. If the address is already here and was announced, there is nothing
//     to do: the agent may call Acquire at every loop.
//  2. If it is not here, probe ARP first: when another host answers, add
//     nothing and return ErrConflict. Safety rule "VIP on one host": two
//     holders would split clients between two routers, one possibly in
//     front of a stale primary.
//  3. Add the address with its label (already present is fine).
//  4. Send the first gratuitous ARP, then return; the other
//     Announcements-1 follow in the background until done or Release.
//
// If the first announcement fails, the address stays (we are entitled to
// it) and the error is returned; the next Acquire announces again.
func (m *NetlinkManager) Acquire(ctx context.Context) error {
	return m.acquire(ctx, false)
}

// Takeover is Acquire without step 2's refusal (see Manager.Takeover).
func (m *NetlinkManager) Takeover(ctx context.Context) error {
	return m.acquire(ctx, true)
}

func (m *NetlinkManager) acquire(ctx context.Context, takeover bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errors.New("vip: acquire on a closed manager")
	}
	link, err := m.link()
	if err != nil {
		return err
	}
	present, err := m.present(link)
	if err != nil {
		return err
	}
	if present && m.announced {
		return nil
	}
	// A previous round's repeats, if any (the address vanished since).
	m.ann.stop()
	m.ann = nil
	conn, err := openARP(m.ns, netInterface(link), m.prefix.Addr())
	if err != nil {
		return err
	}
	if !present {
		if err := m.probeAndAdd(ctx, conn, link, takeover); err != nil {
			conn.Close()
			return err
		}
	}
	if err := conn.announce(); err != nil {
		conn.Close()
		return fmt.Errorf("vip: announce %s on %s: %w", m.prefix.Addr(), m.cfg.Interface, err)
	}
	m.announced = true
	m.log.Info("vip: acquired", "label", m.cfg.Label, "announcements", m.cfg.Announcements)
	if m.cfg.Announcements > 1 {
		m.ann = startAnnouncer(conn, m.cfg.Announcements-1, m.cfg.AnnounceInterval, m.log)
	} else {
		conn.Close()
	}
	return nil
}

// probeAndAdd is steps 2 and 3 of Acquire.
func (m *NetlinkManager) probeAndAdd(ctx context.Context, conn *arpConn, link netlink.Link, takeover bool) error {
	other, err := conn.probe(ctx, m.cfg.ProbeTimeout)
	if err != nil {
		return fmt.Errorf("vip: probe %s on %s: %w", m.prefix.Addr(), m.cfg.Interface, err)
	}
	if other != nil && takeover {
		m.log.Warn("vip: taking the VIP over from a host that still answers for it", "holder_mac", other.String())
	} else if other != nil {
		if mac := other.String(); mac != m.conflictMAC {
			m.conflictMAC = mac
			m.log.Warn("vip: another host answers for the VIP; not adding it", "holder_mac", mac)
		}
		return fmt.Errorf("%w: %s on %s is answered by %s", ErrConflict, m.prefix.Addr(), m.cfg.Interface, other)
	}
	m.conflictMAC = ""
	addr := &netlink.Addr{
		IPNet: &net.IPNet{IP: m.prefix.Addr().AsSlice(), Mask: net.CIDRMask(m.prefix.Bits(), 32)},
		Label: m.cfg.Label,
	}
	if err := m.nl.AddrAdd(link, addr); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("vip: add %s (label %s) to %s: %w", m.prefix, m.cfg.Label, m.cfg.Interface, err)
	}
	return nil
}

// Release stops the announcements and removes the VIP from the interface,
// whatever its prefix length or label, so that no copy survives. Not present
// (or no such interface) is fine. ctx is not consulted: dropping the VIP must
// happen even during shutdown.
func (m *NetlinkManager) Release(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ann.stop()
	m.ann = nil
	m.announced = false
	if m.closed {
		return errors.New("vip: release on a closed manager")
	}
	link, err := m.link()
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil // no interface, no address
	}
	if err != nil {
		return err
	}
	addrs, err := m.addresses(link)
	if err != nil {
		return err
	}
	removed := false
	for _, a := range addrs {
		err := m.nl.AddrDel(link, &a)
		if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("vip: remove %s from %s: %w", a.IPNet, m.cfg.Interface, err)
		}
		removed = removed || err == nil
	}
	if removed {
		m.log.Info("vip: released")
	}
	return nil
}

// Held reports whether the VIP is on the interface now, as the kernel says.
// An error (such as a missing interface) counts as not held.
func (m *NetlinkManager) Held() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		// The closed netlink handle would query the caller's namespace.
		return false
	}
	link, err := m.link()
	if err != nil {
		return false
	}
	present, err := m.present(link)
	if err != nil {
		m.log.Debug("vip: cannot list addresses", "err", err)
		return false
	}
	return present
}

// Close stops the announcements and releases the manager's sockets and
// namespace handle. It does not remove the VIP: call Release for that.
func (m *NetlinkManager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	m.ann.stop()
	m.ann = nil
	m.nl.Close()
	if m.ns.IsOpen() {
		return m.ns.Close()
	}
	return nil
}

// link looks the interface up each time: it may have been recreated with a
// new index since the last call.
func (m *NetlinkManager) link() (netlink.Link, error) {
	link, err := m.nl.LinkByName(m.cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("vip: interface %s: %w", m.cfg.Interface, err)
	}
	return link, nil
}

// present reports whether the VIP is on link.
func (m *NetlinkManager) present(link netlink.Link) (bool, error) {
	addrs, err := m.addresses(link)
	return len(addrs) > 0, err
}

// addresses are link's addresses whose IP is the VIP.
func (m *NetlinkManager) addresses(link netlink.Link) ([]netlink.Addr, error) {
	var all []netlink.Addr
	var err error
	// A dump interrupted by a concurrent change may be incomplete; retry.
	for range 3 {
		all, err = m.nl.AddrList(link, netlink.FAMILY_V4)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("vip: list addresses of %s: %w", m.cfg.Interface, err)
	}
	var vips []netlink.Addr
	for _, a := range all {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == m.prefix.Addr() {
			vips = append(vips, a)
		}
	}
	return vips, nil
}

// netInterface describes link for the packet socket.
func netInterface(link netlink.Link) *net.Interface {
	a := link.Attrs()
	return &net.Interface{Index: a.Index, MTU: a.MTU, Name: a.Name, HardwareAddr: a.HardwareAddr, Flags: a.Flags}
}

package netcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/pgha/pgha/internal/itest"
	"github.com/pgha/pgha/internal/netns"
)

// DialerIn returns a dial function whose sockets live in namespace ns: the
// socket is created on a thread inside ns (netns.Do) and stays there for its
// whole life, whichever goroutine uses it afterwards. Addresses must be IP
// literals (no name lookup happens inside ns).
func DialerIn(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := netns.Do(ns, func() error {
			var err error
			conn, err = (&net.Dialer{KeepAlive: time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
}

// httpClientIn is an HTTP client whose connections start in namespace ns.
// No keep-alive: a pooled connection to a host that was cut since would
// only hang.
func httpClientIn(ns string) *http.Client {
	return &http.Client{
		Timeout:   3 * time.Second,
		Transport: &http.Transport{DialContext: DialerIn(ns), DisableKeepAlives: true},
	}
}

// ConnectIn opens a PostgreSQL session as User to addr ("ip:port") from
// namespace ns, giving up after timeout.
func ConnectIn(ctx context.Context, ns, addr string, timeout time.Duration) (*pgx.Conn, error) {
	cfg, err := configIn(ns, addr)
	if err != nil {
		return nil, err
	}
	cfg.ConnectTimeout = timeout
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return pgx.ConnectConfig(ctx, cfg)
}

// configIn is the configuration of a session as User to addr ("ip:port")
// whose socket lives in namespace ns.
func configIn(ns, addr string) (*pgx.ConnConfig, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s user=%s dbname=postgres sslmode=disable", host, port, User))
	if err != nil {
		return nil, err
	}
	cfg.DialFunc = DialerIn(ns)
	return cfg, nil
}

// endpointIn is an itest.Endpoint for addr from namespace ns.
func endpointIn(ns, addr string) itest.Endpoint {
	return func(context.Context) (*pgx.ConnConfig, error) { return configIn(ns, addr) }
}

// DialVIP connects through the router on the VIP (port RouterPort or
// RouterReadOnlyPort) from the client namespace.
func (c *Cluster) DialVIP(ctx context.Context, port int, timeout time.Duration) (*pgx.Conn, error) {
	return ConnectIn(ctx, c.Client.NS, netip.AddrPortFrom(c.VIP.Addr(), uint16(port)).String(), timeout)
}

// DialHost connects to a host's PostgreSQL from inside the host's own
// namespace, which works even while the host is cut off.
func (c *Cluster) DialHost(ctx context.Context, h *Host, timeout time.Duration) (*pgx.Conn, error) {
	return ConnectIn(ctx, h.Node.NS, h.PGAddr(), timeout)
}

// ProbeApplicationName names the harness's own sessions, so that they are
// told apart from the agent's (AgentApplicationName) and the writers'.
const ProbeApplicationName = "pgha-harness"

// SocketConn opens a superuser session over h's unix socket. The harness
// runs as root, which the agent's pg_ident map lets in as the superuser
// (peer authentication), as it lets the agent; the socket is a file, so
// this works whatever the state of h's network.
func (c *Cluster) SocketConn(ctx context.Context, h *Host, timeout time.Duration) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d user=%s dbname=postgres application_name=%s", h.SocketDir, PGPort, User, ProbeApplicationName))
	if err != nil {
		return nil, err
	}
	cfg.ConnectTimeout = timeout
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return pgx.ConnectConfig(ctx, cfg)
}

// ClientDo runs fn on a thread inside the client namespace (netns.Do):
// sockets fn opens stay there. Goroutines fn starts do not inherit it; use
// DialerIn for those.
func (c *Cluster) ClientDo(fn func() error) error { return c.Client.Do(fn) }

// IsPrimary asks a host's PostgreSQL, from inside its namespace, whether
// it accepts writes (pg_is_in_recovery() is false). An error means it did
// not answer (stopped, starting, unreachable).
func (c *Cluster) IsPrimary(ctx context.Context, h *Host) (bool, error) {
	conn, err := c.DialHost(ctx, h, time.Second)
	if err != nil {
		return false, err
	}
	defer conn.Close(context.Background())
	qctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var inRecovery bool
	if err := conn.QueryRow(qctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return false, err
	}
	return !inRecovery, nil
}

// WritablePrimaries asks every host's PostgreSQL directly, each from inside
// its own namespace and all at once, whether it accepts writes: the ground
// truth for "never two primaries". Hosts that do not answer are not listed.
func (c *Cluster) WritablePrimaries(ctx context.Context) []string {
	var mu sync.Mutex
	var out []string
	var wg sync.WaitGroup
	for _, h := range c.Hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if ok, err := c.IsPrimary(ctx, h); err == nil && ok {
				mu.Lock()
				out = append(out, h.Name)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	slices.Sort(out)
	return out
}

// netlinkIn opens a netlink handle bound to a node's namespace.
func netlinkIn(n *netns.Node) (*netlink.Handle, error) {
	ns, err := vnetns.GetFromPath(n.Path())
	if err != nil {
		return nil, fmt.Errorf("open namespace %s: %w", n.NS, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", n.NS, err)
	}
	return h, nil
}

// HoldsVIP reports whether the VIP is configured on the host's eth0, as
// the kernel of its namespace says (`ip -n NS addr`, through netlink).
func (c *Cluster) HoldsVIP(h *Host) (bool, error) {
	nl := c.netlinks[h.Name]
	link, err := nl.LinkByName(netns.Ifname)
	if err != nil {
		return false, fmt.Errorf("%s: %s: %w", h.Name, netns.Ifname, err)
	}
	addrs, err := nl.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return false, fmt.Errorf("%s: list addresses: %w", h.Name, err)
	}
	vip := net.IP(c.VIP.Addr().AsSlice())
	for _, a := range addrs {
		if a.IP.Equal(vip) {
			return true, nil
		}
	}
	return false, nil
}

// VIPHolders lists the hosts whose eth0 carries the VIP.
func (c *Cluster) VIPHolders() ([]string, error) {
	var out []string
	var errs []error
	for _, h := range c.Hosts {
		held, err := c.HoldsVIP(h)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if held {
			out = append(out, h.Name)
		}
	}
	return out, errors.Join(errs...)
}

// flushVIP removes the VIP from a host's eth0, as a reboot would.
func (c *Cluster) flushVIP(h *Host) error {
	nl := c.netlinks[h.Name]
	link, err := nl.LinkByName(netns.Ifname)
	if err != nil {
		return err
	}
	addrs, err := nl.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	vip := net.IP(c.VIP.Addr().AsSlice())
	for _, a := range addrs {
		if a.IP.Equal(vip) {
			if err := nl.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				return fmt.Errorf("%s: remove the stale VIP: %w", h.Name, err)
			}
		}
	}
	return nil
}

// ClientNeighbourMAC is the client's neighbour (ARP) entry for the VIP:
// the MAC it sends VIP traffic to ("" while it has none) and its state.
func (c *Cluster) ClientNeighbourMAC() (mac, state string, err error) {
	return netns.Neighbour(c.Client.NS, c.VIP.Addr().String())
}

// HostByMAC is the host whose eth0 has mac, or nil.
func (c *Cluster) HostByMAC(mac string) *Host {
	for _, h := range c.Hosts {
		if h.MAC == mac {
			return h
		}
	}
	return nil
}

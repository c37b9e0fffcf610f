package netcluster

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/pgha/pgha/internal/netns"
)

// nodeConfig renders a host's YAML with the keys of examples/three-vms/node1.yaml.
// Only what differs from a production node is commented.
func (c *Cluster) nodeConfig(h *Host) string {
	subnet := h.Node.Addr.Masked().String()
	var b strings.Builder
	fmt.Fprintf(&b, `# Written by integration/netcluster for network namespace %s.
name: %s
data_dir: %s

cluster:
  name: netcluster
  members:
`, h.Node.NS, h.Name, h.AgentDir)
	for _, m := range c.Hosts {
		fmt.Fprintf(&b, "    - {name: %s, raft: %q, api: %q}\n", m.Name, netip.AddrPortFrom(m.IP, RaftPort).String(), m.APIURL)
	}
	fmt.Fprintf(&b, `
api:
  listen: "0.0.0.0:%d"
  advertise: %q
  auth_token_file: %s

raft:
  listen: "0.0.0.0:%d"
  advertise: %q

timing:
  loop_interval: %s
  health_interval: %s

postgres:
  bin_dir: %s
  data_dir: %s
  listen: "*"
  host: %q
  port: %d
  # Each namespace has its own ports but the filesystem is shared.
  socket_dir: %s
  # The agent runs as root (it needs CAP_NET_ADMIN for the VIP).
  run_as: %s
  replication: {user: replicator, password_file: %s}
  monitor: {user: pgha_monitor, password_file: %s}
  rewind: {user: pgha_rewind, password_file: %s}
  allowed_networks: [%q]
  # Test only: the segment is trusted, so probes and the router need no password.
  hba: ["host all all %s trust"]
  parameters:
    shared_buffers: "32MB"
    max_connections: "100"
    wal_keep_size: "128MB"
    # Test only: processes are killed, the kernel never is, so the page
    # cache keeps every write; fsync would only slow a shared machine.
    fsync: "off"

router:
  # On the VIP (the default when vip is set), served by the Raft leader only.
  port: %d
  read_only_port: %d
  # Test only: clients on the segment are trusted.
  hba: ["host all all %s trust"]

vip:
  address: %s
  interface: %s
`, APIPort, h.APIURL, c.TokenFile(),
		RaftPort, netip.AddrPortFrom(h.IP, RaftPort).String(),
		c.opts.LoopInterval, c.opts.HealthInterval,
		c.opts.BinDir, h.PGData, h.IP.String(), PGPort, h.SocketDir, c.opts.RunAs,
		c.secret("replication"), c.secret("monitor"), c.secret("rewind"),
		subnet, subnet,
		RouterPort, RouterReadOnlyPort, subnet,
		c.VIP.String(), netns.Ifname)
	return b.String()
}

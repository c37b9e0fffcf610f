package localcluster

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/pgha/pgha/pki"
)

// nodeConfig renders one node's YAML. It is written out readable, with the
// same keys as examples/three-vms/node1.yaml, so the demo's configs double as examples.
func (c *Cluster) nodeConfig(n *Node, initial []*Node) string {
	var b strings.Builder
	fmt.Fprintf(&b, `# Written by pgha-agent demo / localcluster for a loopback cluster.
name: %s
data_dir: %s

cluster:
  name: %s
  members:
`, n.Name, n.AgentDir, c.opts.Name)
	for _, m := range initial {
		fmt.Fprintf(&b, "    - {name: %s, raft: \"127.0.0.1:%d\", api: \"%s\"}\n", m.Name, m.RaftPort, m.APIURL)
	}
	if !n.Initial {
		b.WriteString("  join:\n")
		for _, m := range initial {
			fmt.Fprintf(&b, "    - %s\n", m.APIURL)
		}
	}
	fmt.Fprintf(&b, `
api:
  listen: "127.0.0.1:%d"
  advertise: "%s"
  # Control calls (switchover, pause, ...) need this token: export
  # PGHA_TOKEN_FILE=<this file> for pgha-agent's commands.
  auth_token_file: %s

raft:
  listen: "127.0.0.1:%d"
  advertise: "127.0.0.1:%d"

timing:
  loop_interval: %s
  health_interval: %s
%s
postgres:
  bin_dir: %s
  data_dir: %s
  listen: "127.0.0.1"
  host: "127.0.0.1"
  port: %d
  socket_dir: %s
  replication: {user: replicator, password_file: %s}
  monitor: {user: pgha_monitor, password_file: %s}
  rewind: {user: pgha_rewind, password_file: %s}
  allowed_networks: ["127.0.0.1/32"]
  # Demo only: the postgres role may connect over loopback without a password,
  # so the psql command the demo prints works as it is.
  hba: ["host all postgres 127.0.0.1/32 trust"]
  parameters:
    shared_buffers: "32MB"
    max_connections: "100"
%s
router:
  # Every agent is configured alike; only the Raft leader listens.
  listen: "127.0.0.1"
  port: %d
  read_only_port: %d
  pool_size: 20
%s`, n.APIPort, n.APIURL, c.TokenFile(), n.RaftPort, n.RaftPort, c.opts.LoopInterval, c.opts.HealthInterval, c.fenceTimeout(n.Name),
		c.opts.BinDir, n.PGData, n.PGPort, n.SocketDir,
		c.secret("replication"), c.secret("monitor"), c.secret("rewind"), c.extraParameters(n.Name),
		c.opts.RouterPort, c.opts.RouterReadOnlyPort, c.routerYAML())
	if n.TLS != (pki.TLSFiles{}) {
		fmt.Fprintf(&b, `
# Agent-to-agent mutual TLS: Raft and the REST API (https:// above).
tls:
  ca: %s
  cert: %s
  key: %s
`, n.TLS.CA, n.TLS.Cert, n.TLS.Key)
	}
	if c.opts.ExtraConfig != nil {
		b.WriteString("\n" + c.opts.ExtraConfig(n.Name))
	}
	return b.String()
}

// fenceTimeout renders Options.FenceTimeout for a node's timing section.
func (c *Cluster) fenceTimeout(name string) string {
	if c.opts.FenceTimeout == nil || c.opts.FenceTimeout(name) == 0 {
		return ""
	}
	return fmt.Sprintf("  fence_timeout: %s\n", c.opts.FenceTimeout(name))
}

// extraParameters renders Options.Parameters for a node's postgres.parameters.
func (c *Cluster) extraParameters(name string) string {
	if c.opts.Parameters == nil {
		return ""
	}
	params := c.opts.Parameters(name)
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(params)) {
		fmt.Fprintf(&b, "    %s: %q\n", k, params[k])
	}
	return b.String()
}

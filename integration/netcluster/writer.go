package netcluster

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgha/pgha/internal/itest"
)

// ViaVIP is Ack.Via for an insert through the router on VIP:RouterPort.
const ViaVIP = "vip"

// StartWriter starts an itest.Writer on the cluster: its sessions to the
// primary go through the router on VIP:RouterPort from the client
// namespace, the way an application's would (Ack.Via is ViaVIP); a direct
// session (opts.Direct) goes to a host's PostgreSQL from the client
// namespace too; Missing reads a host's table from inside its namespace,
// which works even while the host is cut off. The table is created through
// the VIP, waiting up to a minute for the router to answer.
func (c *Cluster) StartWriter(ctx context.Context, opts itest.WriterOptions) (*itest.Writer, error) {
	to := itest.WriterTargets{
		Via:     ViaVIP,
		Primary: endpointIn(c.Client.NS, netip.AddrPortFrom(c.VIP.Addr(), RouterPort).String()),
	}
	for _, h := range c.Hosts {
		to.Hosts = append(to.Hosts, itest.WriterHost{
			Name:   h.Name,
			Addr:   netip.AddrPortFrom(h.IP, PGPort),
			Direct: endpointIn(c.Client.NS, h.PGAddr()),
			Read:   endpointIn(h.Node.NS, h.PGAddr()),
		})
	}
	return itest.StartWriter(ctx, to, opts)
}

// IDs reads every id in table from h's PostgreSQL (from inside h's
// namespace).
func (c *Cluster) IDs(ctx context.Context, h *Host, table string) (map[int64]bool, error) {
	conn, err := c.DialHost(ctx, h, 3*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	rows, err := conn.Query(qctx, fmt.Sprintf("SELECT id FROM %s", pgx.Identifier{table}.Sanitize()))
	if err != nil {
		return nil, err
	}
	ids := map[int64]bool{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids[id] = true
	}
	return ids, rows.Err()
}

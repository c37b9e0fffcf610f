package router

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// PoolNode is one row of SHOW POOL_NODES (pgpool-II's columns).
type PoolNode struct {
	NodeID               int
	Hostname             string
	Port                 int
	Status               string // "up" or "down"
	LBWeight             float64
	Role                 string // "primary" or "standby"
	SelectCnt            int64
	LoadBalanceNode      bool // the node this session's reads would go to now (true for every eligible standby)
	ReplicationDelay     int64
	ReplicationState     string
	ReplicationSyncState string
	LastStatusChange     time.Time
	Name                 string
}

// PoolNodes returns SHOW POOL_NODES as structs.
func (r *Router) PoolNodes() []PoolNode {
	v := r.view.Load()
	total := 0
	for _, b := range v.backends {
		if !b.Primary {
			total += weight(b)
		}
	}
	var out []PoolNode
	now := time.Now()
	for i, b := range v.backends {
		n := PoolNode{
			NodeID: i, Hostname: b.Host, Port: b.Port, Status: "up", Role: "standby",
			SelectCnt: r.selectCount(b.Name), ReplicationDelay: b.LagBytes,
			ReplicationState: b.ReplicationState, ReplicationSyncState: b.ReplicationSyncState,
			LastStatusChange: v.changed[b.Name], Name: b.Name,
		}
		if !b.Healthy || !b.currentAt(now) {
			n.Status = "down" // an expired backend gets nothing (ValidUntil)
		}
		if b.Primary {
			n.Role = "primary"
			n.ReplicationDelay = 0
		} else if total > 0 {
			n.LBWeight = float64(weight(b)) / float64(total)
		}
		n.LoadBalanceNode = v.eligible(b, r.settings().MaxLag, 0, now) && !r.settings().DisableLoadBalance
		out = append(out, n)
	}
	return out
}

// admin answers the router's own SHOW commands; handled is false for any
// other query.
func (c *client) admin(sql string) (bool, error) {
	// Every idle Query passes here: rule out the others before the
	// normalisation below, which allocates.
	if t := strings.TrimSpace(sql); len(t) < 4 || !eqFold(t[:4], "show") {
		return false, nil
	}
	cmd := strings.ToLower(strings.Join(strings.Fields(strings.TrimRight(strings.TrimSpace(sql), ";")), " "))
	var cols []string
	var rows [][]string
	switch cmd {
	case "show pool_nodes":
		cols = []string{"node_id", "hostname", "port", "status", "lb_weight", "role", "select_cnt",
			"load_balance_node", "replication_delay", "replication_state", "replication_sync_state", "last_status_change"}
		for _, n := range c.r.PoolNodes() {
			rows = append(rows, []string{
				strconv.Itoa(n.NodeID), n.Hostname, strconv.Itoa(n.Port), n.Status,
				strconv.FormatFloat(n.LBWeight, 'f', 6, 64), n.Role, strconv.FormatInt(n.SelectCnt, 10),
				strconv.FormatBool(n.LoadBalanceNode), strconv.FormatInt(n.ReplicationDelay, 10),
				n.ReplicationState, n.ReplicationSyncState, n.LastStatusChange.Format("2006-01-02 15:04:05"),
			})
		}
	case "show pools":
		cols = []string{"database", "user", "backend", "cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_total", "maxwait_us", "pool_mode"}
		for _, p := range c.r.Snapshot().Pools {
			rows = append(rows, []string{p.Database, p.User, p.Backend, strconv.Itoa(p.Active), strconv.FormatInt(p.Waiting, 10),
				strconv.Itoa(p.Active), strconv.Itoa(p.Idle), strconv.Itoa(p.Total),
				strconv.FormatInt(p.MaxWait.Microseconds(), 10), string(c.r.settings().PoolMode)})
		}
	case "show stats":
		cols = []string{"database", "user", "backend", "total_xact_count", "total_query_count", "total_wait_count", "total_server_connects"}
		s := c.r.Snapshot()
		for _, p := range s.Pools {
			rows = append(rows, []string{p.Database, p.User, p.Backend, strconv.FormatInt(p.Transactions, 10),
				strconv.FormatInt(p.Queries, 10), strconv.FormatInt(p.Waits, 10), strconv.FormatInt(p.Connects, 10)})
		}
		rows = append(rows, []string{"*", "*", "router",
			fmt.Sprintf("reads_standby=%d reads_primary=%d writes=%d", s.ReadsToStandby, s.ReadsToPrimary, s.WritesToPrimary),
			fmt.Sprintf("clients=%d accepted=%d rejected=%d", s.ClientsActive, s.ClientsAccepted, s.ClientsRejected),
			strconv.FormatInt(s.PoolWaitTimeouts, 10),
			fmt.Sprintf("protocol_errors=%d server_errors=%d fast_path=%d fast_handbacks=%d pool_waits=%d loop_logins=%d",
				s.ProtocolErrors, s.ServerErrors, s.FastPath, s.FastHandBacks, s.PoolWaits, s.LoopLogins)})
	default:
		return false, nil
	}
	fields := make([]pgproto3.FieldDescription, len(cols))
	for i, col := range cols {
		fields[i] = pgproto3.FieldDescription{Name: []byte(col), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}
	}
	c.send(&pgproto3.RowDescription{Fields: fields})
	for _, row := range rows {
		vals := make([][]byte, len(row))
		for i, v := range row {
			vals[i] = []byte(v)
		}
		c.send(&pgproto3.DataRow{Values: vals})
	}
	c.send(&pgproto3.CommandComplete{CommandTag: []byte("SHOW")})
	c.send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	return true, c.flushClient()
}

// Package router is pgha's PostgreSQL wire-protocol proxy: it authenticates
// clients, pools server connections, sends writes to the primary and
// read-only statements to standbys, and follows the committed cluster state
// through failover.
//
// Only the interfaces exist so far: the router takes its view of the cluster
// from a Topology, so it can be tested without an agent.
package router

import "context"

// Backend is one PostgreSQL server the router may send queries to.
type Backend struct {
	Name     string
	Host     string
	Port     int
	Primary  bool
	Healthy  bool
	LagBytes int64 // replay lag behind the primary; meaningful for standbys
	Weight   int
}

// Topology tells the router where the primary and the standbys are.
// Changes returns a channel that receives after every change of the set.
type Topology interface {
	Backends() []Backend
	Changes() <-chan struct{}
}

// Listener is the router's front door. The agent starts it on the address the
// Raft leader owns (the VIP, or in the demo 127.0.0.1:9999 and :9998).
type Listener interface {
	Serve(ctx context.Context) error
}

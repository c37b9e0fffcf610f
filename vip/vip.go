// Package vip moves the cluster's virtual IP with Raft leadership: the leader
// adds the address with netlink and announces it with gratuitous ARP; a node
// that loses leadership removes it before a new leader can be elected.
//
// Only the interface exists so far; the netlink implementation comes with the
// network-namespace cluster.
package vip

import "context"

// Manager holds or releases the VIP on this host. The agent calls Acquire when
// it becomes Raft leader and Release when it loses leadership, fences itself or
// shuts down. Implementations must be safe to call repeatedly.
type Manager interface {
	Acquire(ctx context.Context) error
	Release(ctx context.Context) error
	Held() bool
}

// Package vip moves the cluster's virtual IP with Raft leadership: the leader
// adds the address with netlink and announces it with gratuitous ARP; a node
// that loses leadership removes it before a new leader can be elected.
//
// NetlinkManager is the real implementation; Disabled stands in on nodes
// without a VIP, so the agent always holds a Manager.
package vip

import (
	"context"
	"errors"
	"log/slog"
)

// Manager holds or releases the VIP on this host. The agent calls Acquire when
// it becomes Raft leader and is not fenced, and Release when it loses
// leadership, fences itself or shuts down (and once on start, to drop an
// address it holds but is not entitled to). Implementations must be safe to
// call repeatedly and from several goroutines.
type Manager interface {
	// Acquire makes sure the VIP is on this host and announced. It fails
	// with ErrConflict, without adding anything, when another host already
	// answers for the address.
	Acquire(ctx context.Context) error
	// Takeover adds and announces the VIP even though another host answers
	// for it: the caller has proved that host is no longer entitled to it
	// (a Raft leader frozen or dead with the address still configured; the
	// gratuitous ARP moves the neighbours' caches, and the old holder drops
	// the address once it notices it lost leadership).
	Takeover(ctx context.Context) error
	// Release makes sure the VIP is not on this host. It does its work even
	// when ctx is already cancelled: dropping the VIP is always safe.
	Release(ctx context.Context) error
	// Held reports whether the VIP is on this host right now.
	Held() bool
}

// ErrConflict is returned (wrapped; test with errors.Is) by Acquire when
// another host answers ARP for the VIP. Two holders would split clients
// between two hosts, so Acquire refuses rather than fight over the address;
// the caller retries later.
var ErrConflict = errors.New("vip: address already in use by another host")

// Disabled is the Manager of a node without a VIP: it holds nothing.
type Disabled struct{}

// Acquire does nothing.
func (Disabled) Acquire(context.Context) error { return nil }

// Takeover does nothing.
func (Disabled) Takeover(context.Context) error { return nil }

// Release does nothing.
func (Disabled) Release(context.Context) error { return nil }

// Held is always false.
func (Disabled) Held() bool { return false }

// FromConfig returns Disabled when cfg configures no VIP, and a
// NetlinkManager on this host's network namespace otherwise.
func FromConfig(cfg Config, log *slog.Logger) (Manager, error) {
	if !cfg.Enabled() {
		if err := cfg.Validate(); err != nil {
			return nil, err
		}
		return Disabled{}, nil
	}
	return New(cfg, log)
}

var (
	_ Manager = Disabled{}
	_ Manager = (*NetlinkManager)(nil)
)

package netcluster

import (
	"fmt"
	"net"
	"time"
)

// A PostgreSQL that cannot start: another program holds its port. Kill the
// postmaster first (KillPostgres), then OccupyPGPort before the agent
// restarts it; the agent's restarts then fail ("could not create any
// TCP/IP sockets") until ReleasePGPort.

// OccupyPGPort listens on PGPort on every address of h's namespace (one
// dual-stack socket, so neither PostgreSQL's IPv4 nor its IPv6 bind
// succeeds) and closes every connection it accepts at once. It retries for
// up to 5s while a dying server still holds the port.
func (c *Cluster) OccupyPGPort(h *Host) error {
	var ln net.Listener
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := h.Node.Do(func() error {
			var err error
			ln, err = net.Listen("tcp", fmt.Sprintf(":%d", PGPort))
			return err
		})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: occupy port %d: %w", h.Name, PGPort, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.mu.Lock()
	h.squatter = ln
	c.mu.Unlock()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return // closed by ReleasePGPort
			}
			conn.Close()
		}
	}()
	return nil
}

// ReleasePGPort closes what OccupyPGPort opened.
func (c *Cluster) ReleasePGPort(h *Host) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h.squatter == nil {
		return nil
	}
	err := h.squatter.Close()
	h.squatter = nil
	return err
}

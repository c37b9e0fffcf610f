package vip

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/packet"
	"github.com/vishvananda/netns"
)

// etherTypeARP binds the packet socket to ARP frames only.
const etherTypeARP = 0x0806

// zeroMAC is the target hardware address of an ARP request: unknown.
var zeroMAC = net.HardwareAddr{0, 0, 0, 0, 0, 0}

// arpConn sends and receives raw ARP frames for one address on one interface
// (a packet socket, which needs CAP_NET_RAW). arp.Client is not used because
// it looks up the interface's own addresses in the caller's namespace and
// insists on one; a probe must be sent from 0.0.0.0 and a gratuitous ARP
// from the VIP, so neither needs an address of the host's own.
//
// An arpConn is used by one goroutine at a time: Acquire, then the
// announcer it hands the connection to.
type arpConn struct {
	pc  *packet.Conn
	mac net.HardwareAddr
	ip  netip.Addr
}

// openARP opens a packet socket on ifi inside ns (netns.None(): the caller's).
func openARP(ns netns.NsHandle, ifi *net.Interface, ip netip.Addr) (*arpConn, error) {
	if len(ifi.HardwareAddr) != 6 {
		return nil, fmt.Errorf("vip: interface %s has no Ethernet address (%q), gratuitous ARP needs one", ifi.Name, ifi.HardwareAddr)
	}
	var pc *packet.Conn
	err := inNamespace(ns, func() (err error) {
		pc, err = packet.Listen(ifi, packet.Raw, etherTypeARP, nil)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("vip: open ARP socket on %s (needs CAP_NET_RAW): %w", ifi.Name, err)
	}
	return &arpConn{pc: pc, mac: ifi.HardwareAddr, ip: ip}, nil
}

func (c *arpConn) Close() error { return c.pc.Close() }

// announce sends one gratuitous ARP in each of the two forms in use, both
// broadcast, with sender and target IP the VIP:
//   - a request (target MAC unknown): what most hosts and switches expect;
//   - a reply with target MAC = sender MAC: Linux treats a reply as
//     gratuitous only in that form, and some devices only listen to replies.
//
// Receivers that already have an entry for the VIP overwrite it; Linux
// creates a missing one only with arp_accept=1.
func (c *arpConn) announce() error {
	request, err := arp.NewPacket(arp.OperationRequest, c.mac, c.ip, zeroMAC, c.ip)
	if err != nil {
		return err
	}
	reply, err := arp.NewPacket(arp.OperationReply, c.mac, c.ip, c.mac, c.ip)
	if err != nil {
		return err
	}
	if err := c.send(request); err != nil {
		return fmt.Errorf("gratuitous ARP request: %w", err)
	}
	if err := c.send(reply); err != nil {
		return fmt.Errorf("gratuitous ARP reply: %w", err)
	}
	return nil
}

// probe asks the segment whether anyone has the VIP (an RFC 5227 probe:
// sender IP 0.0.0.0, so no one's ARP cache learns from it) and waits up to
// timeout. It sends a second probe half-way so that one lost frame does not
// hide a holder. It returns the MAC of a host that claims the VIP, or nil.
func (c *arpConn) probe(ctx context.Context, timeout time.Duration) (net.HardwareAddr, error) {
	p, err := arp.NewPacket(arp.OperationRequest, c.mac, netip.IPv4Unspecified(), zeroMAC, c.ip)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	resend, deadline := start.Add(timeout/2), start.Add(timeout)
	if err := c.send(p); err != nil {
		return nil, fmt.Errorf("ARP probe: %w", err)
	}
	buf := make([]byte, 1500)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		wake := deadline
		if !resend.IsZero() {
			wake = resend
		}
		// Deadlines are short (timeout/2), so a cancelled ctx is noticed
		// soon enough without waking the read.
		if err := c.pc.SetReadDeadline(wake); err != nil {
			return nil, err
		}
		n, _, err := c.pc.ReadFrom(buf)
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			if resend.IsZero() {
				return nil, nil // nobody answered
			}
			resend = time.Time{}
			if err := c.send(p); err != nil {
				return nil, fmt.Errorf("ARP probe: %w", err)
			}
			continue
		case err != nil:
			return nil, fmt.Errorf("read ARP: %w", err)
		}
		if mac := c.claimant(buf[:n]); mac != nil {
			return mac, nil
		}
	}
}

// claimant returns the sender MAC of a frame in which another host says it
// has the VIP (a reply to our probe, its own gratuitous ARP, or a request it
// sends from the VIP), or nil for any other frame, including our own
// outgoing ones, which a packet socket also sees.
func (c *arpConn) claimant(frame []byte) net.HardwareAddr {
	var f ethernet.Frame
	if err := f.UnmarshalBinary(frame); err != nil || f.EtherType != ethernet.EtherTypeARP {
		return nil
	}
	var p arp.Packet
	if err := p.UnmarshalBinary(f.Payload); err != nil {
		return nil
	}
	if p.SenderIP != c.ip || bytes.Equal(p.SenderHardwareAddr, c.mac) {
		return nil
	}
	return p.SenderHardwareAddr
}

// send broadcasts an ARP packet in an Ethernet frame from our MAC.
func (c *arpConn) send(p *arp.Packet) error {
	payload, err := p.MarshalBinary()
	if err != nil {
		return err
	}
	f := ethernet.Frame{
		Destination: ethernet.Broadcast,
		Source:      c.mac,
		EtherType:   ethernet.EtherTypeARP,
		Payload:     payload,
	}
	frame, err := f.MarshalBinary()
	if err != nil {
		return err
	}
	_, err = c.pc.WriteTo(frame, &packet.Addr{HardwareAddr: ethernet.Broadcast})
	return err
}

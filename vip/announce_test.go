package vip

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/pgha/pgha/internal/netns"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// frame is an ARP packet as the client saw it, with its Ethernet destination.
type frame struct {
	dst net.HardwareAddr
	arp arp.Packet
}

// openARPIn opens an ARP socket on eth0 of node n, for sniffing or sending.
func openARPIn(t *testing.T, n *netns.Node, ip netip.Addr) *arpConn {
	t.Helper()
	ns, err := vnetns.GetFromPath(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	link, err := h.LinkByName(netns.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	c, err := openARP(ns, netInterface(link), ip)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// sniff collects, on the client, the ARP frames that claim the VIP for
// holderMAC, until the sentinel request from h1 arrives. Frames from one
// interface arrive in order, so the sentinel, sent after the code under test
// has returned, marks "everything it sent has been seen".
func (tb *testbed) sniff(t *testing.T, holderMAC string) (collect func() []frame) {
	t.Helper()
	sniffer := openARPIn(t, tb.client, tb.vip.Addr())
	sentinel := tb.topo.Address(254).Addr()
	frames := make(chan []frame, 1)
	go func() {
		var got []frame
		buf := make([]byte, 1500)
		for {
			n, _, err := sniffer.pc.ReadFrom(buf)
			if err != nil {
				frames <- got
				return
			}
			var f ethernet.Frame
			var p arp.Packet
			if f.UnmarshalBinary(buf[:n]) != nil || p.UnmarshalBinary(f.Payload) != nil {
				continue
			}
			switch {
			case p.SenderIP == tb.h1.IP() && p.TargetIP == sentinel:
				frames <- got
				return
			case p.SenderIP == tb.vip.Addr() && p.SenderHardwareAddr.String() == holderMAC:
				got = append(got, frame{dst: f.Destination, arp: p})
			}
		}
	}()
	return func() []frame {
		t.Helper()
		h1 := openARPIn(t, tb.h1, tb.h1.IP())
		p, err := arp.NewPacket(arp.OperationRequest, h1.mac, tb.h1.IP(), zeroMAC, sentinel)
		if err != nil {
			t.Fatal(err)
		}
		if err := h1.send(p); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-frames:
			return got
		case <-time.After(5 * time.Second):
			t.Fatal("the sentinel frame never reached the client")
			return nil
		}
	}
}

func TestAnnouncementFrames(t *testing.T) {
	tb := newTestbed(t)
	m := tb.manager(t, tb.h1, tb.config(), nil) // 3 announcements
	collect := tb.sniff(t, tb.h1.MAC)

	if err := m.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitAnnounced(m)
	got := collect()
	if len(got) != 2*3 {
		t.Fatalf("client saw %d gratuitous ARPs, want 3 announcements of 2 frames", len(got))
	}
	mac, _ := net.ParseMAC(tb.h1.MAC)
	for i, f := range got {
		p := f.arp
		if !bytes.Equal(f.dst, ethernet.Broadcast) || p.TargetIP != tb.vip.Addr() {
			t.Errorf("frame %d: to %s for %s, want broadcast for the VIP", i, f.dst, p.TargetIP)
		}
		// Alternating request (target MAC unknown) and reply (target MAC =
		// sender MAC, which Linux requires of a gratuitous reply).
		want := arp.OperationRequest
		wantTarget := net.HardwareAddr(zeroMAC)
		if i%2 == 1 {
			want, wantTarget = arp.OperationReply, mac
		}
		if p.Operation != want || !bytes.Equal(p.TargetHardwareAddr, wantTarget) {
			t.Errorf("frame %d: %v with target MAC %s, want %v with %s", i, p.Operation, p.TargetHardwareAddr, want, wantTarget)
		}
	}
}

func TestReleaseStopsAnnouncements(t *testing.T) {
	tb := newTestbed(t)
	cfg := tb.config()
	cfg.Announcements, cfg.AnnounceInterval = 10, time.Second
	m := tb.manager(t, tb.h1, cfg, nil)
	collect := tb.sniff(t, tb.h1.MAC)
	ctx := context.Background()

	if err := m.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Release(ctx); err != nil {
		t.Fatal(err)
	}
	// Only the first announcement, sent before Acquire returned, went out:
	// the repeats stopped with Release, a second before the next was due.
	if got := collect(); len(got) != 2 {
		t.Fatalf("client saw %d gratuitous ARPs, want the first announcement's 2", len(got))
	}
}

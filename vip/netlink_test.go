package vip

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pgha/pgha/internal/netns"
)

// These tests run real managers, each bound to a host namespace of a bridged
// segment built by internal/netns, and watch the client namespace's
// neighbour table. They need root; with CI=true they fail instead of
// skipping without it.

// testbed is a segment with two hosts and a client, and the VIP to move.
type testbed struct {
	topo           *netns.Topology
	h1, h2, client *netns.Node
	vip            netip.Prefix
}

func newTestbed(t *testing.T) *testbed {
	t.Helper()
	topo := netns.New(t, netns.Options{Hosts: 2, Client: true})
	return &testbed{topo: topo, h1: topo.Hosts[0], h2: topo.Hosts[1], client: topo.Client, vip: topo.Address(100)}
}

// config is the VIP's configuration with fast announcements.
func (tb *testbed) config() Config {
	return Config{Address: tb.vip.String(), Interface: netns.Ifname, Announcements: 3, AnnounceInterval: 50 * time.Millisecond}
}

// manager binds a manager to host n's namespace.
func (tb *testbed) manager(t *testing.T, n *netns.Node, cfg Config, log *slog.Logger) *NetlinkManager {
	t.Helper()
	m, err := New(cfg, log, InNamespace(n.Path()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close manager: %v", err)
		}
	})
	return m
}

// holders are the namespaces (by node name) and interfaces that carry the VIP.
func (tb *testbed) holders(t *testing.T) []string {
	t.Helper()
	var where []string
	for _, n := range tb.topo.Nodes() {
		addrs, err := netns.Addresses(n.NS)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			if a.Prefix.Addr() == tb.vip.Addr() {
				where = append(where, n.Name+"/"+a.Interface+"/"+a.Prefix.String()+"/"+a.Label)
			}
		}
	}
	return where
}

// waitNeighbour polls the client's neighbour entry for the VIP until it
// points at mac.
func (tb *testbed) waitNeighbour(t *testing.T, mac string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		got, state, err := netns.Neighbour(tb.client.NS, tb.vip.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		if got == mac {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("client's neighbour entry for %s is %q (%s), want %s", tb.vip.Addr(), got, state, mac)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitAnnounced waits until m's background announcements are over.
func waitAnnounced(m *NetlinkManager) {
	m.mu.Lock()
	a := m.ann
	m.mu.Unlock()
	if a != nil {
		<-a.done
	}
}

func TestAcquireAddsLabelledAddressOnThatInterfaceOnly(t *testing.T) {
	tb := newTestbed(t)
	m := tb.manager(t, tb.h1, tb.config(), nil)
	ctx := context.Background()

	if m.Held() {
		t.Fatal("Held before Acquire")
	}
	if err := m.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{"h1/eth0/" + tb.vip.String() + "/eth0:pgha"}
	if got := tb.holders(t); !slices.Equal(got, want) {
		t.Fatalf("VIP is on %v, want %v", got, want)
	}
	// The test process's own namespace is the real host's: untouched.
	if addrs, err := net.InterfaceAddrs(); err != nil {
		t.Fatal(err)
	} else {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr() == tb.vip.Addr() {
				t.Fatalf("VIP added to the test's own namespace: %s", a)
			}
		}
	}
	if !m.Held() {
		t.Error("Held is false after Acquire")
	}
	if err := m.Acquire(ctx); err != nil {
		t.Fatalf("second Acquire: %v", err)
	}

	if err := m.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if got := tb.holders(t); len(got) != 0 {
		t.Fatalf("VIP still on %v after Release", got)
	}
	if m.Held() {
		t.Error("Held after Release")
	}
	if err := m.Release(ctx); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	// Release works on a cancelled context: shutdown must drop the VIP.
	if err := m.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := m.Release(cancelled); err != nil || m.Held() {
		t.Fatalf("Release with a cancelled context: %v, held %v", err, m.Held())
	}

	// Close frees the manager but leaves the address: only Release drops it.
	if err := m.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if m.Held() {
		t.Error("a closed manager reports Held")
	}
	if got := tb.holders(t); len(got) != 1 {
		t.Errorf("after Close the VIP is on %v, want it left on h1", got)
	}
}

// The client learns the VIP from the gratuitous ARP alone (arp_accept=1, set
// by the harness as on a router in front of a VIP), then follows it to h2.
func TestClientLearnsVIPAndFollowsItsMove(t *testing.T) {
	tb := newTestbed(t)
	m1 := tb.manager(t, tb.h1, tb.config(), nil)
	m2 := tb.manager(t, tb.h2, tb.config(), nil)
	ctx := context.Background()

	if mac, _, _ := netns.Neighbour(tb.client.NS, tb.vip.Addr().String()); mac != "" {
		t.Fatalf("client knows the VIP before any announcement: %s", mac)
	}
	if err := m1.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	tb.waitNeighbour(t, tb.h1.MAC)

	if err := m1.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m2.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	tb.waitNeighbour(t, tb.h2.MAC)
	if got, want := tb.holders(t), []string{"h2/eth0/" + tb.vip.String() + "/eth0:pgha"}; !slices.Equal(got, want) {
		t.Fatalf("VIP is on %v, want %v", got, want)
	}
}

// With the kernel's default arp_accept=0 a gratuitous ARP creates no entry,
// but it does replace an existing one: the realistic case of a client that
// has been talking to the old holder.
func TestStaleClientEntryIsReplacedWithoutArpAccept(t *testing.T) {
	tb := newTestbed(t)
	for _, key := range []string{"net.ipv4.conf.all.arp_accept", "net.ipv4.conf.eth0.arp_accept"} {
		if err := netns.Sysctl(tb.client.NS, key, "0"); err != nil {
			t.Fatal(err)
		}
	}
	m1 := tb.manager(t, tb.h1, tb.config(), nil)
	m2 := tb.manager(t, tb.h2, tb.config(), nil)
	ctx := context.Background()

	if err := m1.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	waitAnnounced(m1)
	if mac, _, _ := netns.Neighbour(tb.client.NS, tb.vip.Addr().String()); mac != "" {
		t.Fatalf("with arp_accept=0 a gratuitous ARP created an entry: %s", mac)
	}

	// The client talks to the VIP (a TCP connection to a listener on h1),
	// which resolves it to h1 the ordinary way.
	var ln net.Listener
	if err := tb.h1.Do(func() (err error) { ln, err = net.Listen("tcp", ":0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	err := tb.client.Do(func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(tb.vip.Addr(), uint16(port)).String(), 2*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	tb.waitNeighbour(t, tb.h1.MAC)

	if err := m1.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m2.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	tb.waitNeighbour(t, tb.h2.MAC)
}

// recorder is a slog handler that keeps the records, for asserting on logs.
type recorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = append(r.records, rec)
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

func (r *recorder) count(level slog.Level) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, rec := range r.records {
		if rec.Level == level {
			n++
		}
	}
	return n
}

func TestAcquireRefusedWhileAnotherHostAnswers(t *testing.T) {
	tb := newTestbed(t)
	logs := &recorder{}
	m1 := tb.manager(t, tb.h1, tb.config(), slog.New(logs))
	ctx := context.Background()

	// h2 holds the VIP outside pgha's control (a stale node, a typo'd config).
	if _, err := tb.h2.Run("ip", "addr", "add", tb.vip.String(), "dev", netns.Ifname); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		err := m1.Acquire(ctx)
		if !errors.Is(err, ErrConflict) {
			t.Fatalf("Acquire = %v, want ErrConflict", err)
		}
	}
	if m1.Held() {
		t.Error("Held after a refused Acquire")
	}
	if got, want := tb.holders(t), []string{"h2/eth0/" + tb.vip.String() + "/eth0"}; !slices.Equal(got, want) {
		t.Errorf("VIP is on %v, want only h2's", got)
	}
	if n := logs.count(slog.LevelWarn); n != 1 {
		t.Errorf("conflict logged %d times at Warn, want once", n)
	}

	// Once h2 lets go, h1 takes over.
	if _, err := tb.h2.Run("ip", "addr", "del", tb.vip.String(), "dev", netns.Ifname); err != nil {
		t.Fatal(err)
	}
	if err := m1.Acquire(ctx); err != nil {
		t.Fatalf("Acquire after the conflict cleared: %v", err)
	}
	if !m1.Held() {
		t.Error("not Held after Acquire")
	}
}

func TestHeldFollowsTheKernel(t *testing.T) {
	tb := newTestbed(t)
	m := tb.manager(t, tb.h1, tb.config(), nil)
	ctx := context.Background()

	if err := m.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	// Someone deletes the address behind the manager's back.
	if _, err := tb.h1.Run("ip", "addr", "del", tb.vip.String(), "dev", netns.Ifname); err != nil {
		t.Fatal(err)
	}
	if m.Held() {
		t.Fatal("Held after the address was deleted")
	}
	if err := m.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if !m.Held() {
		t.Fatal("Acquire did not put the deleted address back")
	}

	// Someone adds it by hand, with another prefix length and no label:
	// it counts as held, and Release removes it too.
	if err := m.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.h1.Run("ip", "addr", "add", tb.vip.Addr().String()+"/32", "dev", netns.Ifname); err != nil {
		t.Fatal(err)
	}
	if !m.Held() {
		t.Fatal("an address added by hand is not Held")
	}
	if err := m.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if got := tb.holders(t); len(got) != 0 {
		t.Fatalf("VIP still on %v after Release", got)
	}
}

func TestHeldWithoutTheInterface(t *testing.T) {
	tb := newTestbed(t)
	cfg := tb.config()
	cfg.Interface, cfg.Label = "eth9", ""
	m := tb.manager(t, tb.h1, cfg, nil)
	if m.Held() {
		t.Error("Held on a missing interface")
	}
	if err := m.Release(context.Background()); err != nil {
		t.Errorf("Release on a missing interface: %v", err)
	}
	if err := m.Acquire(context.Background()); err == nil {
		t.Error("Acquire on a missing interface succeeded")
	}
}

package netns

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// eventually polls cond every 20ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %s: %v", what, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// listen starts a TCP listener inside n that accepts and drops connections.
func listen(t *testing.T, n *Node) netip.AddrPort {
	t.Helper()
	var ln net.Listener
	err := n.Do(func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(n.IP(), 0).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}

// dial connects from inside n, waiting at most 300ms.
func dial(from *Node, to netip.AddrPort) error {
	return from.Do(func() error {
		c, err := net.DialTimeout("tcp", to.String(), 300*time.Millisecond)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

func rootLinks(t *testing.T) []string {
	t.Helper()
	out, err := output("ip", "-br", "link")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		names = append(names, strings.Fields(line)[0])
	}
	return names
}

func TestBuildAndClose(t *testing.T) {
	Require(t)
	before := rootLinks(t)
	topo, err := Build(Options{Hosts: 2, Client: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(topo.Cleanup)

	want := []string{topo.Switch, topo.Hosts[0].NS, topo.Hosts[1].NS, topo.Client.NS}
	names, _ := listNamespaces()
	for _, ns := range want {
		if !slices.Contains(names, ns) {
			t.Errorf("namespace %s missing; have %v", ns, names)
		}
	}
	for i, h := range topo.Hosts {
		if h.Name != "h"+strconv.Itoa(i+1) || h.Addr.String() != "10.77.0.1"+strconv.Itoa(i+1)+"/24" {
			t.Errorf("host %d: %s %s", i, h.Name, h.Addr)
		}
		addrs, err := Addresses(h.NS)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(addrs, Address{Interface: Ifname, Prefix: h.Addr, Label: Ifname}) {
			t.Errorf("%s: addresses %v lack %s on %s", h.Name, addrs, h.Addr, Ifname)
		}
		if _, err := net.ParseMAC(h.MAC); err != nil {
			t.Errorf("%s: MAC %q: %v", h.Name, h.MAC, err)
		}
	}
	if got := topo.Address(100).String(); got != "10.77.0.100/24" {
		t.Errorf("Address(100) = %s", got)
	}
	if v, err := ReadSysctl(topo.Client.NS, "net.ipv4.conf.all.arp_accept"); err != nil || v != "1" {
		t.Errorf("client arp_accept = %q, %v; want 1", v, err)
	}
	if v, err := ReadSysctl(topo.Hosts[0].NS, "net.ipv4.conf.all.arp_accept"); err != nil || v != "0" {
		t.Errorf("host arp_accept = %q, %v; want the default 0", v, err)
	}
	if after := rootLinks(t); !slices.Equal(before, after) {
		t.Errorf("the root namespace's links changed: %v -> %v", before, after)
	}

	if err := topo.Close(); err != nil {
		t.Fatal(err)
	}
	names, _ = listNamespaces()
	for _, ns := range want {
		if slices.Contains(names, ns) {
			t.Errorf("namespace %s left after Close", ns)
		}
	}
	if err := topo.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestRunCommandAndCloseKillsProcesses(t *testing.T) {
	Require(t)
	topo, err := Build(Options{Hosts: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(topo.Cleanup)
	h1 := topo.Hosts[0]

	out, err := h1.Run("ip", "-4", "-br", "addr", "show", "dev", Ifname)
	if err != nil || !strings.Contains(out, h1.Addr.String()) {
		t.Fatalf("Run: %q, %v", out, err)
	}
	if _, err := h1.Run("false"); err == nil {
		t.Error("Run(false) succeeded")
	}

	// A process left running inside must not keep the namespace alive.
	cmd := h1.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	// `ip netns exec` enters the namespace after Start returns.
	eventually(t, 5*time.Second, "sleep runs inside h1", func() error {
		out, err := output("ip", "netns", "pids", h1.NS)
		if err != nil || !slices.Contains(strings.Fields(out), strconv.Itoa(cmd.Process.Pid)) {
			return fmt.Errorf("pids in %s: %q, %v", h1.NS, out, err)
		}
		return nil
	})
	if err := topo.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		t.Fatal("Close left a process running in the namespace")
	}
}

func TestCutAndHeal(t *testing.T) {
	topo := New(t, Options{Hosts: 2, Client: true})
	h1, h2, client := topo.Hosts[0], topo.Hosts[1], topo.Client
	toH2 := listen(t, h2)
	toClient := listen(t, client)

	eventually(t, 5*time.Second, "h1 reaches h2", func() error { return dial(h1, toH2) })
	if mac, state, err := Neighbour(h1.NS, h2.IP().String()); err != nil || mac != h2.MAC {
		t.Errorf("h1's neighbour entry for h2: %q %q %v; want %s", mac, state, err, h2.MAC)
	}

	if err := topo.Cut(h1); err != nil {
		t.Fatal(err)
	}
	if err := topo.Cut(h1); err != nil {
		t.Fatalf("second Cut: %v", err)
	}
	if err := dial(h1, toH2); err == nil {
		t.Error("h1 reached h2 while cut")
	}
	if err := dial(h1, toClient); err == nil {
		t.Error("h1 reached the client while cut")
	}
	eventually(t, 5*time.Second, "h2 reaches the client while h1 is cut", func() error { return dial(h2, toClient) })

	if err := topo.Heal(h1); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "h1 reaches h2 after Heal", func() error { return dial(h1, toH2) })
}

func TestCutBetween(t *testing.T) {
	topo := New(t, Options{Hosts: 2, Client: true})
	h1, h2, client := topo.Hosts[0], topo.Hosts[1], topo.Client
	toH1, toH2, toClient := listen(t, h1), listen(t, h2), listen(t, client)

	if err := topo.CutBetween(h1, h2); err != nil {
		t.Fatal(err)
	}
	if err := dial(h1, toH2); err == nil {
		t.Error("h1 reached h2 across CutBetween")
	}
	if err := dial(h2, toH1); err == nil {
		t.Error("h2 reached h1 across CutBetween")
	}
	eventually(t, 5*time.Second, "h1 reaches the client", func() error { return dial(h1, toClient) })
	eventually(t, 5*time.Second, "h2 reaches the client", func() error { return dial(h2, toClient) })

	if err := topo.HealAll(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "h1 reaches h2 after HealAll", func() error { return dial(h1, toH2) })
	eventually(t, 5*time.Second, "h2 reaches h1 after HealAll", func() error { return dial(h2, toH1) })
}

func TestPartialBuildIsRemoved(t *testing.T) {
	Require(t)
	opts, subnet, err := Options{Hosts: 2, Prefix: "pghatest"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	id := runID(opts.Prefix)
	// Someone else's namespace where h2's would go makes the build fail
	// half-way; it must not be deleted with ours.
	foreign := id + "-h2"
	if err := ipCmd("netns", "add", foreign); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = deleteNamespace(foreign) })

	if _, err := buildAs(id, opts, subnet); err == nil {
		t.Fatal("build succeeded over an existing namespace")
	}
	names, _ := listNamespaces()
	for _, ns := range []string{id + "-sw", id + "-h1"} {
		if slices.Contains(names, ns) {
			t.Errorf("namespace %s left after a failed build", ns)
		}
	}
	if !slices.Contains(names, foreign) {
		t.Errorf("the failed build deleted %s, which it did not create", foreign)
	}
}

func TestSweepStale(t *testing.T) {
	Require(t)
	const prefix = "pghasweep"
	// A pid that certainly ran and exited.
	done := exec.Command("true")
	if err := done.Run(); err != nil {
		t.Fatal(err)
	}
	dead := prefix + "-" + strconv.Itoa(done.Process.Pid) + "-0000-sw"
	live := prefix + "-" + strconv.Itoa(os.Getpid()) + "-0000-sw"
	other := "pghasweepx-1-0000-sw" // another prefix
	for _, ns := range []string{dead, live, other} {
		if err := ipCmd("netns", "add", ns); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = deleteNamespace(ns) })
	}

	if err := SweepStale(prefix); err != nil {
		t.Fatal(err)
	}
	names, _ := listNamespaces()
	if slices.Contains(names, dead) {
		t.Errorf("SweepStale kept %s, whose run is dead", dead)
	}
	if !slices.Contains(names, live) || !slices.Contains(names, other) {
		t.Errorf("SweepStale removed a live run's or another prefix's namespace: have %v", names)
	}
}

func TestOptionsValidation(t *testing.T) {
	for _, o := range []Options{
		{Hosts: 0},
		{Hosts: 3, Subnet: "10.77.0.0"},
		{Hosts: 3, Subnet: "fd00::/64"},
		{Hosts: 3, Subnet: "10.77.0.0/28", Client: true}, // no room for .50
		{Hosts: 40},
		{Hosts: 3, Prefix: "a/b"},
	} {
		if _, _, err := o.withDefaults(); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
	if _, _, err := (Options{Hosts: 3, Client: true}).withDefaults(); err != nil {
		t.Error(err)
	}
}

package netns

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
)

// MAC is the hardware address of interface ifname in namespace ns, lower case.
func MAC(ns, ifname string) (string, error) {
	out, err := output("ip", "-n", ns, "-j", "link", "show", "dev", ifname)
	if err != nil {
		return "", err
	}
	var links []struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		return "", fmt.Errorf("netns: parse `ip link show dev %s` in %s: %v: %q", ifname, ns, err, out)
	}
	return strings.ToLower(links[0].Address), nil
}

// Neighbour is namespace ns's neighbour (ARP) entry for ip: its hardware
// address (lower case; empty while unresolved) and its state, e.g. "STALE" or
// "REACHABLE" (several states are joined with ","). Both are empty, with a
// nil error, when there is no entry.
func Neighbour(ns, ip string) (mac, state string, err error) {
	out, err := output("ip", "-n", ns, "-j", "neigh", "show", "to", ip)
	if err != nil {
		return "", "", err
	}
	var entries []struct {
		Dst    string   `json:"dst"`
		LLAddr string   `json:"lladdr"`
		State  []string `json:"state"`
	}
	if strings.TrimSpace(out) == "" {
		return "", "", nil
	}
	if err := json.Unmarshal([]byte(out), &entries); err != nil {
		return "", "", fmt.Errorf("netns: parse `ip neigh show to %s` in %s: %v: %q", ip, ns, err, out)
	}
	for _, e := range entries {
		if e.Dst == ip {
			return strings.ToLower(e.LLAddr), strings.Join(e.State, ","), nil
		}
	}
	return "", "", nil
}

// Address is one IPv4 address configured in a namespace.
type Address struct {
	Interface string
	Prefix    netip.Prefix
	Label     string
}

// Addresses lists every IPv4 address in namespace ns, on any interface.
func Addresses(ns string) ([]Address, error) {
	out, err := output("ip", "-n", ns, "-j", "-4", "addr", "show")
	if err != nil {
		return nil, err
	}
	var links []struct {
		Ifname   string `json:"ifname"`
		AddrInfo []struct {
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
			Label     string `json:"label"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil {
		return nil, fmt.Errorf("netns: parse `ip addr show` in %s: %v: %q", ns, err, out)
	}
	var addrs []Address
	for _, l := range links {
		for _, a := range l.AddrInfo {
			p, err := netip.ParsePrefix(fmt.Sprintf("%s/%d", a.Local, a.PrefixLen))
			if err != nil {
				return nil, fmt.Errorf("netns: address %s/%d in %s: %w", a.Local, a.PrefixLen, ns, err)
			}
			addrs = append(addrs, Address{Interface: l.Ifname, Prefix: p, Label: a.Label})
		}
	}
	return addrs, nil
}

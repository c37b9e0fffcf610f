package vip

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // substring of the error; empty: valid
	}{
		{"no VIP", Config{}, ""},
		{"minimal", Config{Address: "10.77.0.100/24", Interface: "eth0"}, ""},
		{"full", Config{Address: "10.0.0.5/16", Interface: "ens192", Label: "ens192:vip", Announcements: 3, AnnounceInterval: time.Second, ProbeTimeout: time.Second}, ""},
		{"host route", Config{Address: "10.77.0.100/32", Interface: "eth0"}, ""},
		{"interface without address", Config{Interface: "eth0"}, "vip.address: required"},
		{"address without interface", Config{Address: "10.77.0.100/24"}, "vip.interface: required"},
		{"no prefix length", Config{Address: "10.77.0.100", Interface: "eth0"}, `vip.address: "10.77.0.100" has no prefix length`},
		{"garbage address", Config{Address: "vip.example", Interface: "eth0"}, "vip.address:"},
		{"IPv6", Config{Address: "fd00::100/64", Interface: "eth0"}, "only IPv4"},
		{"network address", Config{Address: "10.77.0.0/24", Interface: "eth0"}, "network address"},
		{"broadcast address", Config{Address: "10.77.0.255/24", Interface: "eth0"}, "broadcast address"},
		{"loopback", Config{Address: "127.0.0.5/8", Interface: "lo"}, "not a unicast address"},
		{"multicast", Config{Address: "224.0.0.5/24", Interface: "eth0"}, "not a unicast address"},
		{"interface too long", Config{Address: "10.77.0.100/24", Interface: "a-very-long-ifname"}, "vip.interface:"},
		{"interface with colon", Config{Address: "10.77.0.100/24", Interface: "eth0:1"}, "vip.interface:"},
		{"label too long", Config{Address: "10.77.0.100/24", Interface: "eth0", Label: "eth0:pgha-virtual"}, "vip.label:"},
		{"label of another interface", Config{Address: "10.77.0.100/24", Interface: "eth0", Label: "eth1:pgha"}, `vip.label: "eth1:pgha" must start with the interface name "eth0"`},
		{"negative announcements", Config{Address: "10.77.0.100/24", Interface: "eth0", Announcements: -1}, "vip.announcements:"},
		{"negative interval", Config{Address: "10.77.0.100/24", Interface: "eth0", AnnounceInterval: -time.Second}, "vip.announce_interval:"},
		{"negative probe timeout", Config{Address: "10.77.0.100/24", Interface: "eth0", ProbeTimeout: -time.Second}, "vip.probe_timeout:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("no error, want one containing %q", tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	got := Config{Address: "10.77.0.100/24", Interface: "eth0"}.WithDefaults()
	want := Config{Address: "10.77.0.100/24", Interface: "eth0", Label: "eth0:pgha",
		Announcements: 5, AnnounceInterval: 200 * time.Millisecond, ProbeTimeout: 150 * time.Millisecond}
	if got != want {
		t.Errorf("WithDefaults = %+v, want %+v", got, want)
	}
	for iface, label := range map[string]string{
		"enp0s31f6":       "enp0s31f6:pgha",
		"enp0s31f6abc":    "enp0s31f6abc:pg",
		"enp0s31f6abcd":   "enp0s31f6abcd:p",
		"enp0s31f6abcde":  "enp0s31f6abcde",
		"enp0s31f6abcdef": "enp0s31f6abcdef",
	} {
		cfg := Config{Address: "10.77.0.100/24", Interface: iface}
		if got := cfg.WithDefaults().Label; got != label {
			t.Errorf("default label for %s = %q, want %q", iface, got, label)
		}
		if err := cfg.Validate(); err != nil {
			t.Errorf("%s: %v", iface, err)
		}
	}
}

func TestDisabled(t *testing.T) {
	m, err := FromConfig(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := m.(Disabled); !ok {
		t.Fatalf("FromConfig(empty) = %T, want Disabled", m)
	}
	ctx := context.Background()
	if m.Acquire(ctx) != nil || m.Release(ctx) != nil || m.Held() {
		t.Error("Disabled must do nothing and hold nothing")
	}
	if _, err := FromConfig(Config{Interface: "eth0"}, nil); err == nil {
		t.Error("FromConfig accepted an interface without an address")
	}
	if _, err := New(Config{}, nil); err == nil {
		t.Error("New accepted a config without a VIP")
	}
	if _, err := New(Config{Address: "10.77.0.100/24", Interface: "eth0"}, nil, InNamespace("/nonexistent/netns")); err == nil {
		t.Error("New accepted a namespace path that does not exist")
	}
}

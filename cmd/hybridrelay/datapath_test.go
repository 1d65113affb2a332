package main

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/hybridrelay/hybridrelay/pkg/control"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

func TestDecideDatapath(t *testing.T) {
	eth0 := ifaceXDP{Iface: "eth0", Native: true, Generic: true, Found: true, OperState: "up", Up: true,
		LinkType: "ethernet", Ethernet: true, MAC: "02:00:00:00:00:01", MTU: 1500, RouteFamilies: []string{"ipv4"}}
	good := hostFacts{Root: true, BTF: true, BPFFSDir: "/sys/fs/bpf/hybridrelay", Families: []string{"ipv4"},
		XDP: []ifaceXDP{eth0},
		UDP: dataplane.Features{UDPSegment: true, UDPGRO: true, Kernel: "6.18.0"}}
	genericOnly := good
	g := eth0
	g.Native, g.NativeErr = false, "driver does not support this mode"
	genericOnly.XDP = []ifaceXDP{g}
	noRoot := good
	noRoot.Root = false
	noBPFFS := good
	noBPFFS.BPFFS = "/sys/fs/bpf is not on a bpf filesystem"
	noIface := good
	noIface.XDP, noIface.IfaceReason = nil, "no up, non-loopback interface"
	noGSO := noRoot
	noGSO.UDP = dataplane.Features{Reason: "UDP_SEGMENT: protocol not available"}

	// Hosts where XDP loads and attaches but the kernel path would forward
	// nothing.
	with := func(mod func(*ifaceXDP)) hostFacts {
		f := good
		x := eth0
		mod(&x)
		f.XDP = []ifaceXDP{x}
		return f
	}
	tun := with(func(x *ifaceXDP) { x.Iface, x.LinkType, x.Ethernet, x.MAC = "tun0", "none (tun, wireguard)", false, "" })
	down := with(func(x *ifaceXDP) { x.Up, x.OperState = false, "down" })
	noMAC := with(func(x *ifaceXDP) { x.Ethernet, x.MAC = false, "" })
	v6Only := with(func(x *ifaceXDP) { x.RouteFamilies = []string{"ipv6"} })
	v6Relay := v6Only
	v6Relay.Families = []string{"ipv4", "ipv6"}
	noNetlink := good
	noNetlink.Netlink = "RTM_GETLINK: operation not permitted"
	// One usable interface among unusable ones is enough.
	mixed := good
	mixed.XDP = append([]ifaceXDP{tun.XDP[0]}, eth0)
	tunNoGSO := tun
	tunNoGSO.UDP = dataplane.Features{Reason: "UDP_SEGMENT: protocol not available"}

	tests := []struct {
		name           string
		req, mode      string
		f              hostFacts
		want           string
		reason, errStr string
	}{
		{name: "plain", req: "plain", f: good, want: "plain", reason: "requested with --datapath plain"},
		{name: "gso", req: "gso", f: noRoot, want: "gso", reason: "kernel has UDP_SEGMENT"},
		{name: "gso without segment still gso", req: "gso", f: noGSO, want: "gso", reason: "kernel lacks UDP_SEGMENT"},
		{name: "auto best", req: "auto", mode: "auto", f: good, want: "xdp", reason: "auto: XDP attaches (eth0 native)"},
		{name: "auto generic mode", req: "auto", mode: "generic", f: good, want: "xdp", reason: "eth0 generic"},
		{name: "auto native mode lacking", req: "auto", mode: "native", f: genericOnly, want: "gso", reason: "XDP native attach on eth0 (driver does not support this mode)"},
		{name: "auto generic fallback ok", req: "auto", mode: "auto", f: genericOnly, want: "xdp", reason: "eth0 generic"},
		{name: "auto not root", req: "auto", f: noRoot, want: "gso", reason: "auto: xdp unavailable (missing root privileges"},
		{name: "auto no bpffs", req: "auto", f: noBPFFS, want: "gso", reason: "a bpf filesystem for pinning"},
		{name: "auto loopback only", req: "auto", f: noIface, want: "gso", reason: "an interface to attach to (no up, non-loopback interface)"},
		{name: "auto nothing", req: "auto", f: noGSO, want: "plain", reason: "kernel lacks UDP_SEGMENT (UDP_SEGMENT: protocol not available)"},
		{name: "auto tun only", req: "auto", f: tun, want: "gso",
			reason: "auto: xdp would forward nothing (no XDP interface is up, Ethernet and carries an IPv4 route: tun0 not Ethernet (link type none (tun, wireguard); the program rewrites Ethernet headers)); kernel has UDP_SEGMENT"},
		{name: "auto link down", req: "auto", f: down, want: "gso", reason: "eth0 down (oper state down)"},
		{name: "auto no MAC", req: "auto", f: noMAC, want: "gso", reason: "eth0 has no MAC address"},
		{name: "auto route of another family", req: "auto", f: v6Only, want: "gso", reason: "eth0 carries no IPv4 route"},
		{name: "auto route of one of two families", req: "auto", f: v6Relay, want: "xdp", reason: "auto: XDP attaches"},
		{name: "auto no netlink", req: "auto", f: noNetlink, want: "gso", reason: "rtnetlink queries fail, so no next hop can be resolved (RTM_GETLINK: operation not permitted)"},
		{name: "auto one usable", req: "auto", f: mixed, want: "xdp", reason: "auto: XDP attaches (tun0 native, eth0 native)"},
		{name: "auto tun without gso", req: "auto", f: tunNoGSO, want: "plain", reason: "xdp would forward nothing"},
		{name: "xdp on tun runs and says so", req: "xdp", f: tun, want: "xdp", reason: "the kernel path forwards nothing until this is fixed: no XDP interface is up"},
		{name: "xdp ok", req: "xdp", f: good, want: "xdp", reason: "requested with --datapath xdp"},
		{name: "xdp not root", req: "xdp", f: noRoot, errStr: "datapath xdp: this host lacks root privileges (CAP_BPF and CAP_NET_ADMIN); --datapath gso works without them"},
		{name: "xdp native lacking", req: "xdp", mode: "native", f: genericOnly, errStr: "lacks XDP native attach on eth0 (driver does not support this mode); --datapath gso works"},
		{name: "bogus", req: "fast", f: good, errStr: `datapath "fast" is not auto, xdp, gso or plain`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mode := tt.mode
			if mode == "" {
				mode = "auto"
			}
			got, reason, err := decideDatapath(tt.req, mode, tt.f)
			if tt.errStr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errStr) {
					t.Fatalf("err %v, want %q", err, tt.errStr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want || !strings.Contains(reason, tt.reason) {
				t.Fatalf("got %s (%s), want %s (%s)", got, reason, tt.want, tt.reason)
			}
		})
	}
}

func TestPickRelayIPs(t *testing.T) {
	a := netip.MustParseAddr
	l := func(s string) control.ListenerSpec {
		return control.ListenerSpec{Network: "udp", Addr: netip.MustParseAddrPort(s)}
	}
	host := []ifaceAddr{
		{Iface: "lo", Loopback: true, Up: true, Addr: a("127.0.0.1")},
		{Iface: "eth0", Up: true, Addr: a("fe80::1")},
		{Iface: "eth0", Up: true, Addr: a("10.0.0.5")},
		{Iface: "eth1", Up: true, Addr: a("192.0.2.7")},
		{Iface: "eth1", Up: true, Addr: a("2001:db8::7")},
		{Iface: "down0", Up: false, Addr: a("198.51.100.1")},
	}
	tests := []struct {
		name string
		ls   []control.ListenerSpec
		host []ifaceAddr
		want []netip.Addr
		why  string
	}{
		{name: "v4 prefers public", ls: []control.ListenerSpec{l("0.0.0.0:3478")}, host: host, want: []netip.Addr{a("192.0.2.7")}, why: "192.0.2.7 (first global address of eth1)"},
		{name: "v6", ls: []control.ListenerSpec{l("[::]:3478")}, host: host, want: []netip.Addr{a("2001:db8::7")}},
		{name: "private only", ls: []control.ListenerSpec{l("0.0.0.0:3478")}, host: host[:3], want: []netip.Addr{a("10.0.0.5")}},
		{name: "specific plus unspecified v6", ls: []control.ListenerSpec{l("192.0.2.99:1"), l("[::]:1")}, host: host, want: []netip.Addr{a("192.0.2.99"), a("2001:db8::7")}},
		{name: "nothing", ls: []control.ListenerSpec{l("0.0.0.0:3478")}, host: host[:2], why: "no interface has a global address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := pickRelayIPs(tt.ls, tt.host)
			if !reflect.DeepEqual(got, tt.want) || !strings.Contains(why, tt.why) {
				t.Fatalf("got %v (%s), want %v (%s)", got, why, tt.want, tt.why)
			}
		})
	}
}

func TestIfacesFor(t *testing.T) {
	a := netip.MustParseAddr
	host := []ifaceAddr{
		{Iface: "lo", Loopback: true, Up: true, Addr: a("127.0.0.1")},
		{Iface: "eth0", Up: true, Addr: a("192.0.2.7")},
		{Iface: "eth1", Up: true, Addr: a("198.51.100.7")},
		{Iface: "eth2", Up: false, Addr: a("203.0.113.7")},
	}
	cfg := func(listen string, relays ...string) control.Config {
		c := control.Config{Listeners: []control.ListenerSpec{{Network: "udp", Addr: netip.MustParseAddrPort(listen)}}}
		for _, r := range relays {
			c.RelayIPs = append(c.RelayIPs, a(r))
		}
		return c
	}
	tests := []struct {
		name string
		cfg  control.Config
		want []string
	}{
		{"loopback only", cfg("127.0.0.1:3478", "127.0.0.1"), nil},
		{"specific", cfg("192.0.2.7:3478"), []string{"eth0"}},
		{"listener and relay on two", cfg("192.0.2.7:3478", "198.51.100.7"), []string{"eth0", "eth1"}},
		{"unspecified", cfg("0.0.0.0:3478"), []string{"eth0", "eth1"}},
	}
	for _, tt := range tests {
		if got := ifacesFor(tt.cfg, host); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestDiffUsers(t *testing.T) {
	added, removed, changed := diffUsers(map[string]string{"a": "1", "b": "2", "c": "3"}, map[string]string{"a": "1", "b": "x", "d": "4"})
	if !reflect.DeepEqual(added, []string{"d"}) || !reflect.DeepEqual(removed, []string{"c"}) || changed != 1 {
		t.Fatal(added, removed, changed)
	}
}

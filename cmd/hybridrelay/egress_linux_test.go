//go:build linux

package main

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

func TestClassifyEgress(t *testing.T) {
	a := netip.MustParseAddr
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	gwMAC := net.HardwareAddr{2, 0, 0, 0, 0, 0xfe}
	up := uint32(unix.IFF_UP | unix.IFF_RUNNING)
	links := map[int]nlLink{
		2: {Index: 2, Name: "eth0", Type: unix.ARPHRD_ETHER, Flags: up, MTU: 1500, MAC: mac},
		3: {Index: 3, Name: "eth1", Type: unix.ARPHRD_ETHER, Flags: unix.IFF_UP, MTU: 1500, MAC: mac},
		4: {Index: 4, Name: "eth2", Type: unix.ARPHRD_ETHER, Flags: up, MTU: 9000, MAC: mac},
		5: {Index: 5, Name: "tun0", Type: unix.ARPHRD_NONE, Flags: up, MTU: 1420},
	}
	xdp := map[int]bool{2: true, 3: true, 5: true}
	neighs := []nlNeigh{
		{Ifindex: 2, Dst: a("198.18.0.1"), State: unix.NUD_REACHABLE, MAC: gwMAC},
		{Ifindex: 2, Dst: a("198.18.0.7"), State: unix.NUD_FAILED},
		{Ifindex: 2, Dst: a("198.18.0.8"), State: unix.NUD_STALE, MAC: gwMAC},
	}
	via := func(oif int, gw string) nlRoute {
		r := nlRoute{Type: unix.RTN_UNICAST, Oifs: []int{oif}}
		if gw != "" {
			r.Gateway = a(gw)
		}
		return r
	}
	tests := []struct {
		name   string
		dst    string
		r      nlRoute
		err    error
		ok     bool
		reason string
		ifname string
	}{
		{"usable via gateway", "198.18.9.1", via(2, "198.18.0.1"), nil, true, "", "eth0"},
		{"usable on-link stale", "198.18.0.8", via(2, ""), nil, true, "", "eth0"},
		{"no route", "198.18.9.1", nlRoute{}, errNoRoute, true, "pass_no_route", ""},
		{"lookup failed", "198.18.9.1", nlRoute{}, errors.New("EPERM"), false, "", ""},
		{"local", "198.18.0.2", nlRoute{Type: unix.RTN_LOCAL, Oifs: []int{1}}, nil, true, "pass_local", ""},
		{"link down", "198.18.9.1", via(3, "198.18.0.1"), nil, true, "pass_link_down", "eth1"},
		{"not an XDP interface", "198.18.9.1", via(4, "198.18.0.1"), nil, true, "pass_no_egress", "eth2"},
		{"not Ethernet", "198.18.9.1", via(5, ""), nil, true, "pass_no_egress", "tun0"},
		{"neighbour failed", "198.18.9.1", via(2, "198.18.0.7"), nil, true, "pass_no_neigh", "eth0"},
		{"neighbour unknown yet", "198.18.0.9", via(2, ""), nil, true, "pass_no_nexthop", "eth0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, ok := classifyEgress(a(tt.dst), tt.r, tt.err, links, neighs, xdp)
			if ok != tt.ok || (ok && (e.Reason != tt.reason || e.Ifname != tt.ifname)) {
				t.Fatalf("got %+v ok=%v, want reason %q on %q ok=%v", e, ok, tt.reason, tt.ifname, tt.ok)
			}
			if ok && tt.reason == "" && (e.DstMAC.String() != gwMAC.String() || e.SrcMAC.String() != mac.String() || e.MTU != 1500) {
				t.Fatalf("usable entry lacks MACs or MTU: %+v", e)
			}
		})
	}
}

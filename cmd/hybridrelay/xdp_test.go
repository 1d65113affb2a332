package main

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/hybridrelay/hybridrelay/pkg/control"
)

func TestListenerAddrs(t *testing.T) {
	host := []ifaceAddr{
		{Iface: "lo", Loopback: true, Addr: netip.MustParseAddr("127.0.0.1")},
		{Iface: "eth0", Addr: netip.MustParseAddr("198.18.0.2")},
		{Iface: "eth0", Addr: netip.MustParseAddr("2001:2::2")},
		{Iface: "eth1", Addr: netip.MustParseAddr("198.18.1.2")},
	}
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		name string
		ls   []control.ListenerSpec
		want []netip.AddrPort
	}{
		{"specific", []control.ListenerSpec{{Network: "udp", Addr: ap("198.18.0.2:3478")}, {Network: "tcp", Addr: ap("198.18.0.2:3478")}},
			[]netip.AddrPort{ap("198.18.0.2:3478")}},
		{"ipv4 wildcard is the ipv4 addresses", []control.ListenerSpec{{Network: "udp", Addr: ap("0.0.0.0:3478")}},
			[]netip.AddrPort{ap("127.0.0.1:3478"), ap("198.18.0.2:3478"), ap("198.18.1.2:3478")}},
		{"ipv6 wildcard is v6 only", []control.ListenerSpec{{Network: "udp", Addr: ap("[::]:3479")}},
			[]netip.AddrPort{ap("[2001:2::2]:3479")}},
		{"mapped and duplicates", []control.ListenerSpec{{Network: "udp", Addr: ap("[::ffff:198.18.0.2]:3478")}, {Network: "udp", Addr: ap("0.0.0.0:3478")}},
			[]netip.AddrPort{ap("198.18.0.2:3478"), ap("127.0.0.1:3478"), ap("198.18.1.2:3478")}},
		{"tls and tcp only", []control.ListenerSpec{{Network: "tls", Addr: ap("0.0.0.0:5349")}}, nil},
	} {
		if got := listenerAddrs(tc.ls, host); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}

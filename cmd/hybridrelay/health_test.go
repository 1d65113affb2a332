package main

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/pkg/control"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// TestBindingRoundTrip: the /healthz self check passes against a serving
// control plane (reached on loopback when the listener is unspecified) and
// fails, naming the receive loops, against a socket nobody reads.
func TestBindingRoundTrip(t *testing.T) {
	cfg := control.DefaultConfig()
	cfg.Listeners = []control.ListenerSpec{{Network: "udp", Addr: netip.MustParseAddrPort("127.0.0.1:0")}}
	cfg.RelayIPs = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	cfg.Users = map[string]string{"u": "p"}
	dp := dataplane.NewPlain()
	srv, err := control.NewServer(cfg, control.Options{Datapath: dp})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Close(); dp.Close() }()
	bound := srv.Addrs()[0].Addr
	if err := bindingRoundTrip(srv.Addrs(), time.Second); err != nil {
		t.Fatalf("serving: %v", err)
	}
	unspec := []control.ListenerSpec{{Network: "tcp", Addr: bound}, {Network: "udp", Addr: netip.AddrPortFrom(netip.IPv4Unspecified(), bound.Port())}}
	if err := bindingRoundTrip(unspec, time.Second); err != nil {
		t.Fatalf("unspecified listener: %v", err)
	}
	if got := srv.Stats().Requests["binding"]["ok"]; got != 2 {
		t.Errorf("binding ok %d, want 2 (one per check)", got)
	}
	deaf, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer deaf.Close()
	err = bindingRoundTrip([]control.ListenerSpec{{Network: "udp", Addr: deaf.LocalAddr().(*net.UDPAddr).AddrPort()}}, 400*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "receive loops do not run") {
		t.Fatalf("deaf listener: %v", err)
	}
	if err := bindingRoundTrip([]control.ListenerSpec{{Network: "tcp", Addr: bound}}, time.Second); err != nil {
		t.Fatalf("no UDP listener: %v", err)
	}
	var c selfCheck
	if err := c.check(srv.Addrs()); err != nil {
		t.Fatal(err)
	}
	c.check(srv.Addrs()) // cached: no second Binding
	if got := srv.Stats().Requests["binding"]["ok"]; got != 3 {
		t.Errorf("binding ok %d after two cached checks, want 3", got)
	}
}

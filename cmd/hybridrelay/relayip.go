package main

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/hybridrelay/hybridrelay/internal/config"
	"github.com/hybridrelay/hybridrelay/pkg/control"
)

// ifaceAddr is one address of one network interface.
type ifaceAddr struct {
	Iface    string
	Index    int
	Loopback bool
	Up       bool
	Addr     netip.Addr
}

// hostAddrs lists the addresses of the host's interfaces (in the calling
// thread's network namespace).
func hostAddrs() []ifaceAddr {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []ifaceAddr
	for _, ifc := range ifs {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			if !ok {
				continue
			}
			out = append(out, ifaceAddr{Iface: ifc.Name, Index: ifc.Index, Loopback: ifc.Flags&net.FlagLoopback != 0,
				Up: ifc.Flags&net.FlagUp != 0, Addr: ip.Unmap()})
		}
	}
	return out
}

// pickRelayIPs chooses relay addresses when none is configured and some
// listener address is unspecified: for each family a listener serves, the
// first global unicast address of an up interface, public addresses before
// private ones (RFC 1918 / ULA). It says what it did, or why it could not.
func pickRelayIPs(listeners []control.ListenerSpec, host []ifaceAddr) ([]netip.Addr, string) {
	var out []netip.Addr
	fams := map[bool]bool{} // is4 -> needed
	for _, l := range listeners {
		a := l.Addr.Addr().Unmap()
		if !a.IsUnspecified() {
			if !slices.Contains(out, a) {
				out = append(out, a)
			}
			continue
		}
		fams[a.Is4()] = true
	}
	if len(fams) == 0 {
		return out, "listener addresses are specific"
	}
	var picked []string
	for _, is4 := range []bool{true, false} {
		if !fams[is4] || hasFamily(out, is4) {
			continue
		}
		var best netip.Addr
		var bestIf string
		for _, h := range host {
			if !h.Up || h.Loopback || h.Addr.Is4() != is4 || !h.Addr.IsGlobalUnicast() || h.Addr.IsLinkLocalUnicast() {
				continue
			}
			if !best.IsValid() || best.IsPrivate() && !h.Addr.IsPrivate() {
				best, bestIf = h.Addr, h.Iface
			}
		}
		if best.IsValid() {
			out = append(out, best)
			picked = append(picked, fmt.Sprintf("%s (first global address of %s)", best, bestIf))
		}
	}
	if len(out) == 0 {
		return nil, "every listener address is unspecified and no interface has a global address"
	}
	return out, fmt.Sprintf("listener address unspecified; using %v", picked)
}

func hasFamily(as []netip.Addr, is4 bool) bool {
	for _, a := range as {
		if a.Is4() == is4 {
			return true
		}
	}
	return false
}

// xdpIfaces returns the interfaces the XDP program should be attached to:
// --xdp-iface when given, else the up, non-loopback interfaces holding the
// UDP listener and relay addresses (all up non-loopback interfaces for an
// unspecified listener address).
func xdpIfaces(s *config.Settings, cfg control.Config) []string {
	if len(s.XDPIfaces) > 0 {
		return s.XDPIfaces
	}
	return ifacesFor(cfg, hostAddrs())
}

func ifacesFor(cfg control.Config, host []ifaceAddr) []string {
	var want []netip.Addr
	anyAddr := false
	for _, l := range cfg.Listeners {
		if l.Network != "udp" {
			continue
		}
		if l.Addr.Addr().IsUnspecified() {
			anyAddr = true
		} else {
			want = append(want, l.Addr.Addr().Unmap())
		}
	}
	want = append(want, cfg.RelayIPs...)
	var out []string
	for _, h := range host {
		if !h.Up || h.Loopback || slices.Contains(out, h.Iface) {
			continue
		}
		if anyAddr && h.Addr.IsGlobalUnicast() || slices.Contains(want, h.Addr) {
			out = append(out, h.Iface)
		}
	}
	return out
}

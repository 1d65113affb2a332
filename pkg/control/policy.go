package control

import (
	"net"
	"net/netip"
)

// defaultDenyPeers are the peer ranges a relay must not reach unless the
// operator allows them (docs/design.md "Security defaults"): relaying into them
// would let a TURN client reach the server's own host, its LAN or a cloud
// metadata service (169.254.169.254).
var defaultDenyPeers = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),          // "this network", RFC 1122
	netip.MustParsePrefix("10.0.0.0/8"),         // RFC 1918
	netip.MustParsePrefix("127.0.0.0/8"),        // loopback
	netip.MustParsePrefix("169.254.0.0/16"),     // link-local incl. metadata
	netip.MustParsePrefix("172.16.0.0/12"),      // RFC 1918
	netip.MustParsePrefix("192.168.0.0/16"),     // RFC 1918
	netip.MustParsePrefix("224.0.0.0/4"),        // multicast
	netip.MustParsePrefix("255.255.255.255/32"), // limited broadcast
	netip.MustParsePrefix("::/128"),             // unspecified
	netip.MustParsePrefix("::1/128"),            // loopback
	netip.MustParsePrefix("fe80::/10"),          // link-local
	netip.MustParsePrefix("fc00::/7"),           // ULA, RFC 4193
	netip.MustParsePrefix("ff00::/8"),           // multicast
}

// peerPolicy decides which peer addresses an allocation may reach. It is
// built once in Start (it needs the bound listener addresses) and never
// changes afterwards, so it needs no lock.
type peerPolicy struct {
	allow []netip.Prefix
	deny  []netip.Prefix
	// relayIPs are reachable even inside a denied range (hairpin between
	// two allocations on this server, docs/design.md "Security defaults"); only
	// their live relay ports are, see Server.peerSendable.
	relayIPs map[netip.Addr]bool
	// listenerIPs are the server's own addresses: the specified listener
	// addresses and, when a listener is bound to a wildcard address, every
	// address of the host (a wildcard listener answers on all of them).
	listenerIPs map[netip.Addr]bool
	// listenerPorts are the ports the server answers STUN on; no relayed
	// datagram may be sent to them on one of our addresses.
	listenerPorts map[uint16]bool
}

// newPeerPolicy builds the policy; hostIPs are the host's addresses, used
// when a listener is bound to a wildcard address.
func newPeerPolicy(cfg *Config, relayIPs []netip.Addr, listeners []ListenerSpec, hostIPs []netip.Addr) *peerPolicy {
	p := &peerPolicy{
		allow:         append([]netip.Prefix(nil), cfg.AllowPeers...),
		deny:          append(append([]netip.Prefix(nil), defaultDenyPeers...), cfg.DenyPeers...),
		relayIPs:      map[netip.Addr]bool{},
		listenerIPs:   map[netip.Addr]bool{},
		listenerPorts: map[uint16]bool{},
	}
	for _, ip := range relayIPs {
		p.relayIPs[ip.Unmap()] = true
	}
	wildcard := false
	for _, l := range listeners {
		p.listenerPorts[l.Addr.Port()] = true
		if a := l.Addr.Addr().Unmap(); !a.IsUnspecified() {
			p.listenerIPs[a] = true
		} else {
			wildcard = true
		}
	}
	if wildcard {
		for _, a := range hostIPs {
			p.listenerIPs[a.Unmap()] = true
		}
	}
	return p
}

// hostAddrs returns the addresses of the host's interfaces (best effort:
// an error leaves the list empty and only the built-in ranges apply).
func hostAddrs() []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if pn, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(pn.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}

// verdict is the outcome of the IP-level check used by CreatePermission
// and ChannelBind.
type verdict int

const (
	peerAllowed verdict = iota
	peerDenied
	peerOwnRelay // one of our relay IPs: allowed, but only to live relay ports
)

// check applies, in order: the allow list (wins), our relay IPs (hairpin),
// the deny list (built-in plus DenyPeers), our listener IPs. IPv4-mapped
// IPv6 addresses are judged as the IPv4 address they carry.
func (p *peerPolicy) check(ip netip.Addr) verdict {
	ip = ip.Unmap()
	for _, pf := range p.allow {
		if pf.Contains(ip) {
			return peerAllowed
		}
	}
	if p.relayIPs[ip] {
		return peerOwnRelay
	}
	if ip.IsUnspecified() || !ip.IsValid() {
		return peerDenied
	}
	for _, pf := range p.deny {
		if pf.Contains(ip) {
			return peerDenied
		}
	}
	if p.listenerIPs[ip] {
		return peerDenied
	}
	return peerAllowed
}

// allowedExplicitly reports whether ip is in the operator allow list.
func (p *peerPolicy) allowedExplicitly(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, pf := range p.allow {
		if pf.Contains(ip) {
			return true
		}
	}
	return false
}

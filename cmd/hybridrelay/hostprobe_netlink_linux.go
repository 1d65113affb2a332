//go:build linux

package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The rtnetlink queries the next-hop design depends on (rtnetlink(7)),
// through the same netlink library pkg/loader's resolver uses: links
// (type, flags, MTU, address, operational state), routes (every table, and
// a single lookup as `ip route get` does) and neighbours. These are what
// the control plane resolves each destination's egress with; probe and the
// misconfiguration warnings read them the same way.

// nlLink is one link as rtnetlink reports it.
type nlLink struct {
	Index     int
	Name      string
	Encap     string // the link type (ifi_type) as netlink names it: "ether", "loopback", "none", ...
	Flags     uint32 // IFF_*
	MTU       int
	MAC       net.HardwareAddr
	OperState uint8 // IF_OPER_* (RFC 2863)
}

// Up: administratively up and operationally up (IFF_RUNNING, which the
// kernel sets for IF_OPER_UP and for IF_OPER_UNKNOWN devices with carrier,
// such as dummy or tun).
func (l nlLink) Up() bool { return l.Flags&unix.IFF_UP != 0 && l.Flags&unix.IFF_RUNNING != 0 }

// Ethernet: the device carries Ethernet frames (ARPHRD_ETHER), which the
// XDP program parses and rewrites.
func (l nlLink) Ethernet() bool { return l.Encap == "ether" && len(l.MAC) == 6 }

// operStateNames follows RFC 2863 as the kernel reports it (IF_OPER_*).
var operStateNames = []string{"unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up"}

func (l nlLink) OperStateName() string {
	if int(l.OperState) < len(operStateNames) {
		return operStateNames[l.OperState]
	}
	return fmt.Sprintf("operstate %d", l.OperState)
}

// linkTypeName names the link types an operator is likely to meet.
func linkTypeName(encap string) string {
	switch encap {
	case "ether":
		return "ethernet"
	case "none":
		return "none (tun, wireguard)"
	case "tunnel6":
		return "ip6tnl"
	}
	return encap
}

// nlRoute is one RTM_NEWROUTE answer.
type nlRoute struct {
	Family  int
	Dst     netip.Prefix
	Type    uint8 // RTN_*
	Table   uint32
	Oifs    []int // RTA_OIF, or every hop of RTA_MULTIPATH
	Gateway netip.Addr
	PrefSrc netip.Addr
}

// nlNeigh is one RTM_NEWNEIGH answer.
type nlNeigh struct {
	Ifindex int
	Dst     netip.Addr
	State   uint16 // NUD_*
	MAC     net.HardwareAddr
}

func neighStateName(s uint16) string {
	for _, n := range []struct {
		bit  uint16
		name string
	}{{unix.NUD_REACHABLE, "REACHABLE"}, {unix.NUD_STALE, "STALE"}, {unix.NUD_DELAY, "DELAY"}, {unix.NUD_PROBE, "PROBE"},
		{unix.NUD_PERMANENT, "PERMANENT"}, {unix.NUD_NOARP, "NOARP"}, {unix.NUD_INCOMPLETE, "INCOMPLETE"}, {unix.NUD_FAILED, "FAILED"}} {
		if s&n.bit != 0 {
			return n.name
		}
	}
	return "NONE"
}

// neighResolved: the entry has a usable link-layer address.
func neighResolved(s uint16) bool {
	return s&(unix.NUD_REACHABLE|unix.NUD_STALE|unix.NUD_DELAY|unix.NUD_PROBE|unix.NUD_PERMANENT|unix.NUD_NOARP) != 0
}

// nlLinks lists the links of the current network namespace.
func nlLinks() ([]nlLink, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	out := make([]nlLink, 0, len(links))
	for _, l := range links {
		a := l.Attrs()
		out = append(out, nlLink{Index: a.Index, Name: a.Name, Encap: a.EncapType, Flags: a.RawFlags, MTU: a.MTU,
			MAC: a.HardwareAddr, OperState: uint8(a.OperState)})
	}
	return out, nil
}

func addrOfIP(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

func familyOf(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// fromNetlinkRoute converts one route; a nil destination is the default
// route of the family.
func fromNetlinkRoute(family int, r netlink.Route) nlRoute {
	out := nlRoute{Family: family, Type: uint8(r.Type), Table: uint32(r.Table), Gateway: addrOfIP(r.Gw), PrefSrc: addrOfIP(r.Src)}
	if r.Dst != nil {
		ones, _ := r.Dst.Mask.Size()
		out.Dst = netip.PrefixFrom(addrOfIP(r.Dst.IP), ones)
	} else if family == unix.AF_INET {
		out.Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	} else {
		out.Dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	if r.LinkIndex > 0 {
		out.Oifs = append(out.Oifs, r.LinkIndex)
	}
	for _, hop := range r.MultiPath {
		out.Oifs = append(out.Oifs, hop.LinkIndex)
		if !out.Gateway.IsValid() {
			out.Gateway = addrOfIP(hop.Gw)
		}
	}
	return out
}

// nlRoutes lists the routes of one family in every table.
func nlRoutes(family int) ([]nlRoute, error) {
	routes, err := netlink.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	out := make([]nlRoute, 0, len(routes))
	for _, r := range routes {
		out = append(out, fromNetlinkRoute(family, r))
	}
	return out, nil
}

// errNoRoute: the kernel has no usable route (ENETUNREACH, EHOSTUNREACH,
// or a route of type unreachable, blackhole or prohibit).
var errNoRoute = errors.New("no route")

// nlRouteGet asks the kernel which route a packet to dst takes, as
// `ip route get DST` does.
func nlRouteGet(dst netip.Addr) (nlRoute, error) {
	dst = dst.Unmap()
	routes, err := netlink.RouteGet(dst.AsSlice())
	if errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EHOSTUNREACH) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.EINVAL) {
		return nlRoute{}, fmt.Errorf("%w to %s (%v)", errNoRoute, dst, err)
	}
	if err != nil {
		return nlRoute{}, fmt.Errorf("route get %s: %w", dst, err)
	}
	if len(routes) == 0 {
		return nlRoute{}, fmt.Errorf("route get %s: no answer", dst)
	}
	r := fromNetlinkRoute(familyOf(dst), routes[0])
	switch r.Type {
	case unix.RTN_UNREACHABLE, unix.RTN_BLACKHOLE, unix.RTN_PROHIBIT, unix.RTN_THROW:
		return r, fmt.Errorf("%w to %s (route type %d)", errNoRoute, dst, r.Type)
	}
	return r, nil
}

// nlNeighs lists the neighbour table of one family.
func nlNeighs(family int) ([]nlNeigh, error) {
	neighs, err := netlink.NeighList(0, family)
	if err != nil {
		return nil, fmt.Errorf("list neighbours: %w", err)
	}
	out := make([]nlNeigh, 0, len(neighs))
	for _, n := range neighs {
		out = append(out, nlNeigh{Ifindex: n.LinkIndex, Dst: addrOfIP(n.IP), State: uint16(n.State), MAC: n.HardwareAddr})
	}
	return out, nil
}

// readSysctl reads one /proc/sys value of the current network namespace.
func readSysctl(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	switch s := string(b); s {
	case "0\n":
		return "off"
	case "1\n":
		return "on"
	default:
		return s[:len(s)-min(1, len(s))]
	}
}

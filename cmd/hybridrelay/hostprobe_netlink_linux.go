//go:build linux

package main

import (
	endian "encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The rtnetlink queries the next-hop design depends on (rtnetlink(7)):
// links (type, flags, MTU, address, operational state), routes (dump of
// the main table and a single RTM_GETROUTE lookup, as `ip route get` does)
// and neighbours. These are what the control plane resolves each
// destination's egress with; probe and the misconfiguration warnings use
// them the same way.

// nlLink is one RTM_NEWLINK answer.
type nlLink struct {
	Index     int
	Name      string
	Type      uint16 // ARPHRD_*
	Flags     uint32 // IFF_*
	MTU       int
	MAC       net.HardwareAddr
	OperState uint8 // IF_OPER_* (RFC 2863)
}

// Up: administratively up and operationally up (IFF_RUNNING, which the
// kernel sets for IF_OPER_UP and for IF_OPER_UNKNOWN devices with carrier,
// such as dummy or tun).
func (l nlLink) Up() bool { return l.Flags&unix.IFF_UP != 0 && l.Flags&unix.IFF_RUNNING != 0 }

// Ethernet: the device carries Ethernet frames, which the XDP program
// parses and rewrites.
func (l nlLink) Ethernet() bool { return l.Type == unix.ARPHRD_ETHER && len(l.MAC) == 6 }

// operStateNames follows RFC 2863 as the kernel reports it (IF_OPER_*).
var operStateNames = []string{"unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up"}

func (l nlLink) OperStateName() string {
	if int(l.OperState) < len(operStateNames) {
		return operStateNames[l.OperState]
	}
	return fmt.Sprintf("operstate %d", l.OperState)
}

// linkTypeName names the ARPHRD types an operator is likely to meet.
func linkTypeName(t uint16) string {
	switch t {
	case unix.ARPHRD_ETHER:
		return "ethernet"
	case unix.ARPHRD_LOOPBACK:
		return "loopback"
	case unix.ARPHRD_NONE:
		return "none (tun, wireguard)"
	case unix.ARPHRD_TUNNEL:
		return "ipip"
	case unix.ARPHRD_TUNNEL6:
		return "ip6tnl"
	case unix.ARPHRD_IPGRE:
		return "gre"
	case unix.ARPHRD_SIT:
		return "sit"
	case unix.ARPHRD_PPP:
		return "ppp"
	case unix.ARPHRD_INFINIBAND:
		return "infiniband"
	}
	return fmt.Sprintf("ARPHRD %d", t)
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

var nlSeq atomic.Uint32

// nlRequest sends one rtnetlink request and collects the answers: all
// parts of a dump, or the single reply of a get. An NLMSG_ERROR answer is
// returned as its errno.
func nlRequest(typ uint16, flags uint16, body []byte) ([][]byte, uint16, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, 0, fmt.Errorf("netlink socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.Timeval{Sec: 2}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, 0, fmt.Errorf("netlink bind: %w", err)
	}
	seq := nlSeq.Add(1)
	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	msg = append(msg, body...)
	endian.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	endian.NativeEndian.PutUint16(msg[4:], typ)
	endian.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|flags)
	endian.NativeEndian.PutUint32(msg[8:], seq)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, 0, fmt.Errorf("netlink send: %w", err)
	}
	dump := flags&unix.NLM_F_DUMP != 0
	var out [][]byte
	var replyType uint16
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, 0, fmt.Errorf("netlink receive: %w", err)
		}
		b := buf[:n]
		for len(b) >= unix.SizeofNlMsghdr {
			l := int(endian.NativeEndian.Uint32(b[0:]))
			if l < unix.SizeofNlMsghdr || l > len(b) {
				return nil, 0, errors.New("netlink: truncated message")
			}
			mtype := endian.NativeEndian.Uint16(b[4:])
			mseq := endian.NativeEndian.Uint32(b[8:])
			data := b[unix.SizeofNlMsghdr:l]
			b = b[nlAlign(l):]
			if mseq != seq {
				continue
			}
			switch mtype {
			case unix.NLMSG_DONE:
				return out, replyType, nil
			case unix.NLMSG_ERROR:
				if len(data) < 4 {
					return nil, 0, errors.New("netlink: short error message")
				}
				if e := int32(endian.NativeEndian.Uint32(data)); e != 0 {
					return nil, 0, unix.Errno(-e)
				}
				return out, replyType, nil // an ACK
			}
			out = append(out, append([]byte(nil), data...))
			replyType = mtype
			if !dump {
				return out, replyType, nil
			}
		}
	}
}

func nlAlign(n int) int { return (n + 3) &^ 3 }

// nlAttrs splits a run of rtattrs by type (the nested and byte-order flag
// bits cleared).
func nlAttrs(b []byte) map[uint16][]byte {
	m := map[uint16][]byte{}
	for len(b) >= 4 {
		l := int(endian.NativeEndian.Uint16(b[0:]))
		t := endian.NativeEndian.Uint16(b[2:]) & 0x3fff
		if l < 4 || l > len(b) {
			break
		}
		m[t] = b[4:l]
		b = b[min(nlAlign(l), len(b)):]
	}
	return m
}

func nlAddr(b []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(b)
	return a
}

func nlU32(b []byte) (uint32, bool) {
	if len(b) < 4 {
		return 0, false
	}
	return endian.NativeEndian.Uint32(b), true
}

func structBytes[T any](v *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))
}

// nlLinks dumps the links of the current network namespace.
func nlLinks() ([]nlLink, error) {
	var req unix.IfInfomsg
	req.Family = unix.AF_UNSPEC
	msgs, _, err := nlRequest(unix.RTM_GETLINK, unix.NLM_F_DUMP, structBytes(&req))
	if err != nil {
		return nil, fmt.Errorf("RTM_GETLINK: %w", err)
	}
	var out []nlLink
	for _, m := range msgs {
		if len(m) < unix.SizeofIfInfomsg {
			continue
		}
		l := nlLink{
			Type:  endian.NativeEndian.Uint16(m[2:]),
			Index: int(int32(endian.NativeEndian.Uint32(m[4:]))),
			Flags: endian.NativeEndian.Uint32(m[8:]),
		}
		a := nlAttrs(m[unix.SizeofIfInfomsg:])
		if v, ok := a[unix.IFLA_IFNAME]; ok {
			l.Name = cString(v)
		}
		if v, ok := nlU32(a[unix.IFLA_MTU]); ok {
			l.MTU = int(v)
		}
		if v, ok := a[unix.IFLA_ADDRESS]; ok {
			l.MAC = append(net.HardwareAddr(nil), v...)
		}
		if v, ok := a[unix.IFLA_OPERSTATE]; ok && len(v) > 0 {
			l.OperState = v[0]
		}
		out = append(out, l)
	}
	return out, nil
}

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

func familyOf(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

func parseRoute(m []byte) (nlRoute, bool) {
	if len(m) < unix.SizeofRtMsg {
		return nlRoute{}, false
	}
	var rt unix.RtMsg
	copy(structBytes(&rt), m)
	r := nlRoute{Family: int(rt.Family), Type: rt.Type, Table: uint32(rt.Table)}
	a := nlAttrs(m[unix.SizeofRtMsg:])
	if v, ok := nlU32(a[unix.RTA_TABLE]); ok {
		r.Table = v
	}
	if dst := nlAddr(a[unix.RTA_DST]); dst.IsValid() {
		r.Dst = netip.PrefixFrom(dst, int(rt.Dst_len))
	} else if rt.Family == unix.AF_INET {
		r.Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	} else {
		r.Dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	if v, ok := nlU32(a[unix.RTA_OIF]); ok {
		r.Oifs = append(r.Oifs, int(v))
	}
	r.Gateway = nlAddr(a[unix.RTA_GATEWAY])
	r.PrefSrc = nlAddr(a[unix.RTA_PREFSRC])
	// RTA_MULTIPATH is a run of rtnexthop, each followed by its own
	// attributes (the gateway of that hop).
	mp := a[unix.RTA_MULTIPATH]
	for len(mp) >= unix.SizeofRtNexthop {
		l := int(endian.NativeEndian.Uint16(mp[0:]))
		if l < unix.SizeofRtNexthop || l > len(mp) {
			break
		}
		r.Oifs = append(r.Oifs, int(int32(endian.NativeEndian.Uint32(mp[4:]))))
		if gw := nlAddr(nlAttrs(mp[unix.SizeofRtNexthop:l])[unix.RTA_GATEWAY]); gw.IsValid() && !r.Gateway.IsValid() {
			r.Gateway = gw
		}
		mp = mp[min(nlAlign(l), len(mp)):]
	}
	return r, true
}

// nlRoutes dumps the routes of one family (all tables).
func nlRoutes(family int) ([]nlRoute, error) {
	req := unix.RtMsg{Family: uint8(family)}
	msgs, _, err := nlRequest(unix.RTM_GETROUTE, unix.NLM_F_DUMP, structBytes(&req))
	if err != nil {
		return nil, fmt.Errorf("RTM_GETROUTE dump: %w", err)
	}
	var out []nlRoute
	for _, m := range msgs {
		if r, ok := parseRoute(m); ok {
			out = append(out, r)
		}
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
	req := unix.RtMsg{Family: uint8(familyOf(dst)), Dst_len: uint8(dst.BitLen())}
	body := append([]byte(nil), structBytes(&req)...)
	raw := dst.AsSlice()
	attr := make([]byte, 4, 4+len(raw))
	endian.NativeEndian.PutUint16(attr[0:], uint16(4+len(raw)))
	endian.NativeEndian.PutUint16(attr[2:], unix.RTA_DST)
	body = append(body, append(attr, raw...)...)
	msgs, _, err := nlRequest(unix.RTM_GETROUTE, 0, body)
	if errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EHOSTUNREACH) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.EINVAL) {
		return nlRoute{}, fmt.Errorf("%w to %s (%v)", errNoRoute, dst, err)
	}
	if err != nil {
		return nlRoute{}, fmt.Errorf("RTM_GETROUTE %s: %w", dst, err)
	}
	if len(msgs) == 0 {
		return nlRoute{}, fmt.Errorf("RTM_GETROUTE %s: no answer", dst)
	}
	r, ok := parseRoute(msgs[0])
	if !ok {
		return nlRoute{}, fmt.Errorf("RTM_GETROUTE %s: short answer", dst)
	}
	switch r.Type {
	case unix.RTN_UNREACHABLE, unix.RTN_BLACKHOLE, unix.RTN_PROHIBIT, unix.RTN_THROW:
		return r, fmt.Errorf("%w to %s (route type %d)", errNoRoute, dst, r.Type)
	}
	return r, nil
}

// nlNeighs dumps the neighbour table of one family.
func nlNeighs(family int) ([]nlNeigh, error) {
	req := unix.NdMsg{Family: uint8(family)}
	msgs, _, err := nlRequest(unix.RTM_GETNEIGH, unix.NLM_F_DUMP, structBytes(&req))
	if err != nil {
		return nil, fmt.Errorf("RTM_GETNEIGH dump: %w", err)
	}
	var out []nlNeigh
	for _, m := range msgs {
		if len(m) < unix.SizeofNdMsg {
			continue
		}
		var nd unix.NdMsg
		copy(structBytes(&nd), m)
		a := nlAttrs(m[unix.SizeofNdMsg:])
		n := nlNeigh{Ifindex: int(nd.Ifindex), State: nd.State, Dst: nlAddr(a[unix.NDA_DST])}
		if v, ok := a[unix.NDA_LLADDR]; ok {
			n.MAC = append(net.HardwareAddr(nil), v...)
		}
		out = append(out, n)
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

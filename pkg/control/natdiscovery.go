package control

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// NAT behaviour discovery (RFC 5780). A UDP listener Da:Dp whose family
// has an other address Ca (Config.OtherAddresses) gets three more UDP
// sockets, Da:Cp, Ca:Dp and Ca:Cp with Cp = Dp+1 (coturn's choice of
// alternate port). The four form one set: a Binding request received on
// any of them is answered with OTHER-ADDRESS (the member that differs in
// both address and port) and RESPONSE-ORIGIN, from the member CHANGE-REQUEST
// names (RFC 5780 section 6.1, Table 1), to the port RESPONSE-PORT names.
// The alternate sockets answer Binding requests only: they are not TURN
// listeners, and the kernel path never sees them. Without an other address
// for its family (a host with one address) a listener does none of this
// and CHANGE-REQUEST, RESPONSE-PORT and PADDING are unknown
// comprehension-required attributes (420), as RFC 5780 section 6.1 asks of
// a server without an alternate address and port.

// natSender sends one datagram from a member of a set.
type natSender func(b []byte, to netip.AddrPort) error

// natSet is one listener's four addresses, indexed [address][port]: 0 is
// the listener's own (Da, Dp), 1 the alternate (Ca, Cp).
type natSet struct {
	addr [2][2]netip.AddrPort
	send [2][2]natSender
}

// natPoint is the member of a set a request arrived on.
type natPoint struct {
	set      *natSet
	ip, port int
}

// natDiscovery is the server's RFC 5780 state: fixed once Start has
// opened the alternate sockets.
type natDiscovery struct {
	points atomic.Pointer[map[netip.AddrPort]natPoint]
	conns  []*net.UDPConn // alternate sockets; written by Start only

	rfc5780      atomic.Uint64 // responses that carried OTHER-ADDRESS
	changeIP     atomic.Uint64
	changePort   atomic.Uint64
	responsePort atomic.Uint64
	padding      atomic.Uint64
	altDropped   atomic.Uint64 // non-Binding traffic on an alternate socket
}

// CHANGE-REQUEST flags (RFC 5780 section 7.2).
const (
	changeIPFlag   = 0x04
	changePortFlag = 0x02
)

// openNATDiscovery opens the alternate sockets of every eligible UDP
// listener. bound are the listeners as bound (real ports).
func (s *Server) openNATDiscovery(bound []ListenerSpec) error {
	if len(s.cfg.OtherAddresses) == 0 {
		return nil
	}
	s.lnMu.Lock()
	udp := append([]dataplane.Conn(nil), s.udpConns...)
	s.lnMu.Unlock()
	points := map[netip.AddrPort]natPoint{}
	for _, l := range bound {
		if l.Network != "udp" {
			continue
		}
		da := l.Addr.Addr()
		ca, ok := otherAddressFor(s.cfg.OtherAddresses, da)
		if !ok {
			continue
		}
		if da.IsUnspecified() {
			s.log.Warn("other-address: RFC 5780 needs a listener on a specific address; this wildcard listener answers without OTHER-ADDRESS",
				"listener", l.Addr, "other_address", ca)
			continue
		}
		if l.Addr.Port() == 65535 {
			return fmt.Errorf("other-address: listener %s has no port+1 for the alternate port", l.Addr)
		}
		var primary dataplane.Conn
		for _, c := range udp {
			if c.LocalAddr() == l.Addr {
				primary = c
				break
			}
		}
		if primary == nil {
			return fmt.Errorf("other-address: listener %s not open", l.Addr)
		}
		set := &natSet{}
		dp, cp := l.Addr.Port(), l.Addr.Port()+1
		set.addr = [2][2]netip.AddrPort{
			{netip.AddrPortFrom(da, dp), netip.AddrPortFrom(da, cp)},
			{netip.AddrPortFrom(ca, dp), netip.AddrPortFrom(ca, cp)},
		}
		set.send[0][0] = primary.WriteTo
		points[set.addr[0][0]] = natPoint{set: set}
		for _, m := range [][2]int{{0, 1}, {1, 0}, {1, 1}} {
			a := set.addr[m[0]][m[1]]
			uc, err := net.ListenUDP(udpNetwork(a.Addr()), net.UDPAddrFromAddrPort(a))
			if err != nil {
				return fmt.Errorf("other-address: alternate socket %s: %w", a, err)
			}
			s.nat.conns = append(s.nat.conns, uc)
			set.send[m[0]][m[1]] = func(b []byte, to netip.AddrPort) error {
				_, err := uc.WriteToUDPAddrPort(b, to)
				return err
			}
			points[a] = natPoint{set: set, ip: m[0], port: m[1]}
			s.wg.Add(1)
			go s.natAltLoop(uc, a)
		}
		s.log.Info("rfc 5780 nat behaviour discovery", "listener", l.Addr, "other_address", set.addr[1][1])
	}
	s.nat.points.Store(&points)
	return nil
}

// natListeners lists the alternate sockets as listeners, for the peer
// policy.
func (s *Server) natListeners() []ListenerSpec {
	pts := s.nat.points.Load()
	if pts == nil {
		return nil
	}
	var out []ListenerSpec
	for a := range *pts {
		out = append(out, ListenerSpec{Network: "udp", Addr: a})
	}
	return out
}

func udpNetwork(a netip.Addr) string {
	if a.Is4() {
		return "udp4"
	}
	return "udp6"
}

// otherAddressFor returns the other address of da's family.
func otherAddressFor(others []netip.Addr, da netip.Addr) (netip.Addr, bool) {
	for _, o := range others {
		if o.Is4() == da.Is4() {
			return o, true
		}
	}
	return netip.Addr{}, false
}

// closeNATDiscovery closes the alternate sockets (their loops end).
func (s *Server) closeNATDiscovery() {
	for _, c := range s.nat.conns {
		_ = c.Close()
	}
}

// natAltLoop serves one alternate socket: Binding requests only.
func (s *Server) natAltLoop(uc *net.UDPConn, local netip.AddrPort) {
	defer s.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := uc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		p := buf[:n]
		// A Binding request: method 0x001, class request (RFC 8489
		// section 5). Anything else has no business here.
		if n < 20 || binary.BigEndian.Uint16(p[0:2]) != 0x0001 {
			s.nat.altDropped.Add(1)
			continue
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		t := fiveTuple{proto: tUDP, client: from, server: local}
		s.natAltPacket(&natSink{uc: uc, addr: from}, t, p)
	}
}

func (s *Server) natAltPacket(sink clientSink, t fiveTuple, p []byte) {
	defer s.recoverPacket()
	s.handleSTUN(nil, sink, t, p)
}

// natSink answers through an alternate socket.
type natSink struct {
	uc   *net.UDPConn
	addr netip.AddrPort
}

func (n *natSink) send(_ dataplane.Tx, b []byte) { _, _ = n.uc.WriteToUDPAddrPort(b, n.addr) }
func (n *natSink) stream() bool                  { return false }

// rfc5780Attrs are the request attributes this file handles.
var rfc5780Attrs = map[stun.AttrType]bool{
	stun.AttrChangeRequest: true,
	stun.AttrResponsePort:  true,
	stun.AttrPadding:       true,
}

// natBinding answers a Binding request that arrived on a member of a set
// (RFC 5780 section 6.1). It reports false when the request did not
// arrive on one, for the plain Binding handler to answer.
func (s *Server) natBinding(r *reqCtx) bool {
	if r.tuple.proto != tUDP {
		return false
	}
	pts := s.nat.points.Load()
	if pts == nil {
		return false
	}
	np, ok := (*pts)[r.tuple.server]
	if !ok {
		return false
	}
	var unk []stun.AttrType
	for _, t := range unknownRequired(r.msg) {
		if !rfc5780Attrs[t] {
			unk = append(unk, t)
		}
	}
	if len(unk) > 0 {
		r.fail(stun.CodeUnknownAttribute, stun.UnknownAttributes(unk))
		return true
	}
	if !r.allowUnauth() {
		return true
	}
	req, err := parseNATRequest(r.msg)
	if err != nil {
		// A malformed CHANGE-REQUEST or RESPONSE-PORT, or RESPONSE-PORT
		// with PADDING ("the server MUST return an error response of
		// type 400").
		r.reply(stun.ClassErrorResponse, stun.CodeBadRequest)
		return true
	}
	ip, port := np.ip, np.port
	if req.changeIP {
		ip ^= 1
		s.nat.changeIP.Add(1)
	}
	if req.changePort {
		port ^= 1
		s.nat.changePort.Add(1)
	}
	origin := np.set.addr[ip][port]
	other := np.set.addr[np.ip^1][np.port^1]
	to := r.tuple.client
	if req.responsePort != 0 {
		// "the server MUST send the response to the IP address from
		// which the request came, and the port in RESPONSE-PORT".
		to = netip.AddrPortFrom(to.Addr(), req.responsePort)
		s.nat.responsePort.Add(1)
	}
	resp := r.build(stun.ClassSuccessResponse, 0, setterFunc(func(m *stun.Message) error {
		if err := addXORAddr(m, stun.AttrXORMappedAddress, r.tuple.client); err != nil {
			return err
		}
		// "The server MUST include both MAPPED-ADDRESS and
		// XOR-MAPPED-ADDRESS in its Response" (an ALG that rewrites
		// addresses shows as the two differing).
		for _, a := range []struct {
			t  stun.AttrType
			ap netip.AddrPort
		}{{stun.AttrMappedAddress, r.tuple.client}, {stun.AttrResponseOrigin, origin}, {stun.AttrOtherAddress, other}} {
			ma := stun.MappedAddress{IP: net.IP(a.ap.Addr().AsSlice()), Port: int(a.ap.Port())}
			if err := ma.AddToAs(m, a.t); err != nil {
				return err
			}
		}
		if req.padding > 0 {
			// PADDING in the response, as long as the request's, so the
			// response is as large as the request (fragmentation test,
			// RFC 5780 section 7.6) and never larger: no amplification.
			m.Add(stun.AttrPadding, make([]byte, req.padding))
		}
		return nil
	}))
	if resp == nil {
		r.reply(stun.ClassErrorResponse, stun.CodeServerError)
		return true
	}
	if req.padding > 0 {
		s.nat.padding.Add(1)
	}
	s.nat.rfc5780.Add(1)
	s.stats.requests[mBinding][resultIndex(0)].Add(1)
	if err := np.set.send[ip][port](resp, to); err != nil {
		s.log.Debug("rfc 5780 response", "from", origin, "to", to, "err", err)
	}
	return true
}

// natUnsupported lists the RFC 5780 attributes of a Binding request that
// a listener without an alternate address and port cannot honour: "If a
// server cannot allocate the same ports on two different IP address, then
// it ... MUST respond with a 420 (Unknown Attribute) to any Request with a
// CHANGE-REQUEST attribute" (RFC 5780 section 6), and a RESPONSE-PORT it
// ignored would send the answer to the wrong port. Two exceptions, as
// coturn makes them: a CHANGE-REQUEST asking for no change (some STUN
// clients add an empty one to every request, because an old server
// demanded it) and PADDING are harmless and ignored.
func natUnsupported(m *stun.Message) []stun.AttrType {
	var out []stun.AttrType
	for _, a := range m.Attributes {
		switch a.Type {
		case stun.AttrChangeRequest:
			if len(a.Value) != 4 || binary.BigEndian.Uint32(a.Value)&(changeIPFlag|changePortFlag) != 0 {
				out = append(out, a.Type)
			}
		case stun.AttrResponsePort:
			out = append(out, a.Type)
		}
	}
	return out
}

// natRequest is what a Binding request asks of RFC 5780.
type natRequest struct {
	changeIP, changePort bool
	responsePort         uint16 // 0: not asked
	padding              int    // length of the request's PADDING
}

// parseNATRequest reads CHANGE-REQUEST (32 bits, flags 0x4 change IP and
// 0x2 change port), RESPONSE-PORT (16-bit port, 16 bits RFFU) and PADDING
// (RFC 5780 sections 7.2, 7.5, 7.6).
func parseNATRequest(m *stun.Message) (natRequest, error) {
	var q natRequest
	if v, err := m.Get(stun.AttrChangeRequest); err == nil {
		if len(v) != 4 {
			return q, fmt.Errorf("change-request length %d: %w", len(v), errBadAttr)
		}
		f := binary.BigEndian.Uint32(v)
		q.changeIP, q.changePort = f&changeIPFlag != 0, f&changePortFlag != 0
	}
	if v, err := m.Get(stun.AttrResponsePort); err == nil {
		if len(v) != 4 {
			return q, fmt.Errorf("response-port length %d: %w", len(v), errBadAttr)
		}
		q.responsePort = binary.BigEndian.Uint16(v)
		if q.responsePort == 0 {
			return q, fmt.Errorf("response-port 0: %w", errBadAttr)
		}
	}
	if v, err := m.Get(stun.AttrPadding); err == nil {
		q.padding = len(v)
		if q.responsePort != 0 {
			return q, fmt.Errorf("padding with response-port: %w", errBadAttr)
		}
	}
	return q, nil
}

// checkOtherAddresses validates Config.OtherAddresses: unicast, one per
// family, none of them a listener address.
func checkOtherAddresses(c *Config) error {
	var v4, v6 bool
	for i, a := range c.OtherAddresses {
		a = a.Unmap()
		c.OtherAddresses[i] = a
		if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() {
			return fmt.Errorf("other_addresses[%d]: %v is not a unicast address", i, a)
		}
		seen := &v6
		if a.Is4() {
			seen = &v4
		}
		if *seen {
			return fmt.Errorf("other_addresses[%d]: a second address of the family of %v", i, a)
		}
		*seen = true
		for _, l := range c.Listeners {
			if l.Addr.Addr().Unmap() == a {
				return fmt.Errorf("other_addresses[%d]: %v is a listener address; it must be another address of this host", i, a)
			}
		}
	}
	return nil
}

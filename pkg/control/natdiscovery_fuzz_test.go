package control

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
)

// FuzzNATBinding feeds arbitrary bytes as a request arriving on each
// member of an RFC 5780 set (mode picks the member). Nothing may panic,
// and whatever is answered is a well-formed STUN response no larger than
// the request plus the fixed attributes the server adds (RESPONSE-PORT and
// PADDING must never make the server an amplifier).
func FuzzNATBinding(f *testing.F) {
	fuzzSeeds(f)
	for _, set := range [][]stun.Setter{
		{changeRequest(true, true)},
		{changeRequest(false, true), attr{stun.AttrPadding, make([]byte, 64)}},
		{responsePortAttr(9)},
		{attr{stun.AttrPadding, make([]byte, 8)}, responsePortAttr(9)},
		{attr{stun.AttrChangeRequest, []byte{0, 0, 0}}},
	} {
		m := stun.MustBuild(append([]stun.Setter{stun.TransactionID, stun.BindingRequest}, append(set, stun.Fingerprint)...)...)
		f.Add(byte(0), m.Raw)
		f.Add(byte(3), m.Raw)
	}
	s, members := natServerTB(f)
	client, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { client.Close() })
	self := client.LocalAddr().(*net.UDPAddr).AddrPort()
	buf := make([]byte, 70000)
	f.Fuzz(func(t *testing.T, mode byte, b []byte) {
		member := members[mode>>1&1][mode&1]
		tuple := fiveTuple{proto: tUDP, client: self, server: member}
		sink := &collectSink{}
		s.handlePacket(nil, sink, tuple, b)
		if n := s.stats.panics.Load(); n != 0 {
			t.Fatalf("handler panicked (%d) on %x", n, b)
		}
		out := sink.take()
		// Responses sent from the set's sockets reach client directly.
		for {
			// Loopback delivers within the send call: a short wait is enough.
			_ = client.SetReadDeadline(time.Now().Add(200 * time.Microsecond))
			n, _, err := client.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			out = append(out, append([]byte(nil), buf[:n]...))
		}
		for _, r := range out {
			var m stun.Message
			if err := stun.Decode(r, &m); err != nil {
				t.Fatalf("response does not decode: %v (%x)", err, r)
			}
			if m.Type.Class != stun.ClassSuccessResponse && m.Type.Class != stun.ClassErrorResponse {
				t.Fatalf("sent a %v", m.Type)
			}
			// 20 header, XOR-MAPPED, MAPPED, RESPONSE-ORIGIN and
			// OTHER-ADDRESS (IPv4: 12 each), FINGERPRINT 8, and the
			// request's padding; an error response is smaller.
			if limit := len(b) + 4*12 + 8 + 8; len(r) > limit && len(r) > 120 {
				t.Fatalf("response of %d bytes to a request of %d", len(r), len(b))
			}
		}
	})
}

// natServerTB is natServer for a fuzz target.
func natServerTB(f *testing.F) (*Server, [2][2]netip.AddrPort) {
	f.Helper()
	port := freePortRange(f, 2)
	s := startServer(f, func(c *Config, _ *Options) {
		l := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
		c.Listeners = []ListenerSpec{{Network: "udp", Addr: l}}
		c.OtherAddresses = []netip.Addr{netip.MustParseAddr("127.0.0.2")}
	})
	da, ca := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	return s, [2][2]netip.AddrPort{
		{netip.AddrPortFrom(da, port), netip.AddrPortFrom(da, port+1)},
		{netip.AddrPortFrom(ca, port), netip.AddrPortFrom(ca, port+1)},
	}
}

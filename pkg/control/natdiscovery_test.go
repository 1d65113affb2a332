package control

import (
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/pkg/dataplane"

	"github.com/hybridrelay/hybridrelay/internal/testutil"
)

// natServer starts a server whose UDP and TCP listener is 127.0.0.1:P with
// other address 127.0.0.2 (loopback holds all of 127/8), so the set is
// 127.0.0.1:P, 127.0.0.1:P+1, 127.0.0.2:P, 127.0.0.2:P+1.
func natServer(t *testing.T) (*Server, [2][2]netip.AddrPort) {
	t.Helper()
	var lastErr error
	for range 5 {
		port := freePortRange(t, 2)
		cfg := testConfig()
		l := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
		cfg.Listeners = []ListenerSpec{{Network: "udp", Addr: l}, {Network: "tcp", Addr: l}}
		cfg.OtherAddresses = []netip.Addr{netip.MustParseAddr("127.0.0.2")}
		s, err := NewServer(cfg, Options{Datapath: dataplane.NewPlain(), Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Start(); err != nil {
			lastErr = err
			continue
		}
		t.Cleanup(func() { s.Close() })
		da, ca := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
		return s, [2][2]netip.AddrPort{
			{netip.AddrPortFrom(da, port), netip.AddrPortFrom(da, port+1)},
			{netip.AddrPortFrom(ca, port), netip.AddrPortFrom(ca, port+1)},
		}
	}
	t.Fatalf("start: %v", lastErr)
	return nil, [2][2]netip.AddrPort{}
}

func changeRequest(ip, port bool) stun.Setter {
	var f uint32
	if ip {
		f |= changeIPFlag
	}
	if port {
		f |= changePortFlag
	}
	v := make([]byte, 4)
	binary.BigEndian.PutUint32(v, f)
	return attr{stun.AttrChangeRequest, v}
}

func responsePortAttr(p uint16) stun.Setter {
	return attr{stun.AttrResponsePort, []byte{byte(p >> 8), byte(p), 0, 0}}
}

// natExchange sends a Binding request from c to dst and waits for the
// response on rx (c when nil); it returns the response and its source.
func natExchange(t *testing.T, c, rx *net.UDPConn, dst netip.AddrPort, setters ...stun.Setter) (*stun.Message, netip.AddrPort) {
	t.Helper()
	if rx == nil {
		rx = c
	}
	m := stun.MustBuild(append([]stun.Setter{stun.TransactionID, stun.BindingRequest}, append(setters, stun.Fingerprint)...)...)
	if _, err := c.WriteToUDPAddrPort(m.Raw, dst); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	deadline := time.Now().Add(2 * time.Second)
	for {
		_ = rx.SetReadDeadline(deadline)
		n, from, err := rx.ReadFromUDPAddrPort(buf)
		if err != nil {
			return nil, netip.AddrPort{}
		}
		resp := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
		if resp.Decode() == nil && resp.TransactionID == m.TransactionID {
			return resp, from
		}
	}
}

func plainAddr(t *testing.T, m *stun.Message, at stun.AttrType) netip.AddrPort {
	t.Helper()
	var ma stun.MappedAddress
	if err := ma.GetFromAs(m, at); err != nil {
		t.Fatalf("%v: %v", at, err)
	}
	a, _ := netip.AddrFromSlice(ma.IP)
	return netip.AddrPortFrom(a.Unmap(), uint16(ma.Port))
}

func udpClient(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestNATDiscoveryTable: every member of the set, every CHANGE-REQUEST
// combination (RFC 5780 section 6.1, Table 1): the response leaves from
// the member the flags name, says so in RESPONSE-ORIGIN, names the member
// differing in both address and port as OTHER-ADDRESS, and carries
// MAPPED-ADDRESS equal to XOR-MAPPED-ADDRESS.
func TestNATDiscoveryTable(t *testing.T) {
	s, set := natServer(t)
	c := udpClient(t)
	self := c.LocalAddr().(*net.UDPAddr).AddrPort()
	for ip := range 2 {
		for port := range 2 {
			for _, fl := range []struct{ ip, port bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
				dst := set[ip][port]
				resp, from := natExchange(t, c, nil, dst, changeRequest(fl.ip, fl.port))
				if resp == nil {
					t.Fatalf("to %s change ip %v port %v: no response", dst, fl.ip, fl.port)
				}
				wi, wp := ip, port
				if fl.ip {
					wi ^= 1
				}
				if fl.port {
					wp ^= 1
				}
				if want := set[wi][wp]; from != want {
					t.Errorf("to %s change ip %v port %v: from %s, want %s", dst, fl.ip, fl.port, from, want)
				}
				if got := plainAddr(t, resp, stun.AttrResponseOrigin); got != from {
					t.Errorf("to %s: RESPONSE-ORIGIN %s, sent from %s", dst, got, from)
				}
				if got, want := plainAddr(t, resp, stun.AttrOtherAddress), set[ip^1][port^1]; got != want {
					t.Errorf("to %s: OTHER-ADDRESS %s, want %s", dst, got, want)
				}
				var xma stun.XORMappedAddress
				if err := xma.GetFrom(resp); err != nil || xma.Port != int(self.Port()) {
					t.Errorf("to %s: XOR-MAPPED-ADDRESS %v (%v), want %s", dst, xma, err, self)
				}
				if got := plainAddr(t, resp, stun.AttrMappedAddress); got.Port() != self.Port() {
					t.Errorf("to %s: MAPPED-ADDRESS %s, want %s", dst, got, self)
				}
			}
		}
	}
	st := s.Stats().Protocol
	if st["rfc5780_responses"] != 16 || st["rfc5780_change_ip"] != 8 || st["rfc5780_change_port"] != 8 {
		t.Fatalf("counters %v", st)
	}
}

// TestNATDiscoveryAttributes: RESPONSE-PORT, PADDING and the error
// responses of RFC 5780 section 6.1.
func TestNATDiscoveryAttributes(t *testing.T) {
	s, set := natServer(t)
	c, other := udpClient(t), udpClient(t)
	otherPort := other.LocalAddr().(*net.UDPAddr).AddrPort().Port()

	// RESPONSE-PORT: the response goes to the request's IP, that port.
	resp, from := natExchange(t, c, other, set[0][0], responsePortAttr(otherPort), changeRequest(true, false))
	if resp == nil || from != set[1][0] {
		t.Fatalf("response-port: %v from %s, want a response on the other socket from %s", resp, from, set[1][0])
	}

	// PADDING: answered with PADDING as long as the request's.
	pad := make([]byte, 400)
	resp, _ = natExchange(t, c, nil, set[0][0], attr{stun.AttrPadding, pad})
	if resp == nil {
		t.Fatal("padding: no response")
	}
	if v, err := resp.Get(stun.AttrPadding); err != nil || len(v) != len(pad) {
		t.Fatalf("padding: response PADDING %d bytes (%v), want %d", len(v), err, len(pad))
	}

	for _, tc := range []struct {
		name    string
		setters []stun.Setter
		code    int
	}{
		{"padding with response-port", []stun.Setter{attr{stun.AttrPadding, pad[:8]}, responsePortAttr(otherPort)}, 400},
		{"short change-request", []stun.Setter{attr{stun.AttrChangeRequest, []byte{0, 0}}}, 400},
		{"response-port 0", []stun.Setter{responsePortAttr(0)}, 400},
		{"unknown comprehension-required", []stun.Setter{changeRequest(false, false), attr{0x7ABC, []byte{1, 2, 3, 4}}}, 420},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, from := natExchange(t, c, nil, set[0][0], tc.setters...)
			if resp == nil || code(resp) != tc.code || from != set[0][0] {
				t.Fatalf("response %v from %s, want %d from %s", resp, from, tc.code, set[0][0])
			}
		})
	}

	// An alternate socket is not a TURN listener: an Allocate there is
	// dropped, unanswered.
	al := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest), udpTransport(), stun.Fingerprint)
	before := s.Stats().Protocol["rfc5780_alt_dropped"]
	if _, err := c.WriteToUDPAddrPort(al.Raw, set[1][1]); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 2*time.Second, "allocate on an alternate socket dropped", func() bool {
		return s.Stats().Protocol["rfc5780_alt_dropped"] == before+1
	})

	// Over TCP, CHANGE-REQUEST is unknown (420): RFC 5780 discovery is
	// UDP only.
	tc := dialRaw(t, "tcp", set[0][0])
	m := tc.build(stun.MethodBinding, stun.ClassRequest, false, changeRequest(true, true))
	tc.write(m.Raw)
	if r := tc.readSTUN(m.TransactionID, 2*time.Second); r == nil || code(r) != 420 {
		t.Fatalf("tcp change-request: %v, want 420", r)
	}
}

// TestNATDiscoveryOff: without other-address (a host with one address),
// CHANGE-REQUEST gets 420 listing it (RFC 5780 section 6.1) and a plain
// Binding response has no OTHER-ADDRESS.
func TestNATDiscoveryOff(t *testing.T) {
	s := startServer(t)
	c := udpClient(t)
	resp, _ := natExchange(t, c, nil, s.addr("udp"), changeRequest(true, true))
	if resp == nil || code(resp) != 420 {
		t.Fatalf("change-request without other-address: %v, want 420", resp)
	}
	var unk stun.UnknownAttributes
	if err := unk.GetFrom(resp); err != nil || !slices.Contains(unk, stun.AttrChangeRequest) {
		t.Fatalf("UNKNOWN-ATTRIBUTES %v (%v), want CHANGE-REQUEST", unk, err)
	}
	if resp, _ := natExchange(t, c, nil, s.addr("udp"), responsePortAttr(9)); resp == nil || code(resp) != 420 {
		t.Fatalf("response-port without other-address: %v, want 420", resp)
	}
	// An empty CHANGE-REQUEST (no change asked) and PADDING are ignored.
	for _, set := range [][]stun.Setter{nil, {changeRequest(false, false)}, {attr{stun.AttrPadding, make([]byte, 16)}}} {
		resp, _ = natExchange(t, c, nil, s.addr("udp"), set...)
		if resp == nil || code(resp) != 0 || resp.Contains(stun.AttrOtherAddress) {
			t.Fatalf("binding with %v: %v", set, resp)
		}
	}
}

func TestOtherAddressValidation(t *testing.T) {
	for _, tc := range []struct {
		name   string
		others []string
		want   string
	}{
		{"listener address", []string{"127.0.0.1"}, "listener address"},
		{"two of a family", []string{"127.0.0.2", "127.0.0.3"}, "second address"},
		{"unspecified", []string{"0.0.0.0"}, "not a unicast"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			for _, o := range tc.others {
				cfg.OtherAddresses = append(cfg.OtherAddresses, netip.MustParseAddr(o))
			}
			_, err := NewServer(cfg, Options{Datapath: dataplane.NewPlain()})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewServer: %v, want %q", err, tc.want)
			}
		})
	}
}

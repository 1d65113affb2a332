package control

import (
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

const (
	testUser  = "alice"
	testPass  = "wonderland"
	testRealm = "test.realm"
)

var loopbackAllow = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("HYBRIDRELAY_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// testConfig is a loopback configuration: UDP and TCP on 127.0.0.1 with
// ephemeral ports, relay on 127.0.0.1, loopback peers allowed.
func testConfig() Config {
	cfg := DefaultConfig()
	cfg.Listeners = []ListenerSpec{
		{Network: "udp", Addr: netip.MustParseAddrPort("127.0.0.1:0")},
		{Network: "tcp", Addr: netip.MustParseAddrPort("127.0.0.1:0")},
	}
	cfg.RelayIPs = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	cfg.MinPort, cfg.MaxPort = 40000, 44999
	cfg.Realm = testRealm
	cfg.Users = map[string]string{testUser: testPass, "bob": "builder"}
	cfg.AllowPeers = loopbackAllow
	cfg.UnauthRate = 0 // tests send many challenges from one IP
	return cfg
}

type serverOpt func(*Config, *Options)

func startServer(t testing.TB, mods ...serverOpt) *Server {
	t.Helper()
	cfg := testConfig()
	opts := Options{Datapath: dataplane.NewPlain(), Logger: testLogger(t)}
	for _, m := range mods {
		m(&cfg, &opts)
	}
	s, err := NewServer(cfg, opts)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	dp := opts.Datapath
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		dp.Close()
	})
	return s
}

func (s *Server) addr(network string) netip.AddrPort {
	for _, l := range s.Addrs() {
		if l.Network == network {
			return l.Addr
		}
	}
	return netip.AddrPort{}
}

// rawClient speaks STUN to the server over UDP (or a TCP stream) with
// hand-built messages, so every error path can be provoked.
type rawClient struct {
	t      testing.TB
	conn   net.Conn
	stream bool
	user   string
	pass   string
	realm  string
	nonce  string
	sha256 bool // use MESSAGE-INTEGRITY-SHA256 instead of MESSAGE-INTEGRITY
}

func dialRaw(t testing.TB, network string, server netip.AddrPort) *rawClient {
	t.Helper()
	c, err := net.Dial(network, server.String())
	if err != nil {
		t.Fatalf("dial %s %s: %v", network, server, err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, conn: c, stream: network != "udp", user: testUser, pass: testPass, realm: testRealm}
}

// dialRawFrom is dialRaw from a given local address (another loopback IP
// is another source for the per-IP limits).
func dialRawFrom(t testing.TB, network, local string, server netip.AddrPort) *rawClient {
	t.Helper()
	d := net.Dialer{}
	switch network {
	case "udp":
		d.LocalAddr = net.UDPAddrFromAddrPort(netip.MustParseAddrPort(local))
	default:
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.MustParseAddrPort(local))
	}
	c, err := d.Dial(network, server.String())
	if err != nil {
		t.Fatalf("dial %s %s from %s: %v", network, server, local, err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, conn: c, stream: network != "udp", user: testUser, pass: testPass, realm: testRealm}
}

func (c *rawClient) localAddr() netip.AddrPort {
	switch a := c.conn.LocalAddr().(type) {
	case *net.UDPAddr:
		return a.AddrPort()
	case *net.TCPAddr:
		return a.AddrPort()
	}
	return netip.AddrPort{}
}

func (c *rawClient) write(b []byte) {
	c.t.Helper()
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// read returns the next datagram / frame, or nil after timeout.
func (c *rawClient) read(timeout time.Duration) []byte {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(timeout))
	if !c.stream {
		buf := make([]byte, 70000)
		n, err := c.conn.Read(buf)
		if err != nil {
			return nil
		}
		return buf[:n]
	}
	hdr := make([]byte, 4)
	if _, err := io.ReadFull(c.conn, hdr); err != nil {
		return nil
	}
	var n int
	if hdr[0]>>6 == 0 {
		n = 16 + (int(hdr[2])<<8 | int(hdr[3]))
	} else {
		n = ((int(hdr[2])<<8 | int(hdr[3])) + 3) &^ 3
	}
	rest := make([]byte, n)
	if _, err := io.ReadFull(c.conn, rest); err != nil {
		return nil
	}
	return append(hdr, rest...)
}

// readSTUN reads until a STUN message with transaction id tid arrives.
func (c *rawClient) readSTUN(tid [12]byte, timeout time.Duration) *stun.Message {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		b := c.read(time.Until(deadline))
		if b == nil {
			return nil
		}
		if !stun.IsMessage(b) {
			continue
		}
		m := &stun.Message{Raw: append([]byte(nil), b...)}
		if err := m.Decode(); err != nil {
			c.t.Fatalf("decode response: %v", err)
		}
		if m.TransactionID == tid {
			return m
		}
	}
	return nil
}

func (c *rawClient) key() []byte { return longTermKey(c.user, c.realm, c.pass, pwAlgMD5) }

// build makes a request with the given attributes; signed adds USERNAME,
// REALM, NONCE and integrity.
func (c *rawClient) build(method stun.Method, class stun.MessageClass, signed bool, setters ...stun.Setter) *stun.Message {
	c.t.Helper()
	m := stun.New()
	m.Type = stun.NewType(method, class)
	m.TransactionID = stun.NewTransactionID()
	m.WriteHeader()
	for _, s := range setters {
		if err := s.AddTo(m); err != nil {
			c.t.Fatalf("build: %v", err)
		}
	}
	if signed {
		stun.NewUsername(c.user).AddTo(m)
		stun.NewRealm(c.realm).AddTo(m)
		stun.NewNonce(c.nonce).AddTo(m)
		if c.sha256 {
			addIntegritySHA256(m, c.key())
		} else {
			stun.MessageIntegrity(c.key()).AddTo(m)
		}
	}
	stun.Fingerprint.AddTo(m)
	return m
}

// do sends an authenticated request, learning the nonce from a 401/438
// first when needed, and returns the response.
func (c *rawClient) do(method stun.Method, setters ...stun.Setter) *stun.Message {
	c.t.Helper()
	for i := 0; i < 3; i++ {
		if c.nonce == "" {
			m := c.build(method, stun.ClassRequest, false, setters...)
			c.write(m.Raw)
			resp := c.readSTUN(m.TransactionID, 2*time.Second)
			if resp == nil {
				c.t.Fatalf("%s: no response to unauthenticated request", method)
			}
			var n stun.Nonce
			if err := n.GetFrom(resp); err != nil {
				return resp // not a challenge
			}
			c.nonce = string(n)
		}
		m := c.build(method, stun.ClassRequest, true, setters...)
		c.write(m.Raw)
		resp := c.readSTUN(m.TransactionID, 2*time.Second)
		if resp == nil {
			c.t.Fatalf("%s: no response", method)
		}
		if code(resp) == 438 {
			c.nonce = ""
			continue
		}
		return resp
	}
	c.t.Fatalf("%s: nonce loop", method)
	return nil
}

// code returns the ERROR-CODE of m, 0 for a success response.
func code(m *stun.Message) int {
	if m == nil {
		return -1
	}
	if m.Type.Class == stun.ClassSuccessResponse {
		return 0
	}
	var ec stun.ErrorCodeAttribute
	if err := ec.GetFrom(m); err != nil {
		return -2
	}
	return int(ec.Code)
}

// attr is a raw attribute setter.
type attr struct {
	t stun.AttrType
	v []byte
}

func (a attr) AddTo(m *stun.Message) error { m.Add(a.t, a.v); return nil }

func udpTransport() stun.Setter { return attr{stun.AttrRequestedTransport, []byte{17, 0, 0, 0}} }

func lifetimeAttr(sec uint32) stun.Setter {
	return attr{stun.AttrLifetime, []byte{byte(sec >> 24), byte(sec >> 16), byte(sec >> 8), byte(sec)}}
}

func channelAttr(n uint16) stun.Setter {
	return attr{stun.AttrChannelNumber, []byte{byte(n >> 8), byte(n), 0, 0}}
}

func peerAttr(ap netip.AddrPort) stun.Setter {
	return setterFunc(func(m *stun.Message) error { return addXORAddr(m, stun.AttrXORPeerAddress, ap) })
}

func familyAttr(t stun.AttrType, fam byte) stun.Setter { return attr{t, []byte{fam, 0, 0, 0}} }

// relayedAddrs returns the XOR-RELAYED-ADDRESS values of a response.
func relayedAddrs(t testing.TB, m *stun.Message) []netip.AddrPort {
	t.Helper()
	out, err := getXORAddrs(m, stun.AttrXORRelayedAddress)
	if err != nil {
		t.Fatalf("relayed addresses: %v", err)
	}
	return out
}

// allocate performs a successful Allocate and returns the relayed address.
func (c *rawClient) allocate(setters ...stun.Setter) netip.AddrPort {
	c.t.Helper()
	resp := c.do(methodAllocate, append([]stun.Setter{udpTransport()}, setters...)...)
	if code(resp) != 0 {
		c.t.Fatalf("allocate: code %d", code(resp))
	}
	r := relayedAddrs(c.t, resp)
	if len(r) == 0 {
		c.t.Fatal("allocate: no relayed address")
	}
	return r[0]
}

// udpPeer is a plain UDP socket acting as a peer.
type udpPeer struct {
	t    testing.TB
	conn *net.UDPConn
}

func newPeer(t testing.TB, addr string) *udpPeer {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatalf("peer listen: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return &udpPeer{t: t, conn: c}
}

func (p *udpPeer) addr() netip.AddrPort { return p.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (p *udpPeer) recv(timeout time.Duration) ([]byte, netip.AddrPort, error) {
	p.conn.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 70000)
	n, from, err := p.conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	return buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), nil
}

func (p *udpPeer) send(b []byte, to netip.AddrPort) {
	p.t.Helper()
	if _, err := p.conn.WriteToUDPAddrPort(b, to); err != nil {
		p.t.Fatalf("peer send: %v", err)
	}
}

// freePortRange finds n consecutive UDP ports free on 127.0.0.1 in
// 45000-47999 (outside testConfig's relay range), so tests that need an
// exact small range do not collide with other tests running at the same
// time.
func freePortRange(t testing.TB, n int) uint16 {
	t.Helper()
	for try := 0; try < 50; try++ {
		base := 45000 + mrand.IntN(3000-n)
		var held []*net.UDPConn
		ok := true
		for p := base; p < base+n; p++ {
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: p})
			if err != nil {
				ok = false
				break
			}
			held = append(held, c)
		}
		for _, c := range held {
			c.Close()
		}
		if ok {
			return uint16(base)
		}
	}
	t.Fatal("no free port range")
	return 0
}

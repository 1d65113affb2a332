package control

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/internal/testutil"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

func dualStack(c *Config, _ *Options) {
	c.Listeners = []ListenerSpec{
		{Network: "udp", Addr: netip.MustParseAddrPort("127.0.0.1:0")},
		{Network: "udp", Addr: netip.MustParseAddrPort("[::1]:0")},
	}
	c.RelayIPs = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")}
}

func TestIPv6AndDualAllocation(t *testing.T) {
	s := startServer(t, dualStack)
	peer6 := newPeer(t, "[::1]:0")
	peer4 := newPeer(t, "127.0.0.1:0")

	t.Run("requested IPv6", func(t *testing.T) {
		c := dialRaw(t, "udp", s.addr("udp"))
		relay := c.allocate(familyAttr(stun.AttrRequestedAddressFamily, familyIPv6))
		if !relay.Addr().Is6() {
			t.Fatalf("relay %v is not IPv6", relay)
		}
		// An IPv4 peer on an IPv6 allocation: 443.
		if r := c.do(methodCreatePermission, peerAttr(peer4.addr())); code(r) != 443 {
			t.Fatalf("IPv4 peer: code %d", code(r))
		}
		if r := c.do(methodChannelBind, channelAttr(0x4100), peerAttr(peer6.addr())); code(r) != 0 {
			t.Fatalf("bind: %d", code(r))
		}
		c.write(appendChannelData(nil, 0x4100, []byte("over v6"), false))
		got, from, err := peer6.recv(2 * time.Second)
		if err != nil || string(got) != "over v6" || from != relay {
			t.Fatalf("v6 peer got %q from %v (%v)", got, from, err)
		}
		peer6.send([]byte("v6 back"), relay)
		if b := c.read(2 * time.Second); !bytes.Equal(b, appendChannelData(nil, 0x4100, []byte("v6 back"), false)) {
			t.Fatalf("client got %x", b)
		}
	})
	t.Run("dual", func(t *testing.T) {
		c := dialRaw(t, "udp", s.addr("udp"))
		resp := c.do(methodAllocate, udpTransport(), familyAttr(attrAdditionalAddressFamily, familyIPv6))
		relays := relayedAddrs(t, resp)
		if code(resp) != 0 || len(relays) != 2 || !relays[0].Addr().Is4() || !relays[1].Addr().Is6() {
			t.Fatalf("dual allocate: code %d relays %v", code(resp), relays)
		}
		if r := c.do(methodCreatePermission, peerAttr(peer4.addr()), peerAttr(peer6.addr())); code(r) != 0 {
			t.Fatalf("permissions: %d", code(r))
		}
		for _, p := range []*udpPeer{peer4, peer6} {
			send := c.build(methodSend, stun.ClassIndication, false, peerAttr(p.addr()), attr{stun.AttrData, []byte("dual")})
			c.write(send.Raw)
			got, from, err := p.recv(2 * time.Second)
			want := relays[0]
			if p == peer6 {
				want = relays[1]
			}
			if err != nil || string(got) != "dual" || from != want {
				t.Fatalf("peer %v got %q from %v (%v)", p.addr(), got, from, err)
			}
		}
		// Refresh(0) for IPv6 only releases that relayed address.
		if r := c.do(methodRefresh, lifetimeAttr(0), familyAttr(stun.AttrRequestedAddressFamily, familyIPv6)); code(r) != 0 {
			t.Fatalf("refresh v6 0: %d", code(r))
		}
		for _, a := range s.Allocations() {
			if a.Client == c.localAddr() && (len(a.Relays) != 1 || a.Relays[0] != relays[0]) {
				t.Fatalf("relays after dropping v6: %v", a.Relays)
			}
		}
	})
	t.Run("dual on an IPv6-only server 440", func(t *testing.T) {
		s6 := startServer(t, func(c *Config, _ *Options) { c.RelayIPs = []netip.Addr{netip.MustParseAddr("::1")} })
		c := dialRaw(t, "udp", s6.addr("udp"))
		if r := c.do(methodAllocate, udpTransport(), familyAttr(attrAdditionalAddressFamily, familyIPv6)); code(r) != 440 {
			t.Fatalf("code %d", code(r))
		}
		if r := c.do(methodAllocate, udpTransport()); code(r) != 0 || !relayedAddrs(t, r)[0].Addr().Is6() {
			t.Fatalf("plain allocate on IPv6-only server: code %d", code(r))
		}
	})
	t.Run("dual without IPv6 relay reports ADDRESS-ERROR-CODE", func(t *testing.T) {
		s4 := startServer(t)
		c := dialRaw(t, "udp", s4.addr("udp"))
		resp := c.do(methodAllocate, udpTransport(), familyAttr(attrAdditionalAddressFamily, familyIPv6))
		v, err := resp.Get(attrAddressErrorCode)
		if code(resp) != 0 || len(relayedAddrs(t, resp)) != 1 || err != nil || v[0] != familyIPv6 || int(v[2])*100+int(v[3]) != 440 {
			t.Fatalf("code %d, ADDRESS-ERROR-CODE %x (%v)", code(resp), v, err)
		}
	})
	// The pion/turn v4 client resolves the server as udp4 and never sends
	// REQUESTED-ADDRESS-FAMILY: it gets an IPv6 relay from a server whose
	// only relay address is IPv6.
	t.Run("pion client gets an IPv6 relay", func(t *testing.T) {
		s6 := startServer(t, func(c *Config, _ *Options) {
			c.RelayIPs = []netip.Addr{netip.MustParseAddr("::1")}
		})
		pc := newPionClient(t, "udp", s6.addr("udp"), testUser, testPass)
		if !pc.relayAddr().Addr().Is6() {
			t.Fatalf("relay %v", pc.relayAddr())
		}
		exchange(t, pc, peer6, 3, "v6")
	})
}

func TestRateLimitUnauthenticated(t *testing.T) {
	s := startServer(t, func(c *Config, _ *Options) { c.UnauthRate, c.UnauthBurst = 0.5, 3 })
	c := dialRaw(t, "udp", s.addr("udp"))
	var ids [][12]byte
	start := time.Now()
	for i := 0; i < 12; i++ {
		m := c.build(methodAllocate, stun.ClassRequest, false, udpTransport())
		ids = append(ids, m.TransactionID)
		c.write(m.Raw)
	}
	answered := 0
	for {
		b := c.read(300 * time.Millisecond)
		if b == nil {
			break
		}
		answered++
	}
	// Token bucket: the burst, plus what refilled while the requests were
	// handled (bounded by the time until the last read), plus rounding.
	limit := 3 + int(0.5*time.Since(start).Seconds()) + 1
	if answered < 3 || answered > limit {
		t.Errorf("%d of 12 unauthenticated requests answered, want 3..%d", answered, limit)
	}
	if st := s.Stats(); st.AuthFailures["rate_limited"] < 8 {
		t.Errorf("rate_limited = %d", st.AuthFailures["rate_limited"])
	}
	// Over TCP the bucket is per connection: fresh connections from the
	// IP whose UDP bucket is empty are answered, a flooding connection is
	// cut off at its burst.
	for conn := 0; conn < 5; conn++ {
		tc := dialRaw(t, "tcp", s.addr("tcp"))
		m := tc.build(methodAllocate, stun.ClassRequest, false, udpTransport())
		tc.write(m.Raw)
		if r := tc.readSTUN(m.TransactionID, time.Second); code(r) != 401 {
			t.Fatalf("tcp connection %d: code %d", conn, code(r))
		}
	}
	tc := dialRaw(t, "tcp", s.addr("tcp"))
	n := 0
	start = time.Now()
	for i := 0; i < 12; i++ {
		m := tc.build(methodAllocate, stun.ClassRequest, false, udpTransport())
		tc.write(m.Raw)
		if r := tc.readSTUN(m.TransactionID, 200*time.Millisecond); code(r) == 401 {
			n++
		}
	}
	if limit := 3 + int(0.5*time.Since(start).Seconds()) + 1; n < 3 || n > limit {
		t.Errorf("tcp connection: %d of 12 answered, want 3..%d", n, limit)
	}
	// A client with valid credentials is charged for its first 401 only:
	// ten authenticated requests from a fresh source pass a burst of 3.
	c2 := dialRawFrom(t, "udp", "127.0.0.5:0", s.addr("udp"))
	c2.allocate()
	for i := 0; i < 10; i++ {
		if r := c2.do(methodRefresh); code(r) != 0 {
			t.Fatalf("authenticated refresh %d: %d", i, code(r))
		}
	}
}

func TestIPLimiterBounded(t *testing.T) {
	l := newIPLimiter(1, 1, 32)
	now := time.Now()
	admitted := 0
	for i := 0; i < 1000; i++ {
		ip := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		if l.allow(ip, now) {
			admitted++
		}
	}
	if l.size() > 32 || admitted > 32 || admitted < 16 {
		t.Fatalf("size %d admitted %d, want at most 32", l.size(), admitted)
	}
	l.prune(now.Add(2 * time.Second))
	if l.size() != 0 {
		t.Fatalf("prune left %d", l.size())
	}
}

func TestBandwidthLimit(t *testing.T) {
	s := startServer(t, func(c *Config, _ *Options) { c.BandwidthLimit = 2000 })
	peer := newPeer(t, "127.0.0.1:0")
	c := dialRaw(t, "udp", s.addr("udp"))
	c.allocate()
	if r := c.do(methodChannelBind, channelAttr(0x4000), peerAttr(peer.addr())); code(r) != 0 {
		t.Fatal(code(r))
	}
	payload := bytes.Repeat([]byte{7}, 500)
	start := time.Now()
	for i := 0; i < 20; i++ {
		c.write(appendChannelData(nil, 0x4000, payload, false))
	}
	got := 0
	for {
		if _, _, err := peer.recv(300 * time.Millisecond); err != nil {
			break
		}
		got++
	}
	// Burst of 2000 bytes = 4 datagrams, plus what refilled until the
	// last datagram was handled (bounded by the time until the last read).
	limit := 4 + int(2000*time.Since(start).Seconds()/500) + 1
	if got < 4 || got > limit {
		t.Errorf("%d of 20 datagrams of 500 bytes passed a 2000 B/s limit, want 4..%d", got, limit)
	}
	if d := s.Stats().Drops["bandwidth"]; d != uint64(20-got) {
		t.Errorf("bandwidth drops %d, want %d", d, 20-got)
	}
}

// writeSelfSigned writes a self-signed certificate for 127.0.0.1 with a
// random serial into dir (cert.pem, key.pem).
func writeSelfSigned(t *testing.T, dir, cn string) (certFile, keyFile string, serial *big.Int) {
	t.Helper()
	serial = big.NewInt(mrand.Int64())
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	testutil.WriteSelfSignedCert(t, certFile, keyFile, cn, serial)
	return certFile, keyFile, serial
}

func TestTLSListenerAndReload(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, serial1 := writeSelfSigned(t, dir, "one")
	s := startServer(t, func(c *Config, _ *Options) {
		c.Listeners = []ListenerSpec{{Network: "tls", Addr: netip.MustParseAddrPort("127.0.0.1:0")}}
		c.TLSCertFile, c.TLSKeyFile = certFile, keyFile
	})
	dialTLS := func() (*rawClient, *big.Int) {
		conn, err := tls.Dial("tcp", s.addr("tls").String(), &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // test certificate
		if err != nil {
			t.Fatalf("tls dial: %v", err)
		}
		t.Cleanup(func() { conn.Close() })
		return &rawClient{t: t, conn: conn, stream: true, user: testUser, pass: testPass, realm: testRealm},
			conn.ConnectionState().PeerCertificates[0].SerialNumber
	}
	c, got := dialTLS()
	if got.Cmp(serial1) != 0 {
		t.Fatalf("serial %v, want %v", got, serial1)
	}
	peer := newPeer(t, "127.0.0.1:0")
	relay := c.allocate()
	if r := c.do(methodChannelBind, channelAttr(0x4000), peerAttr(peer.addr())); code(r) != 0 {
		t.Fatal(code(r))
	}
	c.write(appendChannelData(nil, 0x4000, []byte("tls data!"), true))
	if b, from, err := peer.recv(2 * time.Second); err != nil || string(b) != "tls data!" || from != relay {
		t.Fatalf("peer got %q from %v (%v)", b, from, err)
	}
	if ai := s.Allocations(); len(ai) != 1 || ai[0].Transport != "tls" {
		t.Fatalf("allocations %+v", ai)
	}

	// Reload: a new certificate is served to new connections.
	_, _, serial2 := writeSelfSigned(t, dir, "two")
	if err := s.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	if _, got := dialTLS(); got.Cmp(serial2) != 0 {
		t.Fatalf("after reload: serial %v, want %v", got, serial2)
	}
	// A broken file keeps the current certificate.
	os.WriteFile(keyFile, []byte("garbage"), 0o600)
	if err := s.ReloadTLS(); err == nil || !strings.Contains(err.Error(), "tls_key_file") {
		t.Fatalf("reload of a broken key: %v", err)
	}
	if _, got := dialTLS(); got.Cmp(serial2) != 0 {
		t.Fatalf("after failed reload: serial %v, want %v", got, serial2)
	}
}

func TestNewServerValidation(t *testing.T) {
	dp := dataplane.NewPlain()
	defer dp.Close()
	for _, tt := range []struct {
		name  string
		mod   func(*Config)
		opts  Options
		field string
	}{
		{"no datapath", func(*Config) {}, Options{}, "Datapath"},
		{"no listeners", func(c *Config) { c.Listeners = nil }, Options{Datapath: dp}, "listeners"},
		{"bad network", func(c *Config) { c.Listeners[0].Network = "sctp" }, Options{Datapath: dp}, "listeners[0].network"},
		{"port range", func(c *Config) { c.MinPort, c.MaxPort = 5000, 4000 }, Options{Datapath: dp}, "min_port"},
		{"tls without cert", func(c *Config) { c.Listeners[0].Network = "tls" }, Options{Datapath: dp}, "tls_cert_file"},
		{"wildcard without relay ip", func(c *Config) {
			c.RelayIPs = nil
			c.Listeners = []ListenerSpec{{Network: "udp", Addr: netip.MustParseAddrPort("0.0.0.0:0")}}
		}, Options{Datapath: dp}, "relay_ips"},
		{"multicast relay ip", func(c *Config) { c.RelayIPs = []netip.Addr{netip.MustParseAddr("239.1.1.1")} }, Options{Datapath: dp}, "relay_ips[0]"},
		{"negative lifetime", func(c *Config) { c.ChannelLifetime = -1 }, Options{Datapath: dp}, "channel_lifetime"},
		{"tiny message size", func(c *Config) { c.MaxMessageSize = 100 }, Options{Datapath: dp}, "max_message_size"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			tt.mod(&cfg)
			_, err := NewServer(cfg, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("error %v does not name %s", err, tt.field)
			}
		})
	}
	// Start names the address it could not bind.
	busy, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cfg := testConfig()
	cfg.Listeners = []ListenerSpec{{Network: "udp", Addr: busy.LocalAddr().(*net.UDPAddr).AddrPort()}}
	s, err := NewServer(cfg, Options{Datapath: dp, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err == nil || !strings.Contains(err.Error(), busy.LocalAddr().String()) {
		t.Fatalf("start error %v does not name the address", err)
	}
}

func TestStatsAndAllocationsJSON(t *testing.T) {
	s := startServer(t)
	c := dialRaw(t, "udp", s.addr("udp"))
	c.allocate()
	if r := c.do(methodChannelBind, channelAttr(0x4000), peerAttr(netip.MustParseAddrPort("127.0.0.1:9"))); code(r) != 0 {
		t.Fatal(code(r))
	}
	b, err := json.Marshal(s.Stats())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{`"allocations":1`, `"channels":1`, `"auth_failures"`, `"missing_credentials":1`, `"channel_bind":{"ok":1}`} {
		if !bytes.Contains(b, []byte(k)) {
			t.Errorf("stats JSON lacks %s: %s", k, b)
		}
	}
	b, err = json.Marshal(s.Allocations())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{`"username":"alice"`, `"number":16384`, `"offloaded":false`, `"peer":"127.0.0.1:9"`} {
		if !bytes.Contains(b, []byte(k)) {
			t.Errorf("allocations JSON lacks %s: %s", k, b)
		}
	}
}

// TestMalformedFloodKeepsServing sends a few thousand malformed datagrams
// (random bytes, truncated STUN, bogus lengths, wrong MESSAGE-INTEGRITY,
// bogus ChannelData) and checks an existing allocation still relays, that
// nothing panicked and that no goroutine was left behind.
func TestMalformedFloodKeepsServing(t *testing.T) {
	s := startServer(t)
	peer := newPeer(t, "127.0.0.1:0")
	c := dialRaw(t, "udp", s.addr("udp"))
	relay := c.allocate()
	if r := c.do(methodChannelBind, channelAttr(0x4000), peerAttr(peer.addr())); code(r) != 0 {
		t.Fatal(code(r))
	}
	base := runtime.NumGoroutine()
	attacker := dialRaw(t, "udp", s.addr("udp"))
	good := attacker.build(methodAllocate, stun.ClassRequest, false, udpTransport()).Raw
	attacker.nonce = s.nonces.issue(attacker.localAddr().Addr(), time.Now())
	attacker.pass = "wrong"
	badMI := attacker.build(methodAllocate, stun.ClassRequest, true, udpTransport()).Raw
	rng := mrand.New(mrand.NewPCG(1, 2))
	for i := 0; i < 3000; i++ {
		var b []byte
		switch i % 6 {
		case 0:
			b = make([]byte, rng.IntN(1400))
			for j := range b {
				b[j] = byte(rng.Uint32())
			}
		case 1:
			b = good[:rng.IntN(len(good))]
		case 2:
			b = append([]byte(nil), good...)
			b[2], b[3] = byte(rng.Uint32()), byte(rng.Uint32())
		case 3:
			b = badMI
		case 4:
			b = []byte{0x40, 0x00, 0xff, 0xf0, 1, 2}
		case 5:
			b = append([]byte(nil), good...)
			b[20+rng.IntN(len(b)-20)] ^= 0xff
		}
		attacker.write(b)
	}
	time.Sleep(200 * time.Millisecond)
	c.write(appendChannelData(nil, 0x4000, []byte("still here"), false))
	for {
		b, from, err := peer.recv(2 * time.Second)
		if err != nil {
			t.Fatalf("existing allocation stopped relaying: %v", err)
		}
		if string(b) == "still here" && from == relay {
			break
		}
	}
	st := s.Stats()
	if st.Drops["panics"] != 0 || st.Allocations != 1 {
		t.Fatalf("after flood: %+v", st)
	}
	if n := runtime.NumGoroutine(); n > base+2 {
		t.Errorf("goroutines %d -> %d", base, n)
	}
}

// TestNoLeakAfterClose: every goroutine the server started (stream
// connections, relay sockets, janitor) is gone after Close.
func TestNoLeakAfterClose(t *testing.T) {
	base := runtime.NumGoroutine()
	dp := dataplane.NewPlain()
	s, err := NewServer(testConfig(), Options{Datapath: dp, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	var conns []*rawClient
	for i := 0; i < 10; i++ {
		network := []string{"udp", "tcp"}[i%2]
		c := dialRaw(t, network, s.addr(network))
		c.allocate(attr{stun.AttrEvenPort, []byte{0x80}})
		c.do(methodChannelBind, channelAttr(0x4000), peerAttr(netip.MustParseAddrPort("127.0.0.1:9")))
		conns = append(conns, c)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	dp.Close()
	for _, c := range conns {
		c.conn.Close()
	}
	testutil.WaitFor(t, 3*time.Second, "goroutines to exit", func() bool { return runtime.NumGoroutine() <= base })
}

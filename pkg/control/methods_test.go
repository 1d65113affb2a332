package control

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/internal/testutil"
)

func TestBinding(t *testing.T) {
	s := startServer(t)
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			c := dialRaw(t, network, s.addr(network))
			m := c.build(methodBinding, stun.ClassRequest, false)
			c.write(m.Raw)
			resp := c.readSTUN(m.TransactionID, 2*time.Second)
			if code(resp) != 0 {
				t.Fatalf("binding: code %d", code(resp))
			}
			var xa stun.XORMappedAddress
			if err := xa.GetFrom(resp); err != nil {
				t.Fatalf("XOR-MAPPED-ADDRESS: %v", err)
			}
			if got := netip.AddrPortFrom(netip.MustParseAddr(xa.IP.String()), uint16(xa.Port)); got != c.localAddr() {
				t.Errorf("mapped %v, want %v", got, c.localAddr())
			}
			if err := stun.Fingerprint.Check(resp); err != nil {
				t.Errorf("fingerprint: %v", err)
			}
			// Unknown comprehension-required attribute: 420 listing it.
			m = c.build(methodBinding, stun.ClassRequest, false, attr{0x0777, []byte{1, 2, 3, 4}})
			c.write(m.Raw)
			resp = c.readSTUN(m.TransactionID, 2*time.Second)
			var ua stun.UnknownAttributes
			if code(resp) != 420 || ua.GetFrom(resp) != nil || len(ua) != 1 || ua[0] != 0x0777 {
				t.Errorf("unknown attribute: code %d attrs %v", code(resp), ua)
			}
		})
	}
}

// TestAllocateErrors covers RFC 8656 section 7.2 and the long-term
// credential checks of RFC 8489 section 9.2.4, one row per error path.
func TestAllocateErrors(t *testing.T) {
	type tc struct {
		name  string
		mod   serverOpt
		setup func(t *testing.T, s *Server, c *rawClient)
		// send sends the request under test and returns its response.
		send func(t *testing.T, s *Server, c *rawClient) *stun.Message
		want int
	}
	unsigned := func(setters ...stun.Setter) func(*testing.T, *Server, *rawClient) *stun.Message {
		return func(t *testing.T, _ *Server, c *rawClient) *stun.Message {
			m := c.build(methodAllocate, stun.ClassRequest, false, setters...)
			c.write(m.Raw)
			return c.readSTUN(m.TransactionID, 2*time.Second)
		}
	}
	signed := func(setters ...stun.Setter) func(*testing.T, *Server, *rawClient) *stun.Message {
		return func(t *testing.T, _ *Server, c *rawClient) *stun.Message {
			return c.do(methodAllocate, setters...)
		}
	}
	withNonce := func(t *testing.T, s *Server, c *rawClient) {
		c.nonce = s.nonces.issue(c.localAddr().Addr(), time.Now())
	}
	sendSigned := func(setters ...stun.Setter) func(*testing.T, *Server, *rawClient) *stun.Message {
		return func(t *testing.T, _ *Server, c *rawClient) *stun.Message {
			m := c.build(methodAllocate, stun.ClassRequest, true, setters...)
			c.write(m.Raw)
			return c.readSTUN(m.TransactionID, 2*time.Second)
		}
	}
	cases := []tc{
		{name: "no credentials 401", send: unsigned(udpTransport()), want: 401},
		{name: "integrity without nonce 400", send: func(t *testing.T, _ *Server, c *rawClient) *stun.Message {
			m := c.build(methodAllocate, stun.ClassRequest, false, udpTransport(),
				stun.NewUsername(testUser), stun.NewRealm(testRealm), stun.MessageIntegrity(c.key()))
			c.write(m.Raw)
			return c.readSTUN(m.TransactionID, 2*time.Second)
		}, want: 400},
		{name: "wrong password 401", setup: func(t *testing.T, s *Server, c *rawClient) { withNonce(t, s, c); c.pass = "nope" },
			send: sendSigned(udpTransport()), want: 401},
		{name: "unknown user 401", setup: func(t *testing.T, s *Server, c *rawClient) { withNonce(t, s, c); c.user = "mallory" },
			send: sendSigned(udpTransport()), want: 401},
		{name: "wrong realm 401", setup: func(t *testing.T, s *Server, c *rawClient) { withNonce(t, s, c); c.realm = "other" },
			send: sendSigned(udpTransport()), want: 401},
		{name: "stale nonce 438", setup: func(t *testing.T, s *Server, c *rawClient) {
			c.nonce = s.nonces.issue(c.localAddr().Addr(), time.Now().Add(-time.Hour))
		}, send: sendSigned(udpTransport()), want: 438},
		{name: "forged nonce 438", setup: func(t *testing.T, s *Server, c *rawClient) {
			c.nonce = "00000000000000000000000000000000deadbeef"
		}, send: sendSigned(udpTransport()), want: 438},
		{name: "nonce of another client 438", setup: func(t *testing.T, s *Server, c *rawClient) {
			c.nonce = s.nonces.issue(netip.MustParseAddr("192.0.2.1"), time.Now())
		}, send: sendSigned(udpTransport()), want: 438},
		{name: "missing REQUESTED-TRANSPORT 400", send: signed(), want: 400},
		{name: "malformed REQUESTED-TRANSPORT 400", send: signed(attr{stun.AttrRequestedTransport, []byte{17, 0}}), want: 400},
		// RFC 6062 section 5.1: a TCP allocation needs a TCP or TLS
		// control connection (this client is on UDP).
		{name: "TCP transport over UDP 400", send: signed(attr{stun.AttrRequestedTransport, []byte{6, 0, 0, 0}}), want: 400},
		{name: "SCTP transport 442", send: signed(attr{stun.AttrRequestedTransport, []byte{132, 0, 0, 0}}), want: 442},
		{name: "unknown comprehension-required 420", send: signed(udpTransport(), attr{0x0777, []byte{0}}), want: 420},
		{name: "bad REQUESTED-ADDRESS-FAMILY 440", send: signed(udpTransport(), familyAttr(stun.AttrRequestedAddressFamily, 3)), want: 440},
		{name: "IPv6 without IPv6 relay 440", send: signed(udpTransport(), familyAttr(stun.AttrRequestedAddressFamily, familyIPv6)), want: 440},
		{name: "requested and additional family 400", send: signed(udpTransport(),
			familyAttr(stun.AttrRequestedAddressFamily, familyIPv4), familyAttr(attrAdditionalAddressFamily, familyIPv6)), want: 400},
		{name: "additional family IPv4 400", send: signed(udpTransport(), familyAttr(attrAdditionalAddressFamily, familyIPv4)), want: 400},
		{name: "token with EVEN-PORT 400", send: signed(udpTransport(), attr{stun.AttrReservationToken, make([]byte, 8)},
			attr{stun.AttrEvenPort, []byte{0}}), want: 400},
		{name: "token with family 400", send: signed(udpTransport(), attr{stun.AttrReservationToken, make([]byte, 8)},
			familyAttr(stun.AttrRequestedAddressFamily, familyIPv4)), want: 400},
		{name: "malformed EVEN-PORT 400", send: signed(udpTransport(), attr{stun.AttrEvenPort, []byte{0, 0}}), want: 400},
		{name: "unknown token 508", send: signed(udpTransport(), attr{stun.AttrReservationToken, []byte{1, 2, 3, 4, 5, 6, 7, 8}}), want: 508},
		{name: "malformed LIFETIME 400", send: signed(udpTransport(), attr{stun.AttrLifetime, []byte{1}}), want: 400},
		{name: "second allocation on 5-tuple 437", setup: func(t *testing.T, s *Server, c *rawClient) { c.allocate() },
			send: signed(udpTransport()), want: 437},
		{name: "per-user quota 486", mod: func(c *Config, _ *Options) { c.MaxAllocationsPerUser = 1 },
			setup: func(t *testing.T, s *Server, c *rawClient) { dialRaw(t, "udp", s.addr("udp")).allocate() },
			send:  signed(udpTransport()), want: 486},
		{name: "total quota 486", mod: func(c *Config, _ *Options) { c.MaxAllocations = 1 },
			setup: func(t *testing.T, s *Server, c *rawClient) {
				o := dialRaw(t, "udp", s.addr("udp"))
				o.user, o.pass = "bob", "builder"
				o.allocate()
			},
			send: signed(udpTransport()), want: 486},
		{name: "port range exhausted 508", mod: func(c *Config, _ *Options) { c.MinPort = freePortRange(t, 1); c.MaxPort = c.MinPort },
			setup: func(t *testing.T, s *Server, c *rawClient) { dialRaw(t, "udp", s.addr("udp")).allocate() },
			send:  signed(udpTransport()), want: 508},
		{name: "EVEN-PORT R needs two ports 508", mod: func(c *Config, _ *Options) { c.MinPort = freePortRange(t, 1); c.MaxPort = c.MinPort },
			send: signed(udpTransport(), attr{stun.AttrEvenPort, []byte{0x80}}), want: 508},
		{name: "per-user quota counts REST users by user part 486",
			mod: func(c *Config, _ *Options) { c.MaxAllocationsPerUser = 1; c.AuthSecrets = []string{"s3cret"} },
			setup: func(t *testing.T, s *Server, c *rawClient) {
				o := dialRaw(t, "udp", s.addr("udp"))
				o.user, o.pass = RESTCredentials("s3cret", "carol", time.Now().Add(time.Hour))
				o.allocate()
				c.user, c.pass = RESTCredentials("s3cret", "carol", time.Now().Add(2*time.Hour))
			},
			send: signed(udpTransport()), want: 486},
		{name: "expired REST credential 401", mod: func(c *Config, _ *Options) { c.AuthSecrets = []string{"s3cret"} },
			setup: func(t *testing.T, s *Server, c *rawClient) {
				withNonce(t, s, c)
				c.user, c.pass = RESTCredentials("s3cret", "carol", time.Now().Add(-time.Minute))
			},
			send: sendSigned(udpTransport()), want: 401},
		{name: "REST credential of unknown secret 401", mod: func(c *Config, _ *Options) { c.AuthSecrets = []string{"s3cret"} },
			setup: func(t *testing.T, s *Server, c *rawClient) {
				withNonce(t, s, c)
				c.user, c.pass = RESTCredentials("other", "carol", time.Now().Add(time.Hour))
			},
			send: sendSigned(udpTransport()), want: 401},
		{name: "bad PASSWORD-ALGORITHM 400", setup: withNonce,
			send: sendSigned(udpTransport(), attr{stun.AttrPasswordAlgorithm, []byte{0, 9, 0, 0}}), want: 400},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			var mods []serverOpt
			if tt.mod != nil {
				mods = append(mods, tt.mod)
			}
			s := startServer(t, mods...)
			c := dialRaw(t, "udp", s.addr("udp"))
			if tt.setup != nil {
				tt.setup(t, s, c)
			}
			resp := tt.send(t, s, c)
			if got := code(resp); got != tt.want {
				t.Fatalf("code %d, want %d", got, tt.want)
			}
			switch tt.want {
			case 401, 438:
				var r stun.Realm
				var n stun.Nonce
				if r.GetFrom(resp) != nil || string(r) != testRealm || n.GetFrom(resp) != nil {
					t.Errorf("%d without REALM/NONCE", tt.want)
				}
				if resp.Contains(stun.AttrMessageIntegrity) {
					t.Errorf("%d carries MESSAGE-INTEGRITY", tt.want)
				}
			case 437, 440, 442, 486, 508, 420:
				if err := stun.MessageIntegrity(c.key()).Check(resp); err != nil {
					t.Errorf("authenticated error without valid integrity: %v", err)
				}
			}
			if tt.want != 437 && tt.want != 486 && tt.want != 508 && len(s.Allocations()) != 0 {
				t.Errorf("failed Allocate left an allocation")
			}
		})
	}
}

func TestAllocateSuccess(t *testing.T) {
	t.Run("lifetimes", func(t *testing.T) {
		s := startServer(t)
		for _, tt := range []struct {
			req  uint32 // 0: no LIFETIME
			want uint32
		}{{0, 600}, {5, 600}, {1200, 1200}, {100000, 3600}} {
			c := dialRaw(t, "udp", s.addr("udp"))
			setters := []stun.Setter{udpTransport()}
			if tt.req != 0 {
				setters = append(setters, lifetimeAttr(tt.req))
			}
			resp := c.do(methodAllocate, setters...)
			if code(resp) != 0 {
				t.Fatalf("code %d", code(resp))
			}
			l, ok, err := getLifetime(resp)
			if !ok || err != nil || uint32(l/time.Second) != tt.want {
				t.Errorf("requested %d: lifetime %v, want %d s", tt.req, l, tt.want)
			}
			if err := stun.MessageIntegrity(c.key()).Check(resp); err != nil {
				t.Errorf("integrity: %v", err)
			}
			var xa stun.XORMappedAddress
			if xa.GetFrom(resp) != nil || xa.Port != int(c.localAddr().Port()) {
				t.Errorf("XOR-MAPPED-ADDRESS %v", xa)
			}
		}
	})
	t.Run("retransmission is idempotent", func(t *testing.T) {
		s := startServer(t)
		c := dialRaw(t, "udp", s.addr("udp"))
		c.nonce = s.nonces.issue(c.localAddr().Addr(), time.Now())
		m := c.build(methodAllocate, stun.ClassRequest, true, udpTransport())
		c.write(m.Raw)
		first := c.readSTUN(m.TransactionID, 2*time.Second)
		c.write(m.Raw)
		second := c.readSTUN(m.TransactionID, 2*time.Second)
		if code(first) != 0 || second == nil || !bytes.Equal(first.Raw, second.Raw) {
			t.Fatalf("retransmit answered differently: %d vs %v", code(first), code(second))
		}
		if n := len(s.Allocations()); n != 1 {
			t.Fatalf("%d allocations after retransmit", n)
		}
	})
	t.Run("dont fragment and even port with reservation", func(t *testing.T) {
		s := startServer(t)
		c := dialRaw(t, "udp", s.addr("udp"))
		resp := c.do(methodAllocate, udpTransport(), attr{stun.AttrDontFragment, nil}, attr{stun.AttrEvenPort, []byte{0x80}})
		if code(resp) != 0 {
			t.Fatalf("code %d", code(resp))
		}
		relay := relayedAddrs(t, resp)[0]
		if relay.Port()%2 != 0 {
			t.Errorf("EVEN-PORT gave odd port %d", relay.Port())
		}
		tok, ok, err := getReservationToken(resp)
		if !ok || err != nil {
			t.Fatalf("no RESERVATION-TOKEN: %v", err)
		}
		if ai := s.Allocations(); len(ai) != 1 || !ai[0].DontFragment {
			t.Errorf("DONT-FRAGMENT not recorded: %+v", ai)
		}
		c2 := dialRaw(t, "udp", s.addr("udp"))
		resp = c2.do(methodAllocate, udpTransport(), attr{stun.AttrReservationToken, tok[:]})
		if code(resp) != 0 {
			t.Fatalf("allocate with token: code %d", code(resp))
		}
		if r2 := relayedAddrs(t, resp)[0]; r2.Port() != relay.Port()+1 {
			t.Errorf("reserved port %d, want %d", r2.Port(), relay.Port()+1)
		}
		// A token is single use.
		c3 := dialRaw(t, "udp", s.addr("udp"))
		if resp := c3.do(methodAllocate, udpTransport(), attr{stun.AttrReservationToken, tok[:]}); code(resp) != 508 {
			t.Errorf("reused token: code %d, want 508", code(resp))
		}
	})
	t.Run("message integrity sha256", func(t *testing.T) {
		s := startServer(t)
		c := dialRaw(t, "udp", s.addr("udp"))
		c.sha256 = true
		resp := c.do(methodAllocate, udpTransport())
		if code(resp) != 0 {
			t.Fatalf("code %d", code(resp))
		}
		if resp.Contains(stun.AttrMessageIntegrity) || !checkIntegritySHA256(resp.Raw, c.key()) {
			t.Errorf("response not protected by MESSAGE-INTEGRITY-SHA256")
		}
		c.pass = "bad"
		m := c.build(methodRefresh, stun.ClassRequest, true)
		c.write(m.Raw)
		if r := c.readSTUN(m.TransactionID, 2*time.Second); code(r) != 401 {
			t.Errorf("bad SHA-256 integrity: code %d", code(r))
		}
	})
	t.Run("REST credentials with secret rotation", func(t *testing.T) {
		s := startServer(t, func(c *Config, _ *Options) { c.AuthSecrets = []string{"old", "new"} })
		for i, secret := range []string{"old", "new"} {
			c := dialRaw(t, "udp", s.addr("udp"))
			c.user, c.pass = RESTCredentials(secret, "carol", time.Now().Add(time.Hour))
			if resp := c.do(methodAllocate, udpTransport()); code(resp) != 0 {
				t.Fatalf("secret %d: code %d", i, code(resp))
			}
		}
		// coturn's format without a user part.
		c := dialRaw(t, "udp", s.addr("udp"))
		c.user, c.pass = RESTCredentials("new", "", time.Now().Add(time.Hour))
		if resp := c.do(methodAllocate, udpTransport()); code(resp) != 0 {
			t.Fatalf("bare timestamp username: code %d", code(resp))
		}
		// Rotation: "old" is dropped by a reload.
		s.SetCredentials(map[string]string{}, []string{"new"})
		c = dialRaw(t, "udp", s.addr("udp"))
		c.user, c.pass = RESTCredentials("old", "carol", time.Now().Add(time.Hour))
		if resp := c.do(methodAllocate, udpTransport()); code(resp) != 401 {
			t.Fatalf("retired secret: code %d, want 401", code(resp))
		}
		// Static user removed by the reload too.
		c = dialRaw(t, "udp", s.addr("udp"))
		if resp := c.do(methodAllocate, udpTransport()); code(resp) != 401 {
			t.Fatalf("removed static user: code %d, want 401", code(resp))
		}
	})
	t.Run("coturn REST password formula", func(t *testing.T) {
		// Computed independently: printf '1700000000:carol' | openssl
		// dgst -sha1 -hmac secret -binary | base64
		if got := restPassword("secret", "1700000000:carol"); got != "3dQ/XCf3eqBdCiv4/IWcfFRwE1o=" {
			t.Errorf("restPassword = %s", got)
		}
	})
}

func TestRefresh(t *testing.T) {
	s := startServer(t)
	t.Run("no allocation 437", func(t *testing.T) {
		c := dialRaw(t, "udp", s.addr("udp"))
		if r := c.do(methodRefresh); code(r) != 437 {
			t.Fatalf("code %d", code(r))
		}
	})
	t.Run("other user 441", func(t *testing.T) {
		c := dialRaw(t, "udp", s.addr("udp"))
		c.allocate()
		c.user, c.pass = "bob", "builder"
		if r := c.do(methodRefresh); code(r) != 441 {
			t.Fatalf("code %d", code(r))
		}
	})
	t.Run("malformed lifetime 400", func(t *testing.T) {
		c := dialRaw(t, "udp", s.addr("udp"))
		c.allocate()
		if r := c.do(methodRefresh, attr{stun.AttrLifetime, []byte{0, 0}}); code(r) != 400 {
			t.Fatalf("code %d", code(r))
		}
	})
	t.Run("family mismatch 443", func(t *testing.T) {
		c := dialRaw(t, "udp", s.addr("udp"))
		c.allocate()
		if r := c.do(methodRefresh, familyAttr(stun.AttrRequestedAddressFamily, familyIPv6)); code(r) != 443 {
			t.Fatalf("code %d", code(r))
		}
	})
	t.Run("extend and delete", func(t *testing.T) {
		c := dialRaw(t, "udp", s.addr("udp"))
		c.allocate()
		r := c.do(methodRefresh, lifetimeAttr(1800))
		if l, _, _ := getLifetime(r); code(r) != 0 || l != 1800*time.Second {
			t.Fatalf("refresh: code %d lifetime %v", code(r), l)
		}
		var info *AllocationInfo
		for _, a := range s.Allocations() {
			if a.Client == c.localAddr() {
				info = &a
			}
		}
		if info == nil || time.Until(info.Expires) < 1700*time.Second {
			t.Fatalf("expiry not extended: %+v", info)
		}
		r = c.do(methodRefresh, lifetimeAttr(0))
		if l, ok, _ := getLifetime(r); code(r) != 0 || !ok || l != 0 {
			t.Fatalf("delete: code %d lifetime %v", code(r), l)
		}
		for _, a := range s.Allocations() {
			if a.Client == c.localAddr() {
				t.Fatal("allocation survived Refresh(0)")
			}
		}
		if r := c.do(methodRefresh); code(r) != 437 {
			t.Fatalf("refresh after delete: code %d", code(r))
		}
	})
}

func TestCreatePermission(t *testing.T) {
	s := startServer(t, func(c *Config, _ *Options) {
		c.AllowPeers = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
		c.DenyPeers = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
	})
	p := func(s string) stun.Setter { return peerAttr(netip.MustParseAddrPort(s)) }
	cases := []struct {
		name    string
		setters []stun.Setter
		want    int
		perms   int
	}{
		{"no peer 400", nil, 400, 0},
		{"malformed peer 400", []stun.Setter{attr{stun.AttrXORPeerAddress, []byte{0, 1, 0}}}, 400, 0},
		{"rfc1918 403", []stun.Setter{p("10.1.2.3:5")}, 403, 0},
		{"metadata 403", []stun.Setter{p("169.254.169.254:80")}, 403, 0},
		{"multicast 403", []stun.Setter{p("224.0.0.1:5")}, 403, 0},
		{"this network 403", []stun.Setter{p("0.1.2.3:5")}, 403, 0},
		{"broadcast 403", []stun.Setter{p("255.255.255.255:5")}, 403, 0},
		{"deny list 403", []stun.Setter{p("198.51.100.7:5")}, 403, 0},
		{"ipv4-mapped private 403", []stun.Setter{mappedPeerAttr(netip.MustParseAddrPort("[::ffff:10.0.0.1]:5"))}, 403, 0},
		{"ipv4-mapped loopback allowed", []stun.Setter{mappedPeerAttr(netip.MustParseAddrPort("[::ffff:127.0.0.9]:5"))}, 0, 1},
		{"ipv6 peer on ipv4 allocation 443", []stun.Setter{p("[2001:db8::1]:5")}, 443, 0},
		{"one bad among good 403, nothing installed", []stun.Setter{p("203.0.113.1:5"), p("10.0.0.1:5")}, 403, 0},
		{"several peers", []stun.Setter{p("203.0.113.1:5"), p("203.0.113.2:6"), p("127.0.0.5:7")}, 0, 3},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, "udp", s.addr("udp"))
			c.allocate()
			r := c.do(methodCreatePermission, tt.setters...)
			if code(r) != tt.want {
				t.Fatalf("code %d, want %d", code(r), tt.want)
			}
			for _, a := range s.Allocations() {
				if a.Client == c.localAddr() && len(a.Permissions) != tt.perms {
					t.Errorf("%d permissions, want %d", len(a.Permissions), tt.perms)
				}
			}
		})
	}
	t.Run("no allocation 437", func(t *testing.T) {
		c := dialRaw(t, "udp", s.addr("udp"))
		if r := c.do(methodCreatePermission, p("203.0.113.1:5")); code(r) != 437 {
			t.Fatalf("code %d", code(r))
		}
	})
	t.Run("other user 441", func(t *testing.T) {
		c := dialRaw(t, "udp", s.addr("udp"))
		c.allocate()
		c.user, c.pass = "bob", "builder"
		if r := c.do(methodCreatePermission, p("203.0.113.1:5")); code(r) != 441 {
			t.Fatalf("code %d", code(r))
		}
	})
	t.Run("own listener denied", func(t *testing.T) {
		s2 := startServer(t, func(c *Config, _ *Options) {
			c.AllowPeers = nil
			c.Listeners = append(c.Listeners, ListenerSpec{Network: "udp", Addr: netip.MustParseAddrPort("127.0.0.2:0")})
			c.RelayIPs = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
		})
		c := dialRaw(t, "udp", s2.addr("udp"))
		c.allocate()
		pol := *s2.policy.Load()
		pol.deny = nil // only the listener rule is left to deny 127.0.0.2
		s2.policy.Store(&pol)
		if r := c.do(methodCreatePermission, p("127.0.0.2:5")); code(r) != 403 {
			t.Fatalf("code %d", code(r))
		}
	})
}

func TestChannelBind(t *testing.T) {
	s := startServer(t)
	peerA := netip.MustParseAddrPort("127.0.0.1:7001")
	peerB := netip.MustParseAddrPort("127.0.0.1:7002")
	cases := []struct {
		name    string
		prior   [][2]any // (channel, peer) bound first
		setters []stun.Setter
		want    int
	}{
		{name: "missing channel 400", setters: []stun.Setter{peerAttr(peerA)}, want: 400},
		{name: "missing peer 400", setters: []stun.Setter{channelAttr(0x4000)}, want: 400},
		{name: "malformed channel 400", setters: []stun.Setter{attr{stun.AttrChannelNumber, []byte{0x40}}, peerAttr(peerA)}, want: 400},
		{name: "channel below range 400", setters: []stun.Setter{channelAttr(0x3FFF), peerAttr(peerA)}, want: 400},
		{name: "channel above RFC 5766 range 400", setters: []stun.Setter{channelAttr(0x8000), peerAttr(peerA)}, want: 400},
		{name: "ok RFC 5766 range", setters: []stun.Setter{channelAttr(0x7FFF), peerAttr(peerA)}, want: 0},
		{name: "two peers 400", setters: []stun.Setter{channelAttr(0x4000), peerAttr(peerA), peerAttr(peerB)}, want: 400},
		{name: "denied peer 403", setters: []stun.Setter{channelAttr(0x4000), peerAttr(netip.MustParseAddrPort("192.168.1.1:5"))}, want: 403},
		{name: "family mismatch 443", setters: []stun.Setter{channelAttr(0x4000), peerAttr(netip.MustParseAddrPort("[2001:db8::1]:5"))}, want: 443},
		{name: "ok lowest", setters: []stun.Setter{channelAttr(0x4000), peerAttr(peerA)}, want: 0},
		{name: "ok highest", setters: []stun.Setter{channelAttr(0x4FFF), peerAttr(peerA)}, want: 0},
		{name: "rebind same pair refreshes", prior: [][2]any{{uint16(0x4001), peerA}}, setters: []stun.Setter{channelAttr(0x4001), peerAttr(peerA)}, want: 0},
		{name: "channel bound to other peer 400", prior: [][2]any{{uint16(0x4001), peerA}}, setters: []stun.Setter{channelAttr(0x4001), peerAttr(peerB)}, want: 400},
		{name: "peer bound to other channel 400", prior: [][2]any{{uint16(0x4001), peerA}}, setters: []stun.Setter{channelAttr(0x4002), peerAttr(peerA)}, want: 400},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, "udp", s.addr("udp"))
			c.allocate()
			for _, pr := range tt.prior {
				if r := c.do(methodChannelBind, channelAttr(pr[0].(uint16)), peerAttr(pr[1].(netip.AddrPort))); code(r) != 0 {
					t.Fatalf("prior bind: code %d", code(r))
				}
			}
			r := c.do(methodChannelBind, tt.setters...)
			if code(r) != tt.want {
				t.Fatalf("code %d, want %d", code(r), tt.want)
			}
			if tt.want == 0 {
				for _, a := range s.Allocations() {
					if a.Client != c.localAddr() {
						continue
					}
					if len(a.Permissions) != 1 || a.Permissions[0].Peer != peerA.Addr() {
						t.Errorf("ChannelBind did not install the permission: %+v", a.Permissions)
					}
				}
			}
		})
	}
	t.Run("strict RFC 8656 range 400", func(t *testing.T) {
		s := startServer(t, func(c *Config, _ *Options) { c.StrictChannelNumbers = true })
		c := dialRaw(t, "udp", s.addr("udp"))
		c.allocate()
		if r := c.do(methodChannelBind, channelAttr(0x5000), peerAttr(peerA)); code(r) != 400 {
			t.Fatalf("code %d", code(r))
		}
		if r := c.do(methodChannelBind, channelAttr(0x4FFF), peerAttr(peerA)); code(r) != 0 {
			t.Fatalf("code %d", code(r))
		}
	})
	t.Run("no allocation 437", func(t *testing.T) {
		c := dialRaw(t, "udp", s.addr("udp"))
		if r := c.do(methodChannelBind, channelAttr(0x4000), peerAttr(peerA)); code(r) != 437 {
			t.Fatalf("code %d", code(r))
		}
	})
}

// TestSendDataAndChannelData drives the data path with hand-made frames:
// Send indications, Data indications, ChannelData over UDP (with and
// without padding) and over TCP (padded framing), and the drops.
func TestSendDataAndChannelData(t *testing.T) {
	s := startServer(t)
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			peer := newPeer(t, "127.0.0.1:0")
			c := dialRaw(t, network, s.addr(network))
			relay := c.allocate()
			payload := []byte("hello, peer!!") // 13 bytes: needs padding

			// Send without permission: dropped.
			send := c.build(methodSend, stun.ClassIndication, false, peerAttr(peer.addr()), attr{stun.AttrData, payload})
			c.write(send.Raw)
			if _, _, err := peer.recv(200 * time.Millisecond); err == nil {
				t.Fatal("Send indication without permission was relayed")
			}
			// Peer without permission: dropped.
			peer.send([]byte("early"), relay)
			if b := c.read(200 * time.Millisecond); b != nil {
				t.Fatalf("datagram from a peer without permission reached the client: %x", b)
			}
			if r := c.do(methodCreatePermission, peerAttr(peer.addr())); code(r) != 0 {
				t.Fatalf("permission: %d", code(r))
			}
			// Send indication (malformed ones first: no DATA, no peer).
			c.write(c.build(methodSend, stun.ClassIndication, false, peerAttr(peer.addr())).Raw)
			c.write(c.build(methodSend, stun.ClassIndication, false, attr{stun.AttrData, payload}).Raw)
			c.write(send.Raw)
			got, from, err := peer.recv(2 * time.Second)
			if err != nil || !bytes.Equal(got, payload) || from != relay {
				t.Fatalf("Send indication: got %q from %v (%v)", got, from, err)
			}
			// Data indication back.
			peer.send([]byte("hi client"), relay)
			b := c.read(2 * time.Second)
			m := &stun.Message{Raw: b}
			if b == nil || m.Decode() != nil || m.Type != stun.NewType(methodData, stun.ClassIndication) {
				t.Fatalf("no Data indication: %x", b)
			}
			data, _ := m.Get(stun.AttrData)
			pa, err := getXORAddrs(m, stun.AttrXORPeerAddress)
			if !bytes.Equal(data, []byte("hi client")) || err != nil || len(pa) != 1 || pa[0] != peer.addr() {
				t.Fatalf("Data indication: data %q peer %v", data, pa)
			}
			// ChannelData.
			if r := c.do(methodChannelBind, channelAttr(0x4ABC), peerAttr(peer.addr())); code(r) != 0 {
				t.Fatalf("bind: %d", code(r))
			}
			frames := [][]byte{appendChannelData(nil, 0x4ABC, payload, true)}
			if network == "udp" {
				frames = append(frames, appendChannelData(nil, 0x4ABC, payload, false))
			}
			for _, f := range frames {
				c.write(f)
				got, from, err := peer.recv(2 * time.Second)
				if err != nil || !bytes.Equal(got, payload) || from != relay {
					t.Fatalf("ChannelData: got %q from %v (%v)", got, from, err)
				}
			}
			// Unbound channel and truncated frame: dropped.
			if network == "udp" {
				c.write(appendChannelData(nil, 0x4ABD, payload, true))
				bad := appendChannelData(nil, 0x4ABC, payload, false)
				binary.BigEndian.PutUint16(bad[2:], 200)
				c.write(bad)
				// A length field shorter than the datagram beyond padding:
				// corrupted, dropped rather than truncated.
				short := appendChannelData(nil, 0x4ABC, payload, true)
				binary.BigEndian.PutUint16(short[2:], 4)
				c.write(short)
				if _, _, err := peer.recv(200 * time.Millisecond); err == nil {
					t.Fatal("unbound or truncated ChannelData was relayed")
				}
			}
			// Peer -> client as ChannelData, padded on streams only.
			peer.send(payload, relay)
			b = c.read(2 * time.Second)
			want := appendChannelData(nil, 0x4ABC, payload, network != "udp")
			if !bytes.Equal(b, want) {
				t.Fatalf("ChannelData to client %x, want %x", b, want)
			}
		})
	}
}

// TestStreamCloseDeletesAllocation: over TCP the connection is the 5-tuple
// (RFC 8656 section 2); closing it ends the allocation.
func TestStreamCloseDeletesAllocation(t *testing.T) {
	s := startServer(t)
	c := dialRaw(t, "tcp", s.addr("tcp"))
	c.allocate()
	if len(s.Allocations()) != 1 {
		t.Fatal("no allocation")
	}
	c.conn.Close()
	testutil.WaitFor(t, 2*time.Second, "allocation deleted", func() bool { return len(s.Allocations()) == 0 })
}

// TestExpiry: allocations, permissions and channels go away after their
// lifetime.
func TestExpiry(t *testing.T) {
	s := startServer(t, func(c *Config, _ *Options) {
		c.DefaultLifetime = 1500 * time.Millisecond
		c.PermissionLifetime = 700 * time.Millisecond
		c.ChannelLifetime = 1000 * time.Millisecond
	})
	c := dialRaw(t, "udp", s.addr("udp"))
	c.allocate()
	if r := c.do(methodChannelBind, channelAttr(0x4000), peerAttr(netip.MustParseAddrPort("127.0.0.1:9"))); code(r) != 0 {
		t.Fatal(code(r))
	}
	testutil.WaitFor(t, 3*time.Second, "permission expiry", func() bool {
		a := s.Allocations()
		return len(a) == 1 && len(a[0].Permissions) == 0
	})
	testutil.WaitFor(t, 3*time.Second, "channel expiry", func() bool {
		a := s.Allocations()
		return len(a) == 1 && len(a[0].Channels) == 0
	})
	testutil.WaitFor(t, 3*time.Second, "allocation expiry", func() bool { return len(s.Allocations()) == 0 })
	if st := s.Stats(); st.AllocationsExpired != 1 {
		t.Errorf("expired counter %d", st.AllocationsExpired)
	}
	// The expired channel number cannot be rebound to another peer (cool
	// down) — but the allocation is gone anyway; a new one starts clean.
	c2 := dialRaw(t, "udp", s.addr("udp"))
	c2.allocate()
}

// mappedPeerAttr encodes XOR-PEER-ADDRESS as an IPv6 (family 0x02) address
// even for an IPv4-mapped one, as a hostile client could.
func mappedPeerAttr(ap netip.AddrPort) stun.Setter {
	return setterFunc(func(m *stun.Message) error {
		v := make([]byte, 20)
		v[1] = 2
		binary.BigEndian.PutUint16(v[2:], ap.Port()^uint16(magicCookie>>16))
		var key [16]byte
		binary.BigEndian.PutUint32(key[:4], magicCookie)
		copy(key[4:], m.TransactionID[:])
		ip := ap.Addr().As16()
		for i := range ip {
			v[4+i] = ip[i] ^ key[i]
		}
		m.Add(stun.AttrXORPeerAddress, v)
		return nil
	})
}

// TestMalformedDropped: messages that are not valid STUN (RFC 8489 section
// 6.3) or exceed the configured bounds get no answer and are counted.
func TestMalformedDropped(t *testing.T) {
	s := startServer(t, func(c *Config, _ *Options) { c.MaxMessageSize = 600; c.MaxAttributeCount = 10 })
	c := dialRaw(t, "udp", s.addr("udp"))
	valid := func(setters ...stun.Setter) []byte {
		return c.build(methodBinding, stun.ClassRequest, false, setters...).Raw
	}
	mutate := func(b []byte, f func([]byte) []byte) []byte { return f(append([]byte(nil), b...)) }
	many := make([]stun.Setter, 12)
	for i := range many {
		many[i] = attr{stun.AttrSoftware, []byte("x")}
	}
	for _, tt := range []struct {
		name string
		b    []byte
	}{
		{"too many attributes", valid(many...)},
		{"oversize", valid(attr{stun.AttrSoftware, make([]byte, 700)})},
		{"bad cookie", mutate(valid(), func(b []byte) []byte { b[4] ^= 1; return b })},
		{"length beyond datagram", mutate(valid(), func(b []byte) []byte { b[3] += 4; return b })},
		{"length short of datagram", append(valid(), 0, 0, 0, 0)},
		{"length not multiple of 4", mutate(valid(), func(b []byte) []byte { return append(b[:len(b)-8], 0, 0, 0) })},
		{"top bits set", mutate(valid(), func(b []byte) []byte { b[0] |= 0x80; return b })},
		{"bad fingerprint", mutate(valid(), func(b []byte) []byte { b[len(b)-1] ^= 1; return b })},
		{"fingerprint not last", mutate(valid(), func(b []byte) []byte {
			m := &stun.Message{Raw: b}
			m.Decode()
			m.Add(stun.AttrSoftware, []byte("late"))
			return m.Raw
		})},
		{"attribute overruns message", mutate(valid(), func(b []byte) []byte { b[22], b[23] = 0x01, 0x00; return b })},
		{"response class", c.build(methodBinding, stun.ClassSuccessResponse, false).Raw},
		{"short", []byte{0, 1, 0}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := s.Stats().Drops
			c.write(tt.b)
			if b := c.read(150 * time.Millisecond); b != nil {
				t.Fatalf("answered: %x", b)
			}
			after := s.Stats().Drops
			if after["malformed"]+after["oversize"] != before["malformed"]+before["oversize"]+1 {
				t.Errorf("drop not counted: %v -> %v", before, after)
			}
		})
	}
	// The same socket is still served.
	m := c.build(methodBinding, stun.ClassRequest, false)
	c.write(m.Raw)
	if code(c.readSTUN(m.TransactionID, time.Second)) != 0 {
		t.Fatal("valid Binding after the malformed ones not answered")
	}
}

// TestRelayPortRetry: ports of the range taken by another program
// (EADDRINUSE) are skipped; when every port is taken, 508.
func TestRelayPortRetry(t *testing.T) {
	base := freePortRange(t, 4)
	s := startServer(t, func(c *Config, _ *Options) { c.MinPort, c.MaxPort = base, base+3 })
	for _, p := range []uint16{base, base + 1, base + 3} {
		newPeer(t, fmt.Sprintf("127.0.0.1:%d", p)) // a foreign socket holding the port
	}
	c := dialRaw(t, "udp", s.addr("udp"))
	if relay := c.allocate(); relay.Port() != base+2 {
		t.Fatalf("relay port %d, want the only free one %d", relay.Port(), base+2)
	}
	c2 := dialRaw(t, "udp", s.addr("udp"))
	if r := c2.do(methodAllocate, udpTransport()); code(r) != 508 {
		t.Fatalf("range exhausted by foreign sockets: code %d", code(r))
	}
}

// TestReservationExpires: an EVEN-PORT reservation not claimed within its
// lifetime releases the port, and its token is refused with 508.
func TestReservationExpires(t *testing.T) {
	base := freePortRange(t, 2)
	for i := 0; i < 20 && base%2 != 0; i++ {
		base = freePortRange(t, 2) // EVEN-PORT needs an even first port
	}
	if base%2 != 0 {
		t.Fatal("no free even port pair")
	}
	s := startServer(t, func(c *Config, _ *Options) { c.MinPort, c.MaxPort = base, base+1 })
	s.ports.setReservationLifetime(300 * time.Millisecond)
	c := dialRaw(t, "udp", s.addr("udp"))
	resp := c.do(methodAllocate, udpTransport(), attr{stun.AttrEvenPort, []byte{0x80}})
	tok, ok, _ := getReservationToken(resp)
	if code(resp) != 0 || !ok {
		t.Fatalf("allocate with reservation: code %d", code(resp))
	}
	// While reserved, the odd port is not handed out.
	c2 := dialRaw(t, "udp", s.addr("udp"))
	if r := c2.do(methodAllocate, udpTransport()); code(r) != 508 {
		t.Fatalf("reserved port handed out: code %d", code(r))
	}
	testutil.WaitFor(t, 3*time.Second, "reserved port released", func() bool {
		c3 := dialRaw(t, "udp", s.addr("udp"))
		r := c3.do(methodAllocate, udpTransport())
		return code(r) == 0 && relayedAddrs(t, r)[0].Port() == base+1
	})
	c4 := dialRaw(t, "udp", s.addr("udp"))
	if r := c4.do(methodAllocate, udpTransport(), attr{stun.AttrReservationToken, tok[:]}); code(r) != 508 {
		t.Fatalf("expired token: code %d", code(r))
	}
}

func TestRecoverPacketCounts(t *testing.T) {
	s := startServer(t)
	func() {
		defer s.recoverPacket()
		var m map[string]int
		m["boom"]++ // nil map write: a real runtime panic
	}()
	if n := s.Stats().Drops["panics"]; n != 1 {
		t.Fatalf("panics = %d", n)
	}
}

// TestPeerPolicy checks the policy table directly, including what the
// loopback-only tests cannot reach: public addresses of the host behind a
// wildcard listener.
func TestPeerPolicy(t *testing.T) {
	cfg := testConfig()
	cfg.AllowPeers = []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}
	cfg.DenyPeers = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
	relay := []netip.Addr{netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("2001:db8::1")}
	host := []netip.Addr{netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("203.0.113.77"), netip.MustParseAddr("2001:db8::77")}
	wild := []ListenerSpec{{Network: "udp", Addr: netip.MustParseAddrPort("0.0.0.0:3478")}}
	named := []ListenerSpec{{Network: "udp", Addr: netip.MustParseAddrPort("203.0.113.5:3478")}}
	for _, tt := range []struct {
		ip        string
		listeners []ListenerSpec
		want      verdict
	}{
		{"192.0.2.10", named, peerAllowed},
		{"10.1.1.1", named, peerDenied},
		{"10.9.1.1", named, peerAllowed}, // allow list wins
		{"172.16.0.1", named, peerDenied},
		{"172.32.0.1", named, peerAllowed},
		{"192.168.1.1", named, peerDenied},
		{"127.0.0.1", named, peerDenied},
		{"0.0.0.0", named, peerDenied},
		{"169.254.169.254", named, peerDenied},
		{"224.0.0.251", named, peerDenied},
		{"255.255.255.255", named, peerDenied},
		{"198.51.100.9", named, peerDenied}, // deny list
		{"::", named, peerDenied},
		{"::1", named, peerDenied},
		{"fe80::1", named, peerDenied},
		{"fd00::1", named, peerDenied},
		{"ff02::1", named, peerDenied},
		{"::ffff:10.0.0.1", named, peerDenied},
		{"::ffff:192.0.2.10", named, peerAllowed},
		{"2001:db8:5::1", named, peerAllowed},
		{"203.0.113.5", named, peerDenied},   // our listener
		{"203.0.113.77", named, peerAllowed}, // another host address: not ours to judge with a named listener
		{"203.0.113.77", wild, peerDenied},   // ... but a wildcard listener answers there
		{"2001:db8::77", wild, peerDenied},
		{"203.0.113.1", wild, peerOwnRelay}, // hairpin
		{"2001:db8::1", named, peerOwnRelay},
	} {
		p := newPeerPolicy(&cfg, relay, tt.listeners, host)
		if got := p.check(netip.MustParseAddr(tt.ip)); got != tt.want {
			t.Errorf("%s (listener %v): verdict %d, want %d", tt.ip, tt.listeners[0].Addr, got, tt.want)
		}
	}
}

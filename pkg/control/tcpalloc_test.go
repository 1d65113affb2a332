package control

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/internal/testutil"
)

func tcpTransport() stun.Setter { return attr{stun.AttrRequestedTransport, []byte{6, 0, 0, 0}} }

func connIDAttr(id uint32) stun.Setter {
	return attr{stun.AttrConnectionID, []byte{byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id)}}
}

// allocateTCP makes a TCP allocation (RFC 6062) on c's control connection.
func allocateTCP(t *testing.T, c *rawClient) netip.AddrPort {
	t.Helper()
	r := c.do(methodAllocate, tcpTransport())
	if code(r) != 0 {
		t.Fatalf("tcp allocate: %d", code(r))
	}
	rel := relayedAddrs(t, r)
	if len(rel) != 1 {
		t.Fatalf("relayed addresses %v", rel)
	}
	return rel[0]
}

func connectionID(t *testing.T, m *stun.Message) uint32 {
	t.Helper()
	id, ok, err := getConnectionID(m)
	if err != nil || !ok || id == 0 {
		t.Fatalf("CONNECTION-ID %d ok=%v err=%v in %v", id, ok, err, m)
	}
	return id
}

// bindData opens a client data connection and binds it to id; it returns
// the connection, now raw bytes.
func bindData(t *testing.T, s *Server, id uint32) net.Conn {
	t.Helper()
	d := dialRaw(t, "tcp", s.addr("tcp"))
	if r := d.do(methodConnectionBind, connIDAttr(id)); code(r) != 0 {
		t.Fatalf("connection bind: %d", code(r))
	}
	return d.conn
}

func tcpPeerListener(t *testing.T) *net.TCPListener {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// checkPipe sends n random bytes each way between a and b and checks
// them byte for byte.
func checkPipe(t *testing.T, a, b net.Conn, n int) {
	t.Helper()
	for _, dir := range []struct {
		name     string
		from, to net.Conn
	}{{"client to peer", a, b}, {"peer to client", b, a}} {
		want := make([]byte, n)
		_, _ = rand.Read(want)
		errc := make(chan error, 1)
		go func() { _, err := dir.from.Write(want); errc <- err }()
		got := make([]byte, n)
		_ = dir.to.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(dir.to, got); err != nil {
			t.Fatalf("%s: read: %v", dir.name, err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("%s: write: %v", dir.name, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: %d bytes differ", dir.name, n)
		}
	}
}

// TestTCPAllocationConnect: RFC 6062 client-initiated: Connect opens a
// connection from the relayed address to the peer, ConnectionBind on a new
// connection turns it into a raw pipe, byte for byte both ways, and the
// kernel offload is never asked for anything.
func TestTCPAllocationConnect(t *testing.T) {
	off := newRecordingOffload()
	s := startServer(t, withOffload(off))
	c := dialRaw(t, "tcp", s.addr("tcp"))
	relay := allocateTCP(t, c)
	ai := s.Allocations()
	if len(ai) != 1 || ai[0].RelayTransport != "tcp" || len(ai[0].Relays) != 1 || ai[0].Relays[0] != relay {
		t.Fatalf("allocations %+v, want one tcp relay %s", ai, relay)
	}
	ln := tcpPeerListener(t)
	peerAddr := ln.Addr().(*net.TCPAddr).AddrPort()
	r := c.do(methodConnect, peerAttr(peerAddr))
	if code(r) != 0 {
		t.Fatalf("connect: %d", code(r))
	}
	id := connectionID(t, r)
	_ = ln.SetDeadline(time.Now().Add(3 * time.Second))
	pc, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	// "The local endpoint is the relayed transport address."
	if from := pc.RemoteAddr().(*net.TCPAddr).AddrPort(); from != relay {
		t.Fatalf("peer connection from %s, want the relayed address %s", from, relay)
	}
	data := bindData(t, s, id)
	checkPipe(t, data, pc, 200000)
	if got := s.Allocations()[0].TCPConnections; len(got) != 1 || !got[0].Bound || got[0].Peer != peerAddr {
		t.Fatalf("tcp connections %+v", got)
	}
	st := s.Stats()
	if p := st.Protocol; p["tcp_binds"] != 1 || p["tcp_bytes_to_peer"] != 200000 || p["tcp_bytes_to_client"] != 200000 {
		t.Fatalf("protocol counters %v", p)
	}
	if st.Requests["connect"]["ok"] != 1 || st.Requests["connection_bind"]["ok"] != 1 {
		t.Fatalf("requests %v", st.Requests)
	}
	if len(off.ops()) != 0 {
		t.Fatalf("offload calls %v for a TCP allocation", off.ops())
	}

	// The peer closes: the client data connection is closed too (RFC
	// 6062 section 5.5).
	pc.Close()
	_ = data.SetReadDeadline(time.Now().Add(3 * time.Second))
	if n, err := data.Read(make([]byte, 1)); err == nil {
		t.Fatalf("client data connection still open after the peer closed (read %d)", n)
	}
	// The pair is gone: a new Connect to the same peer is allowed again.
	testutil.WaitFor(t, 2*time.Second, "peer data connection removed", func() bool { return len(s.Allocations()[0].TCPConnections) == 0 })
	if r := c.do(methodConnect, peerAttr(peerAddr)); code(r) != 0 {
		t.Fatalf("second connect: %d", code(r))
	}
}

// TestTCPAllocationPeerInitiated: a peer with a permission connects to the
// relayed address; the client gets ConnectionAttempt with the peer's
// address and a CONNECTION-ID, binds, and the pipe works. A peer without
// a permission is refused.
func TestTCPAllocationPeerInitiated(t *testing.T) {
	s := startServer(t)
	c := dialRaw(t, "tcp", s.addr("tcp"))
	relay := allocateTCP(t, c)

	// No permission yet: the connection is closed.
	nc, err := net.DialTimeout("tcp", relay.String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := nc.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection without permission not closed")
	}
	nc.Close()
	testutil.WaitFor(t, time.Second, "refusal counted", func() bool { return s.Stats().Protocol["tcp_peer_refused"] == 1 })

	if r := c.do(methodCreatePermission, peerAttr(netip.MustParseAddrPort("127.0.0.1:1"))); code(r) != 0 {
		t.Fatalf("permission: %d", code(r))
	}
	pc, err := net.DialTimeout("tcp", relay.String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	peerAddr := pc.LocalAddr().(*net.TCPAddr).AddrPort()
	var ind *stun.Message
	for ind == nil {
		b := c.read(3 * time.Second)
		if b == nil {
			t.Fatal("no ConnectionAttempt indication")
		}
		m := &stun.Message{Raw: b}
		if m.Decode() == nil && m.Type == stun.NewType(methodConnectionAttempt, stun.ClassIndication) {
			ind = m
		}
	}
	if got, err := getXORAddrs(ind, stun.AttrXORPeerAddress); err != nil || len(got) != 1 || got[0] != peerAddr {
		t.Fatalf("ConnectionAttempt XOR-PEER-ADDRESS %v (%v), want %s", got, err, peerAddr)
	}
	// Bytes the peer sent before the bind are delivered after it.
	early := []byte("sent before the client bound")
	if _, err := pc.Write(early); err != nil {
		t.Fatal(err)
	}
	data := bindData(t, s, connectionID(t, ind))
	got := make([]byte, len(early))
	_ = data.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.ReadFull(data, got); err != nil || !bytes.Equal(got, early) {
		t.Fatalf("early bytes %q (%v)", got, err)
	}
	checkPipe(t, data, pc, 70000)

	// Deleting the allocation (Refresh lifetime 0) closes both.
	if r := c.do(methodRefresh, lifetimeAttr(0)); code(r) != 0 {
		t.Fatalf("refresh 0: %d", code(r))
	}
	_ = pc.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := pc.Read(make([]byte, 1)); err == nil {
		t.Fatal("peer connection open after the allocation was deleted")
	}
	_ = data.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := data.Read(make([]byte, 1)); err == nil {
		t.Fatal("client data connection open after the allocation was deleted")
	}
}

// TestTCPAllocationErrors: every error of RFC 6062 sections 5.1-5.4.
func TestTCPAllocationErrors(t *testing.T) {
	s := startServer(t)
	closedPort := func() netip.AddrPort {
		ln := tcpPeerListener(t)
		a := ln.Addr().(*net.TCPAddr).AddrPort()
		ln.Close()
		return a
	}
	openPeer := func(t *testing.T) netip.AddrPort {
		ln := tcpPeerListener(t)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				t.Cleanup(func() { c.Close() })
			}
		}()
		return ln.Addr().(*net.TCPAddr).AddrPort()
	}
	tcpAlloc := func(t *testing.T) *rawClient {
		c := dialRaw(t, "tcp", s.addr("tcp"))
		allocateTCP(t, c)
		return c
	}
	tests := []struct {
		name string
		run  func(t *testing.T) *stun.Message
		want int
	}{
		{"allocate with EVEN-PORT 400", func(t *testing.T) *stun.Message {
			return dialRaw(t, "tcp", s.addr("tcp")).do(methodAllocate, tcpTransport(), attr{stun.AttrEvenPort, []byte{0}})
		}, 400},
		{"allocate with DONT-FRAGMENT 400", func(t *testing.T) *stun.Message {
			return dialRaw(t, "tcp", s.addr("tcp")).do(methodAllocate, tcpTransport(), attr{stun.AttrDontFragment, nil})
		}, 400},
		{"allocate over UDP 400", func(t *testing.T) *stun.Message {
			return dialRaw(t, "udp", s.addr("udp")).do(methodAllocate, tcpTransport())
		}, 400},
		{"connect without allocation 437", func(t *testing.T) *stun.Message {
			return dialRaw(t, "tcp", s.addr("tcp")).do(methodConnect, peerAttr(openPeer(t)))
		}, 437},
		{"connect on a UDP allocation 403", func(t *testing.T) *stun.Message {
			c := dialRaw(t, "tcp", s.addr("tcp"))
			c.allocate()
			return c.do(methodConnect, peerAttr(openPeer(t)))
		}, 403},
		{"connect without XOR-PEER-ADDRESS 400", func(t *testing.T) *stun.Message {
			return tcpAlloc(t).do(methodConnect)
		}, 400},
		{"connect to a refused port 447", func(t *testing.T) *stun.Message {
			return tcpAlloc(t).do(methodConnect, peerAttr(closedPort()))
		}, 447},
		{"connect twice to one peer 446", func(t *testing.T) *stun.Message {
			c, p := tcpAlloc(t), openPeer(t)
			if r := c.do(methodConnect, peerAttr(p)); code(r) != 0 {
				t.Fatalf("first connect: %d", code(r))
			}
			return c.do(methodConnect, peerAttr(p))
		}, 446},
		{"connect to a denied peer 403", func(t *testing.T) *stun.Message {
			return tcpAlloc(t).do(methodConnect, peerAttr(netip.MustParseAddrPort("169.254.169.254:80")))
		}, 403},
		{"connect to our own listener 403", func(t *testing.T) *stun.Message {
			return tcpAlloc(t).do(methodConnect, peerAttr(s.addr("tcp")))
		}, 403},
		{"connect to an IPv6 peer 443", func(t *testing.T) *stun.Message {
			return tcpAlloc(t).do(methodConnect, peerAttr(netip.MustParseAddrPort("[::1]:80")))
		}, 443},
		{"channel bind on a TCP allocation 403", func(t *testing.T) *stun.Message {
			return tcpAlloc(t).do(methodChannelBind, channelAttr(0x4000), peerAttr(openPeer(t)))
		}, 403},
		{"connection bind without CONNECTION-ID 400", func(t *testing.T) *stun.Message {
			return dialRaw(t, "tcp", s.addr("tcp")).do(methodConnectionBind)
		}, 400},
		{"connection bind with a short CONNECTION-ID 400", func(t *testing.T) *stun.Message {
			return dialRaw(t, "tcp", s.addr("tcp")).do(methodConnectionBind, attr{stun.AttrConnectionID, []byte{1, 2}})
		}, 400},
		{"connection bind to an unknown id 400", func(t *testing.T) *stun.Message {
			return dialRaw(t, "tcp", s.addr("tcp")).do(methodConnectionBind, connIDAttr(12345))
		}, 400},
		{"connection bind on the control connection 400", func(t *testing.T) *stun.Message {
			c := tcpAlloc(t)
			r := c.do(methodConnect, peerAttr(openPeer(t)))
			return c.do(methodConnectionBind, connIDAttr(connectionID(t, r)))
		}, 400},
		{"connection bind over UDP 400", func(t *testing.T) *stun.Message {
			c := tcpAlloc(t)
			r := c.do(methodConnect, peerAttr(openPeer(t)))
			return dialRaw(t, "udp", s.addr("udp")).do(methodConnectionBind, connIDAttr(connectionID(t, r)))
		}, 400},
		{"connection bind by another user 400", func(t *testing.T) *stun.Message {
			c := tcpAlloc(t)
			r := c.do(methodConnect, peerAttr(openPeer(t)))
			d := dialRaw(t, "tcp", s.addr("tcp"))
			d.user, d.pass = "bob", "builder"
			return d.do(methodConnectionBind, connIDAttr(connectionID(t, r)))
		}, 400},
		{"connection bind twice 400", func(t *testing.T) *stun.Message {
			c := tcpAlloc(t)
			id := connectionID(t, c.do(methodConnect, peerAttr(openPeer(t))))
			bindData(t, s, id)
			return dialRaw(t, "tcp", s.addr("tcp")).do(methodConnectionBind, connIDAttr(id))
		}, 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if r := tc.run(t); code(r) != tc.want {
				t.Fatalf("code %d, want %d (%v)", code(r), tc.want, r)
			}
		})
	}
	st := s.Stats().Requests
	if st["connect"]["446"] != 1 || st["connect"]["447"] != 1 {
		t.Fatalf("connect results %v", st["connect"])
	}
}

// TestTCPBindTimeout: a peer data connection nobody binds is closed after
// the ConnectionBind timeout (RFC 6062 section 5.2, 30 s; shortened here),
// and its CONNECTION-ID is no longer accepted.
func TestTCPBindTimeout(t *testing.T) {
	s := startServer(t)
	s.tcp.mu.Lock()
	s.tcp.bindTimeout = 300 * time.Millisecond
	s.tcp.mu.Unlock()
	c := dialRaw(t, "tcp", s.addr("tcp"))
	allocateTCP(t, c)
	ln := tcpPeerListener(t)
	r := c.do(methodConnect, peerAttr(ln.Addr().(*net.TCPAddr).AddrPort()))
	if code(r) != 0 {
		t.Fatalf("connect: %d", code(r))
	}
	id := connectionID(t, r)
	_ = ln.SetDeadline(time.Now().Add(3 * time.Second))
	pc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	_ = pc.SetReadDeadline(time.Now().Add(3 * time.Second))
	start := time.Now()
	if _, err := pc.Read(make([]byte, 1)); err == nil {
		t.Fatal("peer data connection not closed")
	}
	if el := time.Since(start); el < 200*time.Millisecond {
		t.Fatalf("closed after %v, before the bind timeout", el)
	}
	if n := s.Stats().Protocol["tcp_bind_timeouts"]; n != 1 {
		t.Fatalf("tcp_bind_timeouts %d", n)
	}
	if r := dialRaw(t, "tcp", s.addr("tcp")).do(methodConnectionBind, connIDAttr(id)); code(r) != 400 {
		t.Fatalf("bind after timeout: %d, want 400", code(r))
	}
}

// TestTCPControlConnectionClose: closing the control connection deletes
// the TCP allocation and closes its peer and client data connections.
func TestTCPControlConnectionClose(t *testing.T) {
	s := startServer(t)
	c := dialRaw(t, "tcp", s.addr("tcp"))
	allocateTCP(t, c)
	ln := tcpPeerListener(t)
	r := c.do(methodConnect, peerAttr(ln.Addr().(*net.TCPAddr).AddrPort()))
	_ = ln.SetDeadline(time.Now().Add(3 * time.Second))
	pc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	data := bindData(t, s, connectionID(t, r))
	c.conn.Close()
	for _, conn := range []net.Conn{pc, data} {
		_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); err == nil {
			t.Fatal("connection open after the control connection closed")
		}
	}
	testutil.WaitFor(t, 2*time.Second, "allocation deleted", func() bool { return len(s.Allocations()) == 0 })
}

// TestTCPConnectionLimit: an allocation holds at most MaxTCPConnections
// peer data connections; the next Connect gets 508 and the next incoming
// peer connection is closed.
func TestTCPConnectionLimit(t *testing.T) {
	const limit = 8
	s := startServer(t, func(c *Config, _ *Options) { c.MaxTCPConnections = limit })
	c := dialRaw(t, "tcp", s.addr("tcp"))
	relay := allocateTCP(t, c)
	if r := c.do(methodCreatePermission, peerAttr(netip.MustParseAddrPort("127.0.0.1:1"))); code(r) != 0 {
		t.Fatalf("permission: %d", code(r))
	}
	for i := range limit {
		ln := tcpPeerListener(t)
		go func() {
			if pc, err := ln.Accept(); err == nil {
				t.Cleanup(func() { pc.Close() })
			}
		}()
		if r := c.do(methodConnect, peerAttr(ln.Addr().(*net.TCPAddr).AddrPort())); code(r) != 0 {
			t.Fatalf("connect %d: %d", i, code(r))
		}
	}
	ln := tcpPeerListener(t)
	if r := c.do(methodConnect, peerAttr(ln.Addr().(*net.TCPAddr).AddrPort())); code(r) != 508 {
		t.Fatalf("connect beyond the limit: %d, want 508", code(r))
	}
	nc, err := net.DialTimeout("tcp", relay.String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := nc.Read(make([]byte, 1)); err == nil {
		t.Fatal("incoming connection beyond the limit not closed")
	}
	if p := s.Stats().Protocol; p["tcp_at_limit"] != 2 {
		t.Fatalf("tcp_at_limit %d, want 2", p["tcp_at_limit"])
	}
}

// TestTCPAllocationIPv6: REQUESTED-ADDRESS-FAMILY IPv6 gives an IPv6 TCP
// relayed address, which connects to IPv6 peers (and not IPv4 ones, 443).
func TestTCPAllocationIPv6(t *testing.T) {
	s := startServer(t, func(c *Config, _ *Options) {
		c.Listeners = []ListenerSpec{{Network: "tcp", Addr: netip.MustParseAddrPort("127.0.0.1:0")}}
		c.RelayIPs = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")}
	})
	c := dialRaw(t, "tcp", s.addr("tcp"))
	r := c.do(methodAllocate, tcpTransport(), familyAttr(stun.AttrRequestedAddressFamily, familyIPv6))
	if code(r) != 0 {
		t.Fatalf("allocate: %d", code(r))
	}
	relay := relayedAddrs(t, r)[0]
	if !relay.Addr().Is6() {
		t.Fatalf("relayed address %s, want IPv6", relay)
	}
	ln, err := net.ListenTCP("tcp6", &net.TCPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	r = c.do(methodConnect, peerAttr(ln.Addr().(*net.TCPAddr).AddrPort()))
	if code(r) != 0 {
		t.Fatalf("connect to an IPv6 peer: %d", code(r))
	}
	_ = ln.SetDeadline(time.Now().Add(3 * time.Second))
	pc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if from := pc.RemoteAddr().(*net.TCPAddr).AddrPort(); from != relay {
		t.Fatalf("peer connection from %s, want %s", from, relay)
	}
	checkPipe(t, bindData(t, s, connectionID(t, r)), pc, 10000)
	if r := c.do(methodConnect, peerAttr(netip.MustParseAddrPort("127.0.0.1:9"))); code(r) != 443 {
		t.Fatalf("connect to an IPv4 peer: %d, want 443", code(r))
	}
}

// TestTCPAllocationExpiry: when a TCP allocation's lifetime ends, the
// janitor deletes it and its peer and client data connections close.
func TestTCPAllocationExpiry(t *testing.T) {
	s := startServer(t, func(c *Config, _ *Options) {
		c.DefaultLifetime, c.MaxLifetime = time.Second, time.Second
	})
	c := dialRaw(t, "tcp", s.addr("tcp"))
	allocateTCP(t, c)
	ln := tcpPeerListener(t)
	r := c.do(methodConnect, peerAttr(ln.Addr().(*net.TCPAddr).AddrPort()))
	_ = ln.SetDeadline(time.Now().Add(3 * time.Second))
	pc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	data := bindData(t, s, connectionID(t, r))
	start := time.Now()
	for _, conn := range []net.Conn{pc, data} {
		_ = conn.SetReadDeadline(time.Now().Add(4 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); err == nil {
			t.Fatal("connection open after the allocation expired")
		}
	}
	if el := time.Since(start); el < 500*time.Millisecond {
		t.Fatalf("closed after %v, before the 1 s lifetime", el)
	}
	if st := s.Stats(); st.AllocationsExpired != 1 || st.Allocations != 0 {
		t.Fatalf("expired %d, live %d", st.AllocationsExpired, st.Allocations)
	}
}

// TestTCPBandwidthLimit: bandwidth-limit paces a TCP relay (both
// directions share the allocation's bucket) instead of dropping: 400 kB
// through a 200 kB/s limit, whose bucket starts with one second's worth,
// take about a second more, and arrive intact.
func TestTCPBandwidthLimit(t *testing.T) {
	const limit = 200000
	s := startServer(t, func(c *Config, _ *Options) { c.BandwidthLimit = limit })
	c := dialRaw(t, "tcp", s.addr("tcp"))
	allocateTCP(t, c)
	ln := tcpPeerListener(t)
	r := c.do(methodConnect, peerAttr(ln.Addr().(*net.TCPAddr).AddrPort()))
	_ = ln.SetDeadline(time.Now().Add(3 * time.Second))
	pc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	data := bindData(t, s, connectionID(t, r))
	start := time.Now()
	checkPipe(t, data, pc, limit) // 2 × 200 kB: one second of burst, one of rate
	if el := time.Since(start); el < 800*time.Millisecond || el > 6*time.Second {
		t.Fatalf("400 kB through a %d B/s limit took %v, want about 1 s", limit, el)
	}
}

// TestTCPRelayOff: with MaxTCPConnections negative (max-tcp-connections =
// 0), Allocate for TCP is 442, as on a server without RFC 6062, and UDP
// allocations still work on the same connection.
func TestTCPRelayOff(t *testing.T) {
	s := startServer(t, func(c *Config, _ *Options) { c.MaxTCPConnections = -1 })
	c := dialRaw(t, "tcp", s.addr("tcp"))
	if r := c.do(methodAllocate, tcpTransport()); code(r) != 442 {
		t.Fatalf("tcp allocate with tcp relays off: %d, want 442", code(r))
	}
	c.allocate()
}

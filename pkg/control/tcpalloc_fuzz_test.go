package control

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
)

// FuzzTCPAllocation feeds arbitrary requests, re-signed when mode bit 0 is
// set, to the control connection of a live TCP allocation (RFC 6062):
// Connect, ConnectionBind, CreatePermission, Refresh and the rest with any
// attributes. Peers outside loopback are denied, so no Connect leaves the
// machine. Nothing may panic and every response must be well formed.
func FuzzTCPAllocation(f *testing.F) {
	fuzzSeeds(f)
	lo := netip.MustParseAddrPort("127.0.0.1:9")
	for _, set := range [][]stun.Setter{
		{peerAttr(lo)},
		{},
		{connIDAttr(1)},
		{attr{stun.AttrConnectionID, []byte{1}}},
		{peerAttr(lo), peerAttr(lo)},
	} {
		for _, method := range []stun.Method{methodConnect, methodConnectionBind} {
			m := stun.MustBuild(append([]stun.Setter{stun.TransactionID, stun.NewType(method, stun.ClassRequest)}, append(set, stun.Fingerprint)...)...)
			f.Add(byte(1), m.Raw)
		}
	}
	s := startServer(f, func(c *Config, _ *Options) {
		c.DenyPeers = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	})
	c := dialRaw(f, "tcp", s.addr("tcp"))
	tuple := fiveTuple{proto: tTCP, client: c.localAddr(), server: s.addr("tcp")}
	f.Fuzz(func(t *testing.T, mode byte, b []byte) {
		if a := s.lookup(tuple); a == nil {
			c.t = t
			allocateTCP(t, c)
		}
		if mode&1 != 0 {
			b = signForFuzz(s, tuple.client, b)
		}
		sink := &collectSink{isStrm: true}
		s.handlePacket(nil, sink, tuple, b)
		if n := s.stats.panics.Load(); n != 0 {
			t.Fatalf("handler panicked (%d) on %x", n, b)
		}
		checkOutput(t, sink.take())
	})
}

// FuzzDTLSRecord feeds arbitrary decrypted DTLS records (one message
// each, RFC 7350) to a DTLS association's handler.
func FuzzDTLSRecord(f *testing.F) {
	fuzzSeeds(f)
	s := startServer(f)
	a, b := net.Pipe()
	f.Cleanup(func() { a.Close(); b.Close() })
	sc := &streamConn{s: s, nc: a,
		tuple:  fiveTuple{proto: tDTLS, client: netip.MustParseAddrPort("127.0.0.1:5349"), server: s.addr("udp")},
		unauth: newTokenBucket(1e9, 1e9, time.Now()),
		out:    make(chan []byte, streamQueue),
		closed: make(chan struct{}),
	}
	f.Fuzz(func(t *testing.T, mode byte, p []byte) {
		if mode&1 != 0 {
			p = signForFuzz(s, sc.tuple.client, p)
		}
		if !s.handleDTLSRecord(sc, p) {
			t.Fatal("a record closed the association")
		}
		if n := s.stats.panics.Load(); n != 0 {
			t.Fatalf("handler panicked (%d) on %x", n, p)
		}
		var out [][]byte
		for len(sc.out) > 0 {
			out = append(out, <-sc.out)
		}
		checkOutput(t, out)
	})
}

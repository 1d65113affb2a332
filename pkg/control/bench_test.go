package control

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// countingTx is a dataplane.Tx that only counts: the benchmarks measure
// the control plane's per-packet work (lookups, checks, framing), not the
// socket writes, which the dataplane benchmarks own.
type countingTx struct{ n, bytes atomic.Uint64 }

func (c *countingTx) Send(_ dataplane.Conn, p []byte, _ netip.AddrPort) {
	c.n.Add(1)
	c.bytes.Add(uint64(len(p)))
}

// benchAllocation sets up one allocation with a channel to a peer and
// returns it with its 5-tuple.
func benchAllocation(b *testing.B, s *Server) (*allocation, fiveTuple, netip.AddrPort) {
	c := dialRaw(b, "udp", s.addr("udp"))
	c.allocate()
	peer := netip.MustParseAddrPort("127.0.0.2:9")
	if r := c.do(methodChannelBind, channelAttr(0x4000), peerAttr(peer)); code(r) != 0 {
		b.Fatal(code(r))
	}
	t := fiveTuple{proto: tUDP, client: c.localAddr(), server: s.addr("udp")}
	return s.lookup(t), t, peer
}

// BenchmarkChannelDataToPeer: client ChannelData → peer datagram, the
// userspace hot path (and what the kernel path saves).
func BenchmarkChannelDataToPeer(b *testing.B) {
	for _, size := range []int{120, 1200} {
		b.Run(byteSize(size), func(b *testing.B) {
			s := startServer(b)
			_, t, _ := benchAllocation(b, s)
			frame := appendChannelData(nil, 0x4000, make([]byte, size), false)
			tx := &countingTx{}
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				s.channelDataFromClient(tx, t, frame)
			}
			if tx.n.Load() != uint64(b.N) {
				b.Fatalf("sent %d of %d", tx.n.Load(), b.N)
			}
		})
	}
}

// BenchmarkPeerToClient: peer datagram → ChannelData (bound channel) or
// Data indication (permission only).
func BenchmarkPeerToClient(b *testing.B) {
	for _, mode := range []string{"channel", "data-indication"} {
		b.Run(mode, func(b *testing.B) {
			s := startServer(b)
			a, _, peer := benchAllocation(b, s)
			if mode == "data-indication" {
				peer = netip.MustParseAddrPort("127.0.0.2:10") // same IP: permitted, no channel
			}
			payload := make([]byte, 120)
			tx := &countingTx{}
			rs := a.relay(familyIPv4)
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				a.fromPeer(tx, rs, peer, payload)
			}
			if tx.n.Load() != uint64(b.N) {
				b.Fatalf("sent %d of %d", tx.n.Load(), b.N)
			}
		})
	}
}

// BenchmarkChannelDataParallel runs the client→peer path on every CPU with
// one allocation per goroutine: it scales when the path shares no lock.
func BenchmarkChannelDataParallel(b *testing.B) {
	s := startServer(b)
	tuples := make(chan fiveTuple, 64)
	for i := 0; i < 16; i++ {
		_, t, _ := benchAllocation(b, s)
		tuples <- t
	}
	frame := appendChannelData(nil, 0x4000, make([]byte, 120), false)
	tx := &countingTx{}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		t := <-tuples
		for pb.Next() {
			s.channelDataFromClient(tx, t, frame)
		}
	})
}

// BenchmarkAuthenticatedRefresh: one signed request through decoding,
// nonce and MESSAGE-INTEGRITY checks, the handler and a signed response.
func BenchmarkAuthenticatedRefresh(b *testing.B) {
	s := startServer(b)
	c := dialRaw(b, "udp", s.addr("udp"))
	c.allocate()
	t := fiveTuple{proto: tUDP, client: c.localAddr(), server: s.addr("udp")}
	c.nonce = s.nonces.issue(t.client.Addr(), time.Now())
	req := c.build(methodRefresh, stun.ClassRequest, true).Raw
	sink := &collectSink{}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.handlePacket(nil, sink, t, req)
		if i%1024 == 1023 {
			sink.take()
		}
	}
	if out := sink.take(); len(out) == 0 || code(decodeOrNil(out[len(out)-1])) != 0 {
		b.Fatalf("refresh failed: %d responses", len(out))
	}
}

func decodeOrNil(b []byte) *stun.Message {
	m := &stun.Message{Raw: b}
	if m.Decode() != nil {
		return nil
	}
	return m
}

func byteSize(n int) string {
	return map[int]string{120: "120B", 1200: "1200B"}[n]
}

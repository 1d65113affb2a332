package control

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"

	"github.com/hybridrelay/hybridrelay/internal/turnproto"
)

// recordConn is a listener dataplane.Conn that keeps what is written to it.
type recordConn struct {
	local netip.AddrPort
	mu    sync.Mutex
	out   [][]byte
}

func (c *recordConn) LocalAddr() netip.AddrPort { return c.local }
func (c *recordConn) WriteTo(b []byte, _ netip.AddrPort) error {
	c.mu.Lock()
	c.out = append(c.out, append([]byte(nil), b...))
	c.mu.Unlock()
	return nil
}
func (c *recordConn) SetDontFragment(bool) error { return nil }
func (c *recordConn) Close() error               { return nil }
func (c *recordConn) take() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	o := c.out
	c.out = nil
	return o
}

func dropTotal(s *Server) uint64 {
	var n uint64
	for _, v := range s.Stats().Drops {
		n += v
	}
	return n
}

// checkDiscarded runs p through the UDP listener handler and, when
// turnproto.ClassifyDatagram says its framing is not handled, requires the
// server to have discarded it: nothing sent, exactly one drop counted, no
// allocation made. This is the userspace half of the XDP pre-filter's
// proof (pkg/loader proves the kernel drops only what ClassifyDatagram
// rejects).
func checkDiscarded(t *testing.T, s *Server, conn *recordConn, from netip.AddrPort, p []byte) {
	t.Helper()
	f := turnproto.ClassifyDatagram(p)
	before, allocs := dropTotal(s), s.Stats().Allocations
	s.udpHandler(nil, conn, from, append([]byte(nil), p...))
	out := conn.take()
	if f.Handled() {
		return
	}
	if len(out) != 0 {
		t.Fatalf("framing %s (%x): the server answered %x", f, p, out[0])
	}
	if d := dropTotal(s) - before; d != 1 {
		t.Fatalf("framing %s (%x): %d drops counted, want 1", f, p, d)
	}
	if n := s.Stats().Allocations; n != allocs {
		t.Fatalf("framing %s (%x): allocations %d -> %d", f, p, allocs, n)
	}
}

// framingSamples are datagrams of every framing, including the edges of
// each length rule.
func framingSamples(rng *rand.Rand, n int) [][]byte {
	stunHdr := func(msgLen, total int) []byte {
		b := make([]byte, total)
		binary.BigEndian.PutUint16(b[0:], 0x0001)
		binary.BigEndian.PutUint16(b[2:], uint16(msgLen))
		binary.BigEndian.PutUint32(b[4:], turnproto.MagicCookie)
		for i := 8; i < total; i++ {
			b[i] = byte(rng.IntN(256))
		}
		return b
	}
	cd := func(ch uint16, l, total int) []byte {
		b := make([]byte, total)
		binary.BigEndian.PutUint16(b[0:], ch)
		binary.BigEndian.PutUint16(b[2:], uint16(l))
		return b
	}
	out := [][]byte{
		{}, {0x00}, {0x40, 0x00, 0x00}, {0x00, 0x01, 0x00},
		stunHdr(0, 20), stunHdr(4, 24), stunHdr(4, 20), stunHdr(0, 24), stunHdr(2, 22), stunHdr(0, 19), stunHdr(0, 8),
		cd(0x4000, 0, 4), cd(0x4000, 1, 4), cd(0x4000, 0, 7), cd(0x4000, 0, 8), cd(0x7FFF, 5, 12), cd(0x7FFF, 5, 13),
		cd(0x5000, 100, 104), cd(0x4000, 65535, 100),
		{0x80, 0, 0, 0}, {0xC0, 0, 0, 0, 1, 2, 3, 4},
	}
	for i := 0; i < n; i++ {
		switch rng.IntN(4) {
		case 0: // random bytes
			b := make([]byte, rng.IntN(64))
			for j := range b {
				b[j] = byte(rng.IntN(256))
			}
			out = append(out, b)
		case 1: // STUN header, length near the datagram's
			total := 20 + rng.IntN(40)
			out = append(out, stunHdr(total-20+rng.IntN(9)-4, total))
		case 2: // ChannelData, length near the datagram's
			total := 4 + rng.IntN(40)
			out = append(out, cd(uint16(0x4000+rng.IntN(0x4000)), total-4+rng.IntN(11)-6, total))
		case 3: // STUN with a damaged cookie
			b := stunHdr(4, 24)
			b[4+rng.IntN(4)] ^= byte(1 + rng.IntN(255))
			out = append(out, b)
		}
	}
	return out
}

// TestDiscardedFramingIsDropped: every datagram whose framing
// turnproto.ClassifyDatagram rejects is discarded by the listener handler,
// from a client with and without an allocation and a bound channel.
func TestDiscardedFramingIsDropped(t *testing.T) {
	s := startServer(t)
	c := dialRaw(t, "udp", s.addr("udp"))
	c.allocate()
	peer := newPeer(t, "127.0.0.1:0")
	if r := c.do(methodChannelBind, channelAttr(0x4000), peerAttr(peer.addr())); code(r) != 0 {
		t.Fatalf("bind: %d", code(r))
	}
	conn := &recordConn{local: s.addr("udp")}
	strangers := netip.MustParseAddrPort("127.0.0.1:1")
	rng := rand.New(rand.NewPCG(20261203, 1))
	seen := map[turnproto.Framing]int{}
	for _, p := range framingSamples(rng, 3000) {
		seen[turnproto.ClassifyDatagram(p)]++
		checkDiscarded(t, s, conn, c.localAddr(), p)
		checkDiscarded(t, s, conn, strangers, p)
	}
	for f := turnproto.FramingSTUN; f <= turnproto.FramingChannelDataLength; f++ {
		if seen[f] == 0 {
			t.Errorf("no sample of framing %s", f)
		}
	}
}

// FuzzDiscardedFramingIsDropped is TestDiscardedFramingIsDropped on
// arbitrary datagrams.
func FuzzDiscardedFramingIsDropped(f *testing.F) {
	fuzzSeeds(f)
	for _, p := range framingSamples(rand.New(rand.NewPCG(1, 2)), 50) {
		f.Add(byte(0), p)
	}
	s := startServer(f)
	conn := &recordConn{local: s.addr("udp")}
	f.Fuzz(func(t *testing.T, mode byte, p []byte) {
		from := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 20000+uint16(mode)%8)
		checkDiscarded(t, s, conn, from, p)
	})
}

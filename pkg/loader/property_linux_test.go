package loader

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

// parsedUDP is what a frame claims at face value (no validation beyond
// what is needed to find the fields).
type parsedUDP struct {
	src, dst netip.AddrPort
	payload  []byte
	ok       bool
}

func parseFace(b []byte) (p parsedUDP) {
	if len(b) < 14 {
		return p
	}
	off := 12
	et := binary.BigEndian.Uint16(b[off:])
	off += 2
	if et == 0x8100 || et == 0x88a8 {
		if len(b) < off+4 {
			return p
		}
		et = binary.BigEndian.Uint16(b[off+2:])
		off += 4
	}
	var l4 int
	switch et {
	case 0x0800:
		if len(b) < off+20 {
			return p
		}
		p.src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[off+12:off+16])), 0)
		p.dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[off+16:off+20])), 0)
		l4 = off + int(b[off]&0xf)*4
	case 0x86dd:
		if len(b) < off+40 {
			return p
		}
		p.src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[off+8:off+24])), 0)
		p.dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[off+24:off+40])), 0)
		l4 = off + 40
	default:
		return p
	}
	if len(b) < l4+8 {
		return p
	}
	p.src = netip.AddrPortFrom(p.src.Addr(), binary.BigEndian.Uint16(b[l4:]))
	p.dst = netip.AddrPortFrom(p.dst.Addr(), binary.BigEndian.Uint16(b[l4+2:]))
	p.payload = b[l4+8:]
	p.ok = true
	return p
}

// TestPropertyNeverForwardsWithoutLiveEntry runs random frames (well
// formed, mutated, truncated) against random map states: a frame is only
// ever forwarded if a live entry matches it, and whatever is passed leaves
// the program byte for byte unchanged. Nothing is ever dropped.
func TestPropertyNeverForwardsWithoutLiveEntry(t *testing.T) {
	e := newProgEnv(t, 64)
	rng := rand.New(rand.NewPCG(20261125, 4))
	// Small pools so that random packets often hit installed entries.
	clients := []netip.Addr{netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.3"), netip.MustParseAddr("2001:2::1")}
	servers := []netip.Addr{netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("2001:2::2")}
	peers := []netip.Addr{netip.MustParseAddr("198.18.1.1"), netip.MustParseAddr("198.18.1.99"), netip.MustParseAddr("2001:2:0:1::1")}
	relays := []netip.Addr{netip.MustParseAddr("198.18.1.2"), netip.MustParseAddr("2001:2:0:1::2")}
	pick := func(pool []netip.Addr, v6 bool) netip.Addr {
		for {
			a := pool[rng.IntN(len(pool))]
			if a.Is6() == v6 {
				return a
			}
		}
	}
	ports := []uint16{3478, 40000, 40001, 49152, 49153, 50000, 50001}
	port := func() uint16 { return ports[rng.IntN(len(ports))] }

	forwarded, passed := 0, 0
	for state := 0; state < 6; state++ {
		// A fresh random map state.
		var all []Channel
		e.x.IterateChannels(func(c ChannelEntry) bool { all = append(all, c.Channel); return true })
		for _, c := range all {
			if err := e.x.DeleteChannel(c); err != nil {
				t.Fatal(err)
			}
		}
		live := map[[2]netip.AddrPort]map[uint16]bool{} // c2p: (client, listener) -> channels
		livePeer := map[[2]netip.AddrPort]bool{}        // p2c: (peer, relay)
		for i := 0; i < 12; i++ {
			v6 := rng.IntN(2) == 0
			c := Channel{
				Client:   netip.AddrPortFrom(pick(clients, v6), port()),
				Listener: netip.AddrPortFrom(pick(servers, v6), 3478),
				Relay:    netip.AddrPortFrom(pick(relays, v6), port()),
				Peer:     netip.AddrPortFrom(pick(peers, v6), port()),
				Number:   uint16(0x4000 + rng.IntN(3)),
				Expires:  time.Now().Add(time.Hour),
			}
			expired := rng.IntN(3) == 0
			if expired {
				c.Expires = time.Now().Add(-time.Hour)
			}
			// A peer transport address maps to one channel; skip
			// duplicates rather than model replacement.
			if livePeerHas(livePeer, c) || e.x.PutChannel(c) != nil {
				continue
			}
			if !expired {
				k := [2]netip.AddrPort{c.Client, c.Listener}
				if live[k] == nil {
					live[k] = map[uint16]bool{}
				}
				live[k][c.Number] = true
				livePeer[[2]netip.AddrPort{c.Peer, c.Relay}] = true
			} else {
				livePeer[[2]netip.AddrPort{c.Peer, c.Relay}] = false
			}
		}
		for i := 0; i < 400; i++ {
			v6 := rng.IntN(2) == 0
			var f frameSpec
			if rng.IntN(2) == 0 { // towards a listener
				f = frameSpec{dstMAC: macRC0, srcMAC: macCli, src: netip.AddrPortFrom(pick(clients, v6), port()),
					dst: netip.AddrPortFrom(pick(servers, v6), 3478)}
				data := seq(rng.IntN(200))
				f.payload = channelData(uint16(0x4000+rng.IntN(3)), data, make([]byte, rng.IntN(5)))
			} else { // towards a relay address
				f = frameSpec{dstMAC: macRP0, srcMAC: macPeer, src: netip.AddrPortFrom(pick(peers, v6), port()),
					dst: netip.AddrPortFrom(pick(relays, v6), port()), payload: seq(rng.IntN(200))}
			}
			f.zeroCsum = rng.IntN(4) == 0
			if rng.IntN(5) == 0 {
				f.vlan = 100
			}
			f.ttl = uint8(rng.IntN(4)) // 0 means 64
			in := f.build()
			switch rng.IntN(6) {
			case 0: // flip a byte
				in[rng.IntN(len(in))] ^= byte(1 + rng.IntN(255))
			case 1: // truncate
				in = in[:14+rng.IntN(len(in)-14+1)]
			}
			ingress := e.rc0
			if rng.IntN(2) == 0 {
				ingress = e.rp0
			}
			ret, out, err := e.run(e.x.Program(), in, ingress)
			if err != nil {
				t.Fatal(err)
			}
			switch ret {
			case xdpPass:
				passed++
				if !bytes.Equal(out, in) {
					t.Fatalf("passed frame was modified\n in %x\nout %x", in, out)
				}
			case xdpTX, xdpRedirect:
				forwarded++
				p := parseFace(in)
				if !p.ok {
					t.Fatalf("forwarded an unparsable frame %x", in)
				}
				ok := livePeer[[2]netip.AddrPort{p.src, p.dst}]
				if len(p.payload) >= 4 {
					ch := binary.BigEndian.Uint16(p.payload)
					ok = ok || live[[2]netip.AddrPort{p.src, p.dst}][ch]
				}
				if !ok {
					t.Fatalf("forwarded (%d) a frame without a live entry: %x", ret, in)
				}
				// Incremental updates carry an input's checksum error
				// on (on purpose: the receiver must still see it), so
				// only frames that arrived intact must leave intact.
				if verifyChecksums(in) == nil {
					if err := verifyChecksums(out); err != nil {
						t.Fatalf("forwarded frame: %v\n in %x\nout %x", err, in, out)
					}
				} else if verifyChecksums(out) == nil {
					t.Fatalf("a checksum error vanished in forwarding\n in %x\nout %x", in, out)
				}
			default:
				t.Fatalf("return %d: never drop or abort", ret)
			}
		}
	}
	t.Logf("%d forwarded, %d passed", forwarded, passed)
	if forwarded < 50 || passed < 50 {
		t.Fatalf("the random mix did not exercise both outcomes: %d forwarded, %d passed", forwarded, passed)
	}
}

func livePeerHas(m map[[2]netip.AddrPort]bool, c Channel) bool {
	_, ok := m[[2]netip.AddrPort{c.Peer, c.Relay}]
	return ok
}

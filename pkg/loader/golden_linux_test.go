package loader

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"testing"
	"time"
)

// XDP actions (enum xdp_action).
const (
	xdpAborted  = 0
	xdpDrop     = 1
	xdpPass     = 2
	xdpTX       = 3
	xdpRedirect = 4
)

// The channels of the golden tests. Listener and relay addresses are the
// progEnv's own; clients and peers are its neighbours.
var (
	chV4 = Channel{Client: ap("198.18.0.1:50000"), Listener: ap("198.18.0.2:3478"),
		Relay: ap("198.18.1.2:49152"), Peer: ap("198.18.1.1:40000"), Number: 0x4000}
	chV4DF = Channel{Client: ap("198.18.0.1:50001"), Listener: ap("198.18.0.2:3478"),
		Relay: ap("198.18.1.2:49153"), Peer: ap("198.18.1.1:40001"), Number: 0x4001, DontFragment: true}
	chV6 = Channel{Client: ap("[2001:2::1]:50000"), Listener: ap("[2001:2::2]:3478"),
		Relay: ap("[2001:2:0:1::2]:49152"), Peer: ap("[2001:2:0:1::1]:40000"), Number: 0x4FFF}
	chTX = Channel{Client: ap("198.18.0.1:50002"), Listener: ap("198.18.0.2:3478"),
		Relay: ap("198.18.0.2:49154"), Peer: ap("198.18.0.3:40002"), Number: 0x4002}
	chVlan4 = Channel{Client: ap("198.18.2.1:50000"), Listener: ap("198.18.2.2:3478"),
		Relay: ap("198.18.2.2:49160"), Peer: ap("198.18.2.5:40000"), Number: 0x4010}
	chVlan6 = Channel{Client: ap("[2001:2:0:2::1]:50000"), Listener: ap("[2001:2:0:2::2]:3478"),
		Relay: ap("[2001:2:0:2::2]:49160"), Peer: ap("[2001:2:0:2::5]:40000"), Number: 0x4011}
	chNoNeigh = Channel{Client: ap("198.18.0.1:50003"), Listener: ap("198.18.0.2:3478"),
		Relay: ap("198.18.1.2:49155"), Peer: ap("198.18.1.99:40000"), Number: 0x4003}
	chHairpin = Channel{Client: ap("198.18.0.1:50004"), Listener: ap("198.18.0.2:3478"),
		Relay: ap("198.18.1.2:49156"), Peer: ap("198.18.1.2:49999"), Number: 0x4004}
	chNoEgress = Channel{Client: ap("198.18.0.1:50005"), Listener: ap("198.18.0.2:3478"),
		Relay: ap("198.18.3.2:49157"), Peer: ap("198.18.3.1:40000"), Number: 0x4005}
	chExpired = Channel{Client: ap("198.18.0.1:50006"), Listener: ap("198.18.0.2:3478"),
		Relay: ap("198.18.1.2:49158"), Peer: ap("198.18.1.1:40006"), Number: 0x4006}
	// RFC 5766 allowed channels up to 0x7FFF; clients still use them.
	chHigh = Channel{Client: ap("198.18.0.1:50008"), Listener: ap("198.18.0.2:3478"),
		Relay: ap("198.18.1.2:49161"), Peer: ap("198.18.1.1:40008"), Number: 0x7F45}
	// Relay-to-relay: A's peer is B's relayed address and B has a channel
	// bound to A's relayed address (B's client is the neighbour .3).
	chHpA = Channel{Client: ap("198.18.0.1:50020"), Listener: ap("198.18.0.2:3478"),
		Relay: ap("198.18.1.2:49170"), Peer: ap("198.18.1.2:49171"), Number: 0x4020}
	chHpB = Channel{Client: ap("198.18.0.3:50021"), Listener: ap("198.18.0.2:3478"),
		Relay: ap("198.18.1.2:49171"), Peer: ap("198.18.1.2:49170"), Number: 0x4721}
	chHpA6 = Channel{Client: ap("[2001:2::1]:50020"), Listener: ap("[2001:2::2]:3478"),
		Relay: ap("[2001:2:0:1::2]:49170"), Peer: ap("[2001:2:0:1::2]:49171"), Number: 0x4020}
	chHpB6 = Channel{Client: ap("[2001:2::3]:50021"), Listener: ap("[2001:2::2]:3478"),
		Relay: ap("[2001:2:0:1::2]:49171"), Peer: ap("[2001:2:0:1::2]:49170"), Number: 0x4022}
	// A VLAN client whose peer is reached untagged: the program cannot
	// move a frame between tagged and untagged.
	chVlanMix = Channel{Client: ap("198.18.2.1:50007"), Listener: ap("198.18.2.2:3478"),
		Relay: ap("198.18.1.2:49159"), Peer: ap("198.18.1.1:40007"), Number: 0x4007}
)

// goldenLive are the channels installGolden installs live.
var goldenLive = []Channel{chV4, chV4DF, chV6, chTX, chVlan4, chVlan6, chNoNeigh, chHairpin, chNoEgress, chVlanMix, chHigh,
	chHpA, chHpB, chHpA6, chHpB6}

// goldenListeners are the server's UDP listeners: the pre-filter guards
// them (the progEnv loads with Options.Prefilter).
var goldenListeners = []netip.AddrPort{ap("198.18.0.2:3478"), ap("[2001:2::2]:3478"), ap("198.18.2.2:3478"), ap("[2001:2:0:2::2]:3478")}

func installGolden(t testing.TB, x *XDP) {
	if err := x.SetListeners(goldenListeners); err != nil {
		t.Fatal(err)
	}
	for _, c := range goldenLive {
		c.Expires = hour()
		if err := x.PutChannel(c); err != nil {
			t.Fatalf("install %#x: %v", c.Number, err)
		}
	}
	c := chExpired
	c.Expires = time.Now().Add(-time.Second)
	if err := x.PutChannel(c); err != nil {
		t.Fatal(err)
	}
}

func seq(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	return b
}

// c2pIn is ChannelData from the channel's client to its listener.
func c2pIn(c Channel, data, pad []byte, mod func(*frameSpec)) []byte {
	f := frameSpec{dstMAC: macRC0, srcMAC: macCli, src: c.Client, dst: c.Listener, id: 0x1234, tos: 0xb8,
		payload: channelData(c.Number, data, pad)}
	if mod != nil {
		mod(&f)
	}
	return f.build()
}

// c2pOut is what the kernel should send to the peer.
func c2pOut(c Channel, data []byte, smac, dmac [6]byte, mod func(*frameSpec)) []byte {
	f := frameSpec{dstMAC: dmac, srcMAC: smac, src: c.Relay, dst: c.Peer, id: 0x1234, tos: 0xb8, ttl: 63,
		df: c.DontFragment, payload: data}
	if mod != nil {
		mod(&f)
	}
	return f.build()
}

// hairpinOut is what the kernel should send to b's client for a's
// ChannelData: b's ChannelData, from b's listener, DF and TTL as for a
// client-bound packet.
func hairpinOut(a, b Channel, data []byte, mod func(*frameSpec)) []byte {
	f := frameSpec{dstMAC: macCli3, srcMAC: macRC0, src: b.Listener, dst: b.Client, id: 0x1234, tos: 0xb8, ttl: 63,
		payload: channelData(b.Number, data, nil)}
	if mod != nil {
		mod(&f)
	}
	return f.build()
}

func p2cIn(c Channel, data []byte, mod func(*frameSpec)) []byte {
	f := frameSpec{dstMAC: macRP0, srcMAC: macPeer, src: c.Peer, dst: c.Relay, id: 0x4321, df: true, payload: data}
	if mod != nil {
		mod(&f)
	}
	return f.build()
}

func p2cOut(c Channel, data []byte, smac, dmac [6]byte, mod func(*frameSpec)) []byte {
	f := frameSpec{dstMAC: dmac, srcMAC: smac, src: c.Listener, dst: c.Client, id: 0x4321, df: true, ttl: 63,
		payload: channelData(c.Number, data, nil)}
	if mod != nil {
		mod(&f)
	}
	return f.build()
}

type goldenCase struct {
	name    string
	in      []byte
	ingress func(*progEnv) int
	ret     uint32
	want    []byte  // nil: PASS cases compare against in
	counter Counter // the one counter that must move by one packet
}

func goldenCases() []goldenCase {
	onRC0 := func(e *progEnv) int { return e.rc0 }
	onRP0 := func(e *progEnv) int { return e.rp0 }
	d100 := seq(100)
	d5 := seq(5)
	vlan := func(tci uint16) func(*frameSpec) { return func(f *frameSpec) { f.vlan = tci } }
	zero := func(f *frameSpec) { f.zeroCsum = true }
	both := func(a, b func(*frameSpec)) func(*frameSpec) {
		return func(f *frameSpec) { a(f); b(f) }
	}
	mutate := func(b []byte, fn func([]byte)) []byte { fn(b); return b }
	return []goldenCase{
		// client -> peer
		{"c2p v4 no padding", c2pIn(chV4, d100, nil, nil), onRC0, xdpRedirect,
			c2pOut(chV4, d100, macRP0, macPeer, nil), FwdToPeerPackets},
		{"c2p v4 padding", c2pIn(chV4, d5, []byte{0xde, 0xad, 0xbe}, nil), onRC0, xdpRedirect,
			c2pOut(chV4, d5, macRP0, macPeer, nil), FwdToPeerPackets},
		{"c2p v4 one pad byte", c2pIn(chV4, seq(7), []byte{0x99}, nil), onRC0, xdpRedirect,
			c2pOut(chV4, seq(7), macRP0, macPeer, nil), FwdToPeerPackets},
		{"c2p v4 empty data", c2pIn(chV4, nil, nil, nil), onRC0, xdpRedirect,
			c2pOut(chV4, nil, macRP0, macPeer, nil), FwdToPeerPackets},
		{"c2p v4 zero udp checksum", c2pIn(chV4, d5, []byte{1, 2, 3}, zero), onRC0, xdpRedirect,
			c2pOut(chV4, d5, macRP0, macPeer, zero), FwdToPeerPackets},
		{"c2p v4 dont fragment", c2pIn(chV4DF, d100, nil, nil), onRC0, xdpRedirect,
			c2pOut(chV4DF, d100, macRP0, macPeer, nil), FwdToPeerPackets},
		{"c2p v4 DF cleared when not asked", c2pIn(chV4, d100, nil, func(f *frameSpec) { f.df = true }), onRC0, xdpRedirect,
			c2pOut(chV4, d100, macRP0, macPeer, nil), FwdToPeerPackets},
		{"c2p v4 ethernet trailer cut", c2pIn(chV4, d5, nil, func(f *frameSpec) { f.trailer = make([]byte, 9) }), onRC0, xdpRedirect,
			c2pOut(chV4, d5, macRP0, macPeer, nil), FwdToPeerPackets},
		{"c2p v4 same interface TX", c2pIn(chTX, d100, nil, nil), onRC0, xdpTX,
			c2pOut(chTX, d100, macRC0, macCli3, nil), FwdToPeerPackets},
		{"c2p v4 rfc 5766 channel", c2pIn(chHigh, seq(11), []byte{0, 0, 0}, nil), onRC0, xdpRedirect,
			c2pOut(chHigh, seq(11), macRP0, macPeer, nil), FwdToPeerPackets},
		{"p2c v4 rfc 5766 channel", p2cIn(chHigh, d100, nil), onRP0, xdpRedirect,
			p2cOut(chHigh, d100, macRC0, macCli, nil), FwdToClientPackets},
		{"c2p v6 no padding", c2pIn(chV6, d100, nil, nil), onRC0, xdpRedirect,
			c2pOut(chV6, d100, macRP0, macPeer, nil), FwdToPeerPackets},
		{"c2p v6 padding", c2pIn(chV6, seq(6), []byte{0xff, 0xfe}, nil), onRC0, xdpRedirect,
			c2pOut(chV6, seq(6), macRP0, macPeer, nil), FwdToPeerPackets},
		{"c2p v4 vlan", c2pIn(chVlan4, d100, nil, vlan(0x2064)), onRC0, xdpTX,
			c2pOut(chVlan4, d100, macRC0, macVPr, vlan(0x2064)), FwdToPeerPackets},
		{"c2p v6 vlan padding", c2pIn(chVlan6, seq(9), []byte{7, 7, 7}, vlan(100)), onRC0, xdpTX,
			c2pOut(chVlan6, seq(9), macRC0, macVPr, vlan(100)), FwdToPeerPackets},
		// relay to relay
		{"hairpin v4", c2pIn(chHpA, d100, nil, nil), onRC0, xdpTX,
			hairpinOut(chHpA, chHpB, d100, nil), FwdHairpinPackets},
		{"hairpin v4 padding cut", c2pIn(chHpA, d5, []byte{1, 2, 3}, nil), onRC0, xdpTX,
			hairpinOut(chHpA, chHpB, d5, nil), FwdHairpinPackets},
		{"hairpin v4 DF copied", c2pIn(chHpA, d100, nil, func(f *frameSpec) { f.df = true }), onRC0, xdpTX,
			hairpinOut(chHpA, chHpB, d100, func(f *frameSpec) { f.df = true }), FwdHairpinPackets},
		{"hairpin v4 zero udp checksum", c2pIn(chHpA, seq(9), []byte{4, 5, 6}, zero), onRC0, xdpTX,
			hairpinOut(chHpA, chHpB, seq(9), zero), FwdHairpinPackets},
		{"hairpin v6 padding cut", c2pIn(chHpA6, seq(7), []byte{9}, nil), onRC0, xdpTX,
			hairpinOut(chHpA6, chHpB6, seq(7), nil), FwdHairpinPackets},
		// peer -> client
		{"p2c v4", p2cIn(chV4, d100, nil), onRP0, xdpRedirect,
			p2cOut(chV4, d100, macRC0, macCli, nil), FwdToClientPackets},
		{"p2c v4 odd length", p2cIn(chV4, seq(33), nil), onRP0, xdpRedirect,
			p2cOut(chV4, seq(33), macRC0, macCli, nil), FwdToClientPackets},
		{"p2c v4 empty", p2cIn(chV4, nil, nil), onRP0, xdpRedirect,
			p2cOut(chV4, nil, macRC0, macCli, nil), FwdToClientPackets},
		{"p2c v4 zero udp checksum", p2cIn(chV4, d100, zero), onRP0, xdpRedirect,
			p2cOut(chV4, d100, macRC0, macCli, zero), FwdToClientPackets},
		{"p2c v4 ethernet trailer cut", p2cIn(chV4, d5, func(f *frameSpec) { f.trailer = make([]byte, 13) }), onRP0, xdpRedirect,
			p2cOut(chV4, d5, macRC0, macCli, nil), FwdToClientPackets},
		{"p2c v4 ChannelData-shaped payload", p2cIn(chV4, channelData(0x4000, d5, nil), nil), onRP0, xdpRedirect,
			p2cOut(chV4, channelData(0x4000, d5, nil), macRC0, macCli, nil), FwdToClientPackets},
		{"p2c v6", p2cIn(chV6, seq(77), nil), onRP0, xdpRedirect,
			p2cOut(chV6, seq(77), macRC0, macCli, nil), FwdToClientPackets},
		{"p2c v4 vlan", p2cIn(chVlan4, d100, both(vlan(100), func(f *frameSpec) { f.dstMAC = macRC0; f.srcMAC = macVPr })), onRC0, xdpTX,
			p2cOut(chVlan4, d100, macRC0, macVCli, vlan(100)), FwdToClientPackets},
		{"p2c v6 vlan", p2cIn(chVlan6, seq(31), both(vlan(100), func(f *frameSpec) { f.dstMAC = macRC0; f.srcMAC = macVPr })), onRC0, xdpTX,
			p2cOut(chVlan6, seq(31), macRC0, macVCli, vlan(100)), FwdToClientPackets},
		// Every PASS reason, packet unmodified.
		{"unknown channel", c2pIn(Channel{Client: chV4.Client, Listener: chV4.Listener, Number: 0x4abc}, d100, nil, nil), onRC0, xdpPass, nil, PassNoEntry},
		{"unknown client", c2pIn(Channel{Client: ap("198.18.0.1:1"), Listener: chV4.Listener, Number: 0x4000}, d100, nil, nil), onRC0, xdpPass, nil, PassNoEntry},
		{"unknown v6", c2pIn(Channel{Client: ap("[2001:2::1]:1"), Listener: chV6.Listener, Number: 0x4FFF}, d100, nil, nil), onRC0, xdpPass, nil, PassNoEntry},
		{"unknown peer", p2cIn(Channel{Peer: ap("198.18.1.1:1"), Relay: chV4.Relay}, d100, nil), onRP0, xdpPass, nil, PassNotChannelData},
		{"stun to listener", c2pIn(chV4, nil, nil, func(f *frameSpec) { f.payload = append([]byte{0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42}, seq(12)...) }), onRC0, xdpPass, nil, PassNotChannelData},
		{"rfc 5766 channel without entry", c2pIn(Channel{Client: chV4.Client, Listener: chV4.Listener, Number: 0x5000}, d100, nil, nil), onRC0, xdpPass, nil, PassNoEntry},
		{"first bits 10 is not channeldata", c2pIn(Channel{Client: chV4.Client, Listener: notListener, Number: 0x8000}, d100, nil, nil), onRC0, xdpPass, nil, PassNotChannelData},
		{"first bits 11 is not channeldata", c2pIn(Channel{Client: chV4.Client, Listener: notListener, Number: 0xC000}, d100, nil, nil), onRC0, xdpPass, nil, PassNotChannelData},
		{"expired c2p", c2pIn(chExpired, d100, nil, nil), onRC0, xdpPass, nil, PassExpired},
		{"expired p2c", p2cIn(chExpired, d100, nil), onRP0, xdpPass, nil, PassExpired},
		{"no neighbour", c2pIn(chNoNeigh, d100, nil, nil), onRC0, xdpPass, nil, PassNoNeigh},
		{"hairpin to own relay address", c2pIn(chHairpin, d100, nil, nil), onRC0, xdpPass, nil, PassLocal},
		{"egress not in devmap", c2pIn(chNoEgress, d100, nil, nil), onRC0, xdpPass, nil, PassNoEgress},
		{"vlan in, untagged out", c2pIn(chVlanMix, d100, nil, vlan(100)), onRC0, xdpPass, nil, PassNoEgress},
		{"untagged in, vlan out", p2cIn(chVlan4, d100, nil), onRP0, xdpPass, nil, PassNoEgress},
		{"c2p too big for peer MTU", c2pIn(chV4, seq(1400-28+1), nil, nil), onRC0, xdpPass, nil, PassTooBig},
		{"c2p fits peer MTU", c2pIn(chV4, seq(1400-28), nil, nil), onRC0, xdpRedirect,
			c2pOut(chV4, seq(1400-28), macRP0, macPeer, nil), FwdToPeerPackets},
		{"p2c too big for client MTU", p2cIn(chV4, seq(1500-32+1), nil), onRP0, xdpPass, nil, PassTooBig},
		{"ttl 1", c2pIn(chV4, d100, nil, func(f *frameSpec) { f.ttl = 1 }), onRC0, xdpPass, nil, PassTTL},
		{"hop limit 1", p2cIn(chV6, d100, func(f *frameSpec) { f.ttl = 1 }), onRP0, xdpPass, nil, PassTTL},
		{"channeldata length beyond datagram", mutate(c2pIn(chV4, d100, nil, nil), func(b []byte) { b[14+20+8+3] = 101 }), onRC0, xdpPass, nil, PassMalformed},
		{"four bytes after channeldata", c2pIn(chV4, d100, []byte{0, 0, 0, 0}, nil), onRC0, xdpPass, nil, PassMalformed},
		{"ip length beyond frame", c2pIn(chV4, d100, nil, nil)[:14+20+8+50], onRC0, xdpPass, nil, PassMalformed},
		{"only ethernet", c2pIn(chV4, d100, nil, nil)[:14], onRC0, xdpPass, nil, PassMalformed},
		{"ipv4 header cut", c2pIn(chV4, d100, nil, nil)[:14+19], onRC0, xdpPass, nil, PassMalformed},
		{"udp header cut", c2pIn(chV4, nil, nil, func(f *frameSpec) { f.payload = nil })[:14+20+7], onRC0, xdpPass, nil, PassMalformed},
		{"bad ipv4 header checksum", mutate(c2pIn(chV4, d100, nil, nil), func(b []byte) { b[14+10] ^= 0xff }), onRC0, xdpPass, nil, PassMalformed},
		{"udp length short of ip length", mutate(c2pIn(chV4, d100, nil, nil), func(b []byte) { b[14+20+5] -= 4 }), onRC0, xdpPass, nil, PassMalformed},
		{"ipv6 zero udp checksum", mutate(c2pIn(chV6, d100, nil, nil), func(b []byte) { b[14+40+6], b[14+40+7] = 0, 0 }), onRC0, xdpPass, nil, PassMalformed},
		{"vlan header cut", c2pIn(chVlan4, d100, nil, vlan(100))[:16], onRC0, xdpPass, nil, PassMalformed},
		{"ipv4 options", c2pIn(chV4, d100, nil, func(f *frameSpec) { f.ihl = 6 }), onRC0, xdpPass, nil, PassOther},
		{"ipv4 fragment", c2pIn(chV4, d100, nil, func(f *frameSpec) { f.fragOff = 0x2000 }), onRC0, xdpPass, nil, PassOther},
		{"ipv4 later fragment", c2pIn(chV4, d100, nil, func(f *frameSpec) { f.fragOff = 0x0010 }), onRC0, xdpPass, nil, PassOther},
		{"ipv6 extension header", c2pIn(chV6, d100, nil, func(f *frameSpec) { f.nextHdr = 60 }), onRC0, xdpPass, nil, PassOther},
		{"tcp", c2pIn(chV4, d100, nil, func(f *frameSpec) { f.proto = 6 }), onRC0, xdpPass, nil, PassOther},
		{"arp", mutate(c2pIn(chV4, d100, nil, nil), func(b []byte) { b[12], b[13] = 0x08, 0x06 }), onRC0, xdpPass, nil, PassOther},
		{"qinq", mutate(c2pIn(chVlan4, d100, nil, vlan(100)), func(b []byte) { b[16], b[17] = 0x81, 0x00 }), onRC0, xdpPass, nil, PassOther},

		// The listener pre-filter: what the server discards by framing
		// alone is dropped, counted by reason ...
		{"prefilter empty datagram", toListener(chV4.Listener, nil, nil), onRC0, xdpDrop, nil, DropPrefilterShort},
		{"prefilter 3 bytes", toListener(chV4.Listener, []byte{0x40, 0x00, 0x00}, nil), onRC0, xdpDrop, nil, DropPrefilterShort},
		{"prefilter stun header cut", toListener(chV4.Listener, stunMsg(0, 19), nil), onRC0, xdpDrop, nil, DropPrefilterShort},
		{"prefilter first bits 10", toListener(chV4.Listener, channelData(0x8000, d100, nil), nil), onRC0, xdpDrop, nil, DropPrefilterNotTURN},
		{"prefilter first bits 11", toListener(chV4.Listener, channelData(0xC000, d5, nil), nil), onRC0, xdpDrop, nil, DropPrefilterNotTURN},
		{"prefilter stun without magic cookie", toListener(chV4.Listener, mutate(stunMsg(4, 24), func(b []byte) { b[5] ^= 1 }), nil), onRC0, xdpDrop, nil, DropPrefilterNotTURN},
		{"prefilter stun length short of datagram", toListener(chV4.Listener, stunMsg(4, 28), nil), onRC0, xdpDrop, nil, DropPrefilterSTUNLength},
		{"prefilter stun length beyond datagram", toListener(chV4.Listener, stunMsg(8, 24), nil), onRC0, xdpDrop, nil, DropPrefilterSTUNLength},
		{"prefilter stun length not a multiple of 4", toListener(chV4.Listener, stunMsg(2, 22), nil), onRC0, xdpDrop, nil, DropPrefilterSTUNLength},
		{"prefilter channeldata length beyond datagram", toListener(chV4.Listener, mutate(channelData(0x4abc, d5, nil), func(b []byte) { b[3] = 6 }), nil), onRC0, xdpDrop, nil, DropPrefilterChannelDataLength},
		{"prefilter four bytes after channeldata", toListener(chV4.Listener, channelData(0x4abc, d5, []byte{0, 0, 0, 0}), nil), onRC0, xdpDrop, nil, DropPrefilterChannelDataLength},
		{"prefilter v6", toListener(chV6.Listener, seq(100), func(f *frameSpec) { f.payload[0] = 0xff }), onRC0, xdpDrop, nil, DropPrefilterNotTURN},
		{"prefilter v4 vlan", toListener(chVlan4.Listener, []byte{0x80, 1, 2, 3, 4}, vlan(100)), onRC0, xdpDrop, nil, DropPrefilterNotTURN},
		{"prefilter v6 vlan", toListener(chVlan6.Listener, []byte{1}, vlan(100)), onRC0, xdpDrop, nil, DropPrefilterShort},
		{"prefilter zero udp checksum", toListener(chV4.Listener, []byte{0xde, 0xad, 0xbe, 0xef, 0, 0}, zero), onRC0, xdpDrop, nil, DropPrefilterNotTURN},
		// ... and everything else passes: STUN and ChannelData, bound or
		// not, other ports and addresses, other protocols.
		{"prefilter passes stun binding", toListener(chV4.Listener, stunMsg(0, 20), nil), onRC0, xdpPass, nil, PassNotChannelData},
		{"prefilter passes stun with attributes", toListener(chV6.Listener, stunMsg(12, 32), nil), onRC0, xdpPass, nil, PassNotChannelData},
		{"prefilter passes unbound channeldata", toListener(chV4.Listener, channelData(0x4abc, d5, []byte{0, 0, 0}), nil), onRC0, xdpPass, nil, PassNoEntry},
		{"prefilter passes empty channeldata", toListener(chV4.Listener, channelData(0x7fff, nil, nil), nil), onRC0, xdpPass, nil, PassNoEntry},
		{"prefilter passes another port", toListener(notListener, []byte{0xff}, nil), onRC0, xdpPass, nil, PassNotChannelData},
		{"prefilter passes another address", toListener(ap("198.18.0.3:3478"), []byte{0xff}, nil), onRC0, xdpPass, nil, PassNotChannelData},
		{"prefilter passes peer traffic to a relay port", p2cIn(Channel{Peer: ap("198.18.1.1:1"), Relay: chV4.Relay}, []byte{0xff}, nil), onRP0, xdpPass, nil, PassNotChannelData},
		{"prefilter passes tcp", toListener(chV4.Listener, []byte{0xff}, func(f *frameSpec) { f.proto = 6 }), onRC0, xdpPass, nil, PassOther},
		{"prefilter passes fragments", toListener(chV4.Listener, []byte{0xff}, func(f *frameSpec) { f.fragOff = 0x2000 }), onRC0, xdpPass, nil, PassOther},
		{"prefilter passes a truncated frame", toListener(chV4.Listener, []byte{0xff, 1, 2, 3, 4, 5}, nil)[:14+20+8+2], onRC0, xdpPass, nil, PassMalformed},
	}
}

// notListener is the listener's address on a port that is no listener.
var notListener = ap("198.18.0.2:3479")

// toListener is a UDP datagram with payload p from a client to dst.
func toListener(dst netip.AddrPort, p []byte, mod func(*frameSpec)) []byte {
	src := ap("198.18.0.1:50100")
	if dst.Addr().Is6() {
		src = ap("[2001:2::1]:50100")
	}
	if dst.Addr() == chVlan4.Listener.Addr() {
		src = ap("198.18.2.1:50100")
	} else if dst.Addr() == chVlan6.Listener.Addr() {
		src = ap("[2001:2:0:2::1]:50100")
	}
	f := frameSpec{dstMAC: macRC0, srcMAC: macCli, src: src, dst: dst, payload: append([]byte(nil), p...)}
	if mod != nil {
		mod(&f)
	}
	return f.build()
}

// stunMsg is a total-byte STUN Binding request header with message length
// field msgLen (RFC 8489 section 5) and filler bytes.
func stunMsg(msgLen, total int) []byte {
	b := make([]byte, max(total, 8))
	binary.BigEndian.PutUint16(b[0:], 0x0001)
	binary.BigEndian.PutUint16(b[2:], uint16(msgLen))
	binary.BigEndian.PutUint32(b[4:], 0x2112A442)
	for i := 8; i < len(b); i++ {
		b[i] = byte(i)
	}
	return b[:total]
}

func TestGoldenPackets(t *testing.T) {
	e := newProgEnv(t, 64)
	installGolden(t, e.x)
	for _, tc := range goldenCases() {
		t.Run(tc.name, func(t *testing.T) {
			before, err := e.x.Counters()
			if err != nil {
				t.Fatal(err)
			}
			in := append([]byte(nil), tc.in...)
			ret, out, err := e.run(e.x.Program(), in, tc.ingress(e))
			if err != nil {
				t.Fatal(err)
			}
			if ret == xdpAborted || ret == xdpDrop && tc.ret != xdpDrop {
				t.Fatalf("program returned %d: it drops only in the pre-filter", ret)
			}
			if ret != tc.ret {
				t.Fatalf("return %d, want %d", ret, tc.ret)
			}
			want := tc.want
			if want == nil {
				want = tc.in
			}
			if ret == xdpDrop {
				// A dropped frame is judged by the userspace
				// classification of its payload.
				checkPrefilterDrop(t, tc.in)
			} else if !bytes.Equal(out, want) {
				t.Fatalf("output differs\n got %s\nwant %s", hex.EncodeToString(out), hex.EncodeToString(want))
			}
			if tc.ret != xdpPass {
				if err := verifyChecksums(out); err != nil {
					t.Fatalf("output checksum: %v", err)
				}
			}
			after, err := e.x.Counters()
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < NumCounters; i++ {
				c := Counter(i)
				if c == FwdToPeerBytes || c == FwdToClientBytes || c == FwdHairpinBytes {
					continue
				}
				d := after.Get(c) - before.Get(c)
				wantD := uint64(0)
				if c == tc.counter {
					wantD = 1
				}
				if d != wantD {
					t.Errorf("counter %s moved by %d, want %d", c, d, wantD)
				}
			}
		})
	}
}

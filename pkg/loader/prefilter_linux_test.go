package loader

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/hybridrelay/hybridrelay/internal/turnproto"
)

// udpDatagram parses frame as the stack would before delivering it to a
// UDP socket: one optional 802.1Q/802.1ad tag, IPv4 without options or
// fragmentation with a correct header checksum, or IPv6 without extension
// headers, and a UDP length that is the IP payload's. ok is false for
// anything the stack would not deliver as one datagram.
func udpDatagram(frame []byte) (src, dst netip.AddrPort, payload []byte, ok bool) {
	if len(frame) < 14 {
		return
	}
	off := 12
	et := binary.BigEndian.Uint16(frame[off:])
	off += 2
	if et == 0x8100 || et == 0x88a8 {
		if len(frame) < off+4 {
			return
		}
		et = binary.BigEndian.Uint16(frame[off+2:])
		off += 4
	}
	var s, d netip.Addr
	var l4 []byte
	switch et {
	case 0x0800:
		ip := frame[off:]
		if len(ip) < 20 || ip[0] != 0x45 || ip[9] != 17 || binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 || csumFull(ip[:20]) != 0 {
			return
		}
		tot := int(binary.BigEndian.Uint16(ip[2:]))
		if tot < 28 || tot > len(ip) {
			return
		}
		s, d = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
		l4 = ip[20:tot]
	case 0x86dd:
		ip := frame[off:]
		if len(ip) < 40 || ip[0]>>4 != 6 || ip[6] != 17 {
			return
		}
		plen := int(binary.BigEndian.Uint16(ip[4:]))
		if plen < 8 || 40+plen > len(ip) {
			return
		}
		s, d = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
		l4 = ip[40 : 40+plen]
		if binary.BigEndian.Uint16(l4[6:]) == 0 {
			return // RFC 8200 section 8.1: the stack drops it
		}
	default:
		return
	}
	if int(binary.BigEndian.Uint16(l4[4:])) != len(l4) {
		return
	}
	src = netip.AddrPortFrom(s, binary.BigEndian.Uint16(l4[0:]))
	dst = netip.AddrPortFrom(d, binary.BigEndian.Uint16(l4[2:]))
	return src, dst, l4[8:], true
}

// prefilterReason is the drop counter of each framing the server discards.
var prefilterReason = map[turnproto.Framing]Counter{
	turnproto.FramingShort:             DropPrefilterShort,
	turnproto.FramingNotTURN:           DropPrefilterNotTURN,
	turnproto.FramingSTUNLength:        DropPrefilterSTUNLength,
	turnproto.FramingChannelDataLength: DropPrefilterChannelDataLength,
}

// checkPrefilterDrop fails unless a frame the program dropped is a UDP
// datagram to one of goldenListeners whose payload the server discards by
// its framing (turnproto.ClassifyDatagram, which pkg/control's listener
// handler uses and its tests hold to: every datagram it rejects is
// discarded without an answer). It returns the framing.
func checkPrefilterDrop(t testing.TB, frame []byte) turnproto.Framing {
	t.Helper()
	_, dst, payload, ok := udpDatagram(frame)
	if !ok {
		t.Fatalf("dropped a frame that is not one UDP datagram: %x", frame)
	}
	if !slices.Contains(goldenListeners, dst) {
		t.Fatalf("dropped a datagram to %s, not a listener: %x", dst, frame)
	}
	f := turnproto.ClassifyDatagram(payload)
	if f.Handled() {
		t.Fatalf("dropped a datagram userspace handles (%s): %x", f, payload)
	}
	return f
}

// movedCounter is the one counter that moved between two snapshots,
// ignoring the byte counters; -1 if none or several did.
func movedCounter(before, after Counters) Counter {
	moved := Counter(-1)
	for i := 0; i < NumCounters; i++ {
		c := Counter(i)
		if c == FwdToPeerBytes || c == FwdToClientBytes || c == FwdHairpinBytes {
			continue
		}
		if d := after.Get(c) - before.Get(c); d != 0 {
			if d != 1 || moved >= 0 {
				return -1
			}
			moved = c
		}
	}
	return moved
}

// datagramPayloads are UDP payloads of every framing, the edges of each
// length rule among them, and random ones.
func datagramPayloads(rng *rand.Rand, n int) [][]byte {
	cd := func(ch uint16, l, total int) []byte {
		b := make([]byte, total)
		binary.BigEndian.PutUint16(b[0:], ch)
		binary.BigEndian.PutUint16(b[2:], uint16(l))
		for i := 4; i < total; i++ {
			b[i] = byte(rng.IntN(256))
		}
		return b
	}
	out := [][]byte{
		{}, {0}, {0x40, 0, 0}, {0xff, 0xff, 0xff},
		stunMsg(0, 20), stunMsg(4, 24), stunMsg(4, 20), stunMsg(0, 24), stunMsg(2, 22), stunMsg(0, 19), stunMsg(0, 4),
		stunMsg(65532, 20), cd(0x4000, 0, 4), cd(0x4000, 1, 4), cd(0x4000, 0, 7), cd(0x4000, 0, 8),
		cd(0x7fff, 5, 12), cd(0x7fff, 5, 13), cd(0x5000, 100, 104), cd(0x4000, 65535, 100), cd(0x4000, 1200, 1204),
		{0x80, 0, 0, 0}, {0xc0, 0, 0, 0, 1, 2, 3, 4},
	}
	for i := 0; i < n; i++ {
		switch rng.IntN(4) {
		case 0:
			b := make([]byte, rng.IntN(80))
			for j := range b {
				b[j] = byte(rng.IntN(256))
			}
			out = append(out, b)
		case 1:
			total := 20 + 4*rng.IntN(10) + rng.IntN(2)*rng.IntN(4)
			out = append(out, stunMsg(max(0, total-20+4*(rng.IntN(3)-1)+rng.IntN(2)*rng.IntN(4)), total))
		case 2:
			total := 4 + rng.IntN(60)
			out = append(out, cd(uint16(0x4000+rng.IntN(0x4000)), max(0, total-4+rng.IntN(11)-6), total))
		case 3:
			b := stunMsg(4, 24)
			b[4+rng.IntN(4)] ^= byte(1 + rng.IntN(255))
			out = append(out, b)
		}
	}
	return out
}

// prefilterDsts are destinations of datagrams in the golden namespace:
// the listeners (untagged and VLAN) and addresses that are not listeners.
var prefilterDsts = []struct {
	dst      netip.AddrPort
	vlan     uint16
	listener bool
}{
	{ap("198.18.0.2:3478"), 0, true},
	{ap("[2001:2::2]:3478"), 0, true},
	{ap("198.18.2.2:3478"), 100, true},
	{ap("[2001:2:0:2::2]:3478"), 100, true},
	{ap("198.18.0.2:3479"), 0, false},      // the listener's address, another port
	{ap("198.18.1.2:49152"), 0, false},     // a relay address and port (chV4's)
	{ap("198.18.1.2:49999"), 0, false},     // a relay address, an unbound port
	{ap("[2001:2:0:1::2]:3478"), 0, false}, // the listener port on another address
}

// checkPrefilterRun runs one datagram and checks the pre-filter's
// contract: to a listener from a client without a bound channel, the
// program drops exactly what the server discards by framing, counted by
// reason; anything else is never dropped; a passed frame is unmodified.
func checkPrefilterRun(t testing.TB, e *progEnv, d int, payload []byte, mutate func([]byte) []byte) {
	t.Helper()
	pd := prefilterDsts[d]
	in := toListener(pd.dst, payload, func(f *frameSpec) { f.vlan = pd.vlan })
	exact := mutate == nil
	if mutate != nil {
		in = mutate(in)
	}
	before, err := e.x.Counters()
	if err != nil {
		t.Fatal(err)
	}
	ret, out, err := e.run(e.x.Program(), append([]byte(nil), in...), e.rc0)
	if err != nil {
		t.Fatal(err)
	}
	after, err := e.x.Counters()
	if err != nil {
		t.Fatal(err)
	}
	moved := movedCounter(before, after)
	switch ret {
	case xdpDrop:
		f := checkPrefilterDrop(t, in)
		if moved != prefilterReason[f] {
			t.Fatalf("dropped %s framing, counted %s: %x", f, moved, in)
		}
	case xdpPass:
		if !bytes.Equal(out, in) {
			t.Fatalf("passed frame was modified\n in %x\nout %x", in, out)
		}
		if moved < 0 {
			t.Fatalf("pass counted no single reason: %x", in)
		}
		if exact && pd.listener {
			if f := turnproto.ClassifyDatagram(payload); !f.Handled() {
				t.Fatalf("passed a datagram to listener %s that the server discards (%s, counted %s): %x", pd.dst, f, moved, payload)
			}
		}
	default:
		t.Fatalf("return %d for a datagram from an unbound client: %x", ret, in)
	}
}

// TestPrefilterDropsOnlyWhatUserspaceDiscards is the pre-filter's proof
// on the real program (BPF_PROG_RUN): datagrams of every framing, to
// listeners and to other addresses and ports, intact and mutated (byte
// flips, truncation). Every drop is of a UDP datagram to a listener that
// the server discards (turnproto.ClassifyDatagram, see
// checkPrefilterDrop); every intact datagram to a listener the server
// would discard is dropped, with the right reason.
func TestPrefilterDropsOnlyWhatUserspaceDiscards(t *testing.T) {
	e := newProgEnv(t, 64)
	installGolden(t, e.x)
	rng := rand.New(rand.NewPCG(20261203, 9))
	payloads := datagramPayloads(rng, 1500)
	drops := map[Counter]int{}
	for i, p := range payloads {
		d := i % len(prefilterDsts)
		before, _ := e.x.Counters()
		checkPrefilterRun(t, e, d, p, nil)
		after, _ := e.x.Counters()
		drops[movedCounter(before, after)]++
		var mut func([]byte) []byte
		switch rng.IntN(3) {
		case 0:
			mut = func(b []byte) []byte { b[rng.IntN(len(b))] ^= byte(1 + rng.IntN(255)); return b }
		case 1:
			mut = func(b []byte) []byte { return b[:14+rng.IntN(len(b)-14+1)] }
		case 2:
			mut = func(b []byte) []byte { return append(b, make([]byte, 1+rng.IntN(8))...) } // Ethernet trailer
		}
		checkPrefilterRun(t, e, rng.IntN(len(prefilterDsts)), p, mut)
	}
	for _, c := range []Counter{DropPrefilterShort, DropPrefilterNotTURN, DropPrefilterSTUNLength, DropPrefilterChannelDataLength, PassNotChannelData, PassNoEntry} {
		if drops[c] == 0 {
			t.Errorf("the inputs never exercised %s", c)
		}
	}
	t.Logf("outcomes of the intact datagrams: %v", drops)
}

// TestPrefilterOff: a process loaded with the pre-filter off, re-adopting
// the pins of one that had it on, stops dropping at once (before it sets
// its listeners) and after SetListeners: every frame the pre-filter
// drops passes, unmodified. SetPrefilter turns it back on in place.
func TestPrefilterOff(t *testing.T) {
	e := newProgEnv(t, 16)
	installGolden(t, e.x)
	var dropCases []goldenCase
	for _, tc := range goldenCases() {
		if tc.ret == xdpDrop {
			dropCases = append(dropCases, tc)
		}
	}
	if len(dropCases) < 5 {
		t.Fatalf("only %d golden drop cases", len(dropCases))
	}
	if ret, _, err := e.run(e.x.Program(), dropCases[0].in, e.rc0); err != nil || ret != xdpDrop {
		t.Fatalf("with the pre-filter on: %d %v", ret, err)
	}
	dir := e.x.PinDir()
	if err := e.x.Close(); err != nil {
		t.Fatal(err)
	}
	x2, err := Load(Options{MaxChannels: 16, PinDir: dir, NetNS: "/run/netns/" + e.ns.Name})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	e.x = x2
	t.Cleanup(func() { x2.Unpin(); x2.Close() })
	ls, err := x2.Listeners()
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != len(goldenListeners) {
		t.Fatalf("re-adopted listeners %v", ls)
	}
	for _, l := range ls {
		if l.Prefilter {
			t.Fatalf("listener %s still pre-filtered with the setting off", l.Addr)
		}
	}
	base, err := x2.Counters() // re-adopted: the drop above is in them
	if err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 2; round++ {
		for _, tc := range dropCases {
			ret, out, err := e.run(x2.Program(), append([]byte(nil), tc.in...), e.rc0)
			if err != nil {
				t.Fatal(err)
			}
			if ret != xdpPass || !bytes.Equal(out, tc.in) {
				t.Fatalf("%s: return %d with the pre-filter off (round %d)", tc.name, ret, round)
			}
		}
		if err := x2.SetListeners(goldenListeners); err != nil {
			t.Fatal(err)
		}
	}
	c, err := x2.Counters()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range prefilterReason {
		if d := c.Get(r) - base.Get(r); d != 0 {
			t.Fatalf("%s counted %d with the pre-filter off", r, d)
		}
	}
	// Turned on at run time, in place.
	if err := x2.SetPrefilter(true); err != nil {
		t.Fatal(err)
	}
	for _, tc := range dropCases {
		if ret, _, err := e.run(x2.Program(), append([]byte(nil), tc.in...), e.rc0); err != nil || ret != xdpDrop {
			t.Fatalf("%s: return %d (%v) with the pre-filter turned on again", tc.name, ret, err)
		}
	}
}

// TestSetListenersRefusesWildcards: the program sees destination addresses,
// so a wildcard or portless listener is an error, not a silent no-op.
func TestSetListenersRefusesWildcards(t *testing.T) {
	e := newProgEnv(t, 16)
	for _, bad := range []netip.AddrPort{ap("0.0.0.0:3478"), ap("[::]:3478"), ap("198.18.0.2:0"), {}} {
		if err := e.x.SetListeners([]netip.AddrPort{bad}); err == nil {
			t.Errorf("SetListeners(%s) accepted", bad)
		}
	}
	if err := e.x.SetListeners([]netip.AddrPort{ap("[::ffff:198.18.0.2]:3478"), ap("[2001:2::2]:3478")}); err != nil {
		t.Fatal(err)
	}
	ls, _ := e.x.Listeners()
	if len(ls) != 2 || ls[0].Addr != ap("198.18.0.2:3478") || !ls[0].Prefilter {
		t.Fatalf("listeners %v", ls)
	}
	if err := e.x.SetListeners(nil); err != nil {
		t.Fatal(err)
	}
	if ls, _ := e.x.Listeners(); len(ls) != 0 {
		t.Fatalf("listeners after clearing: %v", ls)
	}
}

// FuzzPrefilter is checkPrefilterRun on arbitrary UDP payloads to every
// destination of prefilterDsts, with the real program.
func FuzzPrefilter(f *testing.F) {
	e := newProgEnvPin(f, 64, false)
	installGolden(f, e.x)
	for i, p := range datagramPayloads(rand.New(rand.NewPCG(3, 4)), 40) {
		f.Add(p, byte(i))
	}
	f.Fuzz(func(t *testing.T, payload []byte, sel byte) {
		if len(payload) > 1400 {
			return // the frame must fit BPF_PROG_RUN's buffer and the MTU
		}
		checkPrefilterRun(t, e, int(sel)%len(prefilterDsts), payload, nil)
	})
}

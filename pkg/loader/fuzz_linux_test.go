package loader

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
)

// FuzzXDPProgram feeds arbitrary frames to the program (BPF_PROG_RUN, in
// the golden-test namespace with the golden channels and listeners
// installed). Whatever the frame: the program never aborts, drops only
// what the listener pre-filter may (checkPrefilterDrop), a passed frame
// leaves unmodified, and a frame is only forwarded if a live channel
// matches it.
func FuzzXDPProgram(f *testing.F) {
	e := newProgEnvPin(f, 64, false)
	installGolden(f, e.x)
	for _, tc := range goldenCases() {
		f.Add(tc.in, tc.ingress(e) == e.rp0)
	}
	live := map[[2]netip.AddrPort]uint16{} // (client, listener) -> channel
	livePeer := map[[2]netip.AddrPort]bool{}
	for _, c := range goldenLive {
		live[[2]netip.AddrPort{c.Client, c.Listener}] = c.Number
		livePeer[[2]netip.AddrPort{c.Peer, c.Relay}] = true
	}
	f.Fuzz(func(t *testing.T, frame []byte, peerSide bool) {
		if len(frame) < 14 || len(frame) > 3000 {
			return // BPF_PROG_RUN refuses these sizes itself
		}
		ingress := e.rc0
		if peerSide {
			ingress = e.rp0
		}
		in := append([]byte(nil), frame...)
		ret, out, err := e.run(e.x.Program(), in, ingress)
		if err != nil {
			t.Fatal(err)
		}
		switch ret {
		case xdpPass:
			if !bytes.Equal(out, frame) {
				t.Fatalf("passed frame was modified\n in %x\nout %x", frame, out)
			}
		case xdpTX, xdpRedirect:
			p := parseFace(frame)
			if !p.ok {
				t.Fatalf("forwarded an unparsable frame %x", frame)
			}
			ok := livePeer[[2]netip.AddrPort{p.src, p.dst}]
			if ch, found := live[[2]netip.AddrPort{p.src, p.dst}]; found && len(p.payload) >= 4 && binary.BigEndian.Uint16(p.payload) == ch {
				ok = true
			}
			if !ok {
				t.Fatalf("forwarded (%d) a frame without a live entry: %x", ret, frame)
			}
			if verifyChecksums(frame) == nil {
				if err := verifyChecksums(out); err != nil {
					t.Fatalf("forwarded frame: %v\n in %x\nout %x", err, frame, out)
				}
			}
		case xdpDrop:
			checkPrefilterDrop(t, frame)
		default:
			t.Fatalf("return %d: never abort", ret)
		}
	})
}

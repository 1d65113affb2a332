package loader

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"
	"unsafe"
)

// TestKeysAreWireOrder pins the byte layout of the map keys to what the
// program reads from packets: ports and channel numbers in network byte
// order, IPv4 addresses in the first four bytes. (Ports stored in host
// order silently disabled one direction of a production relay.)
func TestKeysAreWireOrder(t *testing.T) {
	c := Channel{
		Client:   netip.MustParseAddrPort("198.18.0.1:3478"),
		Listener: netip.MustParseAddrPort("198.18.0.2:5349"),
		Relay:    netip.MustParseAddrPort("198.18.1.2:49152"),
		Peer:     netip.MustParseAddrPort("198.18.1.1:40000"),
		Number:   0x4001,
	}
	ck, cv, pk, pv, err := c.keys(7, 123)
	if err != nil {
		t.Fatal(err)
	}
	raw := func(p unsafe.Pointer, n uintptr) []byte { return unsafe.Slice((*byte)(p), n) }
	kb := raw(unsafe.Pointer(&ck), unsafe.Sizeof(ck))
	if len(kb) != 40 {
		t.Fatalf("c2p key is %d bytes, bpf/structs.h says 40", len(kb))
	}
	want := make([]byte, 0, 40)
	want = append(want, 198, 18, 0, 1)
	want = append(want, make([]byte, 12)...)
	want = append(want, 198, 18, 0, 2)
	want = append(want, make([]byte, 12)...)
	want = binary.BigEndian.AppendUint16(want, 3478)
	want = binary.BigEndian.AppendUint16(want, 5349)
	want = binary.BigEndian.AppendUint16(want, 0x4001)
	want = append(want, familyV4, 0)
	if !bytes.Equal(kb, want) {
		t.Fatalf("c2p key bytes\n got %x\nwant %x", kb, want)
	}
	pb := raw(unsafe.Pointer(&pk), unsafe.Sizeof(pk))
	pwant := append([]byte{198, 18, 1, 1}, make([]byte, 12)...)
	pwant = append(pwant, 198, 18, 1, 2)
	pwant = append(pwant, make([]byte, 12)...)
	pwant = binary.BigEndian.AppendUint16(pwant, 40000)
	pwant = binary.BigEndian.AppendUint16(pwant, 49152)
	pwant = append(pwant, familyV4, 0, 0, 0)
	if !bytes.Equal(pb, pwant) {
		t.Fatalf("p2c key bytes\n got %x\nwant %x", pb, pwant)
	}
	// Values carry the rewrite in the same order.
	if got := raw(unsafe.Pointer(&cv.PeerPort), 2); !bytes.Equal(got, []byte{0x9c, 0x40}) {
		t.Fatalf("peer port stored as %x", got)
	}
	if got := raw(unsafe.Pointer(&pv.Channel), 2); !bytes.Equal(got, []byte{0x40, 0x01}) {
		t.Fatalf("channel stored as %x", got)
	}
	if cv.Slot != 7 || pv.Slot != 7 || cv.ExpiresNs != 123 || pv.ExpiresNs != 123 {
		t.Fatalf("slot/expiry %+v %+v", cv, pv)
	}
}

func TestKeysRoundTrip(t *testing.T) {
	exp := time.Now().Add(time.Minute)
	for _, c := range []Channel{
		{Client: netip.MustParseAddrPort("198.18.0.1:50000"), Listener: netip.MustParseAddrPort("198.18.0.2:3478"),
			Relay: netip.MustParseAddrPort("198.18.1.2:49152"), Peer: netip.MustParseAddrPort("198.18.1.1:1"), Number: 0x4000, DontFragment: true},
		{Client: netip.MustParseAddrPort("[2001:2::1]:50000"), Listener: netip.MustParseAddrPort("[2001:2::2]:3478"),
			Relay: netip.MustParseAddrPort("[2001:2:0:1::2]:65535"), Peer: netip.MustParseAddrPort("[2001:2:0:1::1]:40000"), Number: 0x7FFF},
	} {
		c.Expires = exp
		ck, cv, _, _, err := c.keys(0, kernelExpiry(exp))
		if err != nil {
			t.Fatal(err)
		}
		back := channelFrom(ck, cv)
		if back.Client != c.Client || back.Listener != c.Listener || back.Relay != c.Relay || back.Peer != c.Peer ||
			back.Number != c.Number || back.DontFragment != c.DontFragment {
			t.Fatalf("round trip %+v -> %+v", c, back)
		}
		if d := back.Expires.Sub(exp); d < -time.Millisecond || d > time.Millisecond {
			t.Fatalf("expiry off by %v", d)
		}
	}
}

func TestKeysRefuseWhatTheProgramCannotForward(t *testing.T) {
	v4 := netip.MustParseAddrPort("198.18.0.1:1")
	v6 := netip.MustParseAddrPort("[2001:2::1]:1")
	mapped := netip.AddrPortFrom(netip.MustParseAddr("::ffff:198.18.0.9"), 9)
	for _, tc := range []struct {
		name string
		c    Channel
		ok   bool
	}{
		{"v4", Channel{Client: v4, Listener: v4, Relay: v4, Peer: v4, Number: 0x4000}, true},
		{"mapped client counts as v4", Channel{Client: mapped, Listener: v4, Relay: v4, Peer: v4, Number: 0x4000}, true},
		{"mixed families", Channel{Client: v6, Listener: v6, Relay: v4, Peer: v4, Number: 0x4000}, false},
		{"channel below range", Channel{Client: v4, Listener: v4, Relay: v4, Peer: v4, Number: 0x3FFF}, false},
		{"channel above range", Channel{Client: v4, Listener: v4, Relay: v4, Peer: v4, Number: 0x8000}, false},
		{"missing peer", Channel{Client: v4, Listener: v4, Relay: v4, Number: 0x4000}, false},
	} {
		_, _, _, _, err := tc.c.keys(0, 0)
		if tc.ok && err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if !tc.ok && !errors.Is(err, ErrUnsupported) {
			t.Errorf("%s: %v, want ErrUnsupported", tc.name, err)
		}
	}
}

func TestMonotonicNanos(t *testing.T) {
	if MonotonicNanos(time.Time{}) != 0 {
		t.Fatal("zero time is not 0 (already expired)")
	}
	now := MonotonicNanos(time.Now())
	later := MonotonicNanos(time.Now().Add(time.Second))
	if d := int64(later - now); d < int64(999*time.Millisecond) || d > int64(1001*time.Millisecond) {
		t.Fatalf("one second is %d ns", d)
	}
	if TimeFromMonotonic(0) != (time.Time{}) {
		t.Fatal("0 does not convert back to the zero time")
	}
}

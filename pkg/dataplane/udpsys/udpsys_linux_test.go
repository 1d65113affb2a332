package udpsys

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func unsafePointer(b []byte) unsafe.Pointer { return unsafe.Pointer(&b[0]) }

func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func cmsg(level, typ int32, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafePointer(b))
	h.Level, h.Type = level, typ
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

func TestParseRxCmsgs(t *testing.T) {
	gro := cmsg(unix.SOL_UDP, unix.UDP_GRO, u32(1200))
	ovfl := cmsg(unix.SOL_SOCKET, unix.SO_RXQ_OVFL, u32(7))
	other := cmsg(unix.SOL_IP, unix.IP_TOS, []byte{1})
	tests := []struct {
		name     string
		in       []byte
		seg      int
		drops    uint32
		hasDrops bool
	}{
		{"none", nil, 0, 0, false},
		{"gro", gro, 1200, 0, false},
		{"ovfl", ovfl, 0, 7, true},
		{"both and an unknown one", append(append(append([]byte{}, other...), ovfl...), gro...), 1200, 7, true},
		{"truncated header", gro[:8], 0, 0, false},
		{"length past the end", append(append([]byte{}, ovfl...), gro[:unix.CmsgLen(0)+2]...), 0, 7, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seg, drops, has := ParseRxCmsgs(tt.in)
			if seg != tt.seg || drops != tt.drops || has != tt.hasDrops {
				t.Fatalf("got %d %d %v, want %d %d %v", seg, drops, has, tt.seg, tt.drops, tt.hasDrops)
			}
		})
	}
}

// FuzzParseRxCmsgs: any control buffer parses without panicking.
func FuzzParseRxCmsgs(f *testing.F) {
	f.Add(cmsg(unix.SOL_UDP, unix.UDP_GRO, u32(1200)))
	f.Add(append(cmsg(unix.SOL_SOCKET, unix.SO_RXQ_OVFL, u32(1)), 0xff, 0xff))
	f.Add(cmsg(unix.SOL_SOCKET, unix.SO_TIMESTAMPNS_NEW, make([]byte, 16)))
	f.Fuzz(func(t *testing.T, b []byte) {
		seg, drops, has, _ := ParseRxCmsgsStamp(b)
		if s2, d2, h2 := ParseRxCmsgs(b); s2 != seg || d2 != drops || h2 != has {
			t.Fatalf("ParseRxCmsgs and ParseRxCmsgsStamp disagree on %x", b)
		}
	})
}

func TestSockaddrRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		family int
		dst    string
		ok     bool
		back   string
	}{
		{unix.AF_INET, "198.18.1.1:3478", true, "198.18.1.1:3478"},
		{unix.AF_INET, "[::ffff:198.18.1.1]:3478", true, "198.18.1.1:3478"},
		{unix.AF_INET, "[2001:2::1]:3478", false, ""},
		{unix.AF_INET6, "[2001:2::1]:65535", true, "[2001:2::1]:65535"},
		{unix.AF_INET6, "198.18.1.1:1", true, "198.18.1.1:1"}, // sent as ::ffff:198.18.1.1, read back unmapped
	} {
		var b Sockaddr
		n := PutSockaddr(&b, tc.family, netip.MustParseAddrPort(tc.dst))
		if (n != 0) != tc.ok {
			t.Fatalf("%s on family %d: length %d", tc.dst, tc.family, n)
		}
		if tc.ok {
			if got := GetSockaddr(&b); got.String() != tc.back {
				t.Fatalf("%s: read back %v, want %s", tc.dst, got, tc.back)
			}
		}
	}
	var b Sockaddr
	if PutSockaddr(&b, unix.AF_INET, netip.AddrPort{}) != 0 {
		t.Fatal("invalid address encoded")
	}
}

func timespec(sec, nsec int64) []byte {
	b := make([]byte, 16)
	binary.NativeEndian.PutUint64(b, uint64(sec))
	binary.NativeEndian.PutUint64(b[8:], uint64(nsec))
	return b
}

func TestParseRxTimestamp(t *testing.T) {
	const sec, nsec = 1780000000, 123456789
	want := int64(sec)*1e9 + nsec
	gro := cmsg(unix.SOL_UDP, unix.UDP_GRO, u32(1200))
	for _, typ := range []int32{unix.SO_TIMESTAMPNS_NEW, unix.SO_TIMESTAMPNS_OLD} {
		ts := cmsg(unix.SOL_SOCKET, typ, timespec(sec, nsec))
		seg, _, _, stamp := ParseRxCmsgsStamp(append(append([]byte{}, gro...), ts...))
		if seg != 1200 || stamp != want {
			t.Errorf("type %d: seg %d stamp %d, want 1200 %d", typ, seg, stamp, want)
		}
		if _, _, _, stamp := ParseRxCmsgsStamp(ts[:len(ts)-8]); stamp != 0 {
			t.Errorf("type %d: a cut timestamp parsed as %d", typ, stamp)
		}
	}
	// A timestamp at another level is not ours.
	if _, _, _, stamp := ParseRxCmsgsStamp(cmsg(unix.SOL_UDP, unix.SO_TIMESTAMPNS_NEW, timespec(sec, nsec))); stamp != 0 {
		t.Errorf("SOL_UDP cmsg parsed as a timestamp: %d", stamp)
	}
}

func TestSegments(t *testing.T) {
	for _, tt := range []struct{ ln, seg, want int }{
		{100, 0, 1}, {100, 100, 1}, {100, 200, 1}, {300, 100, 3}, {301, 100, 4}, {0, 0, 1},
	} {
		if got := Segments(tt.ln, tt.seg); got != tt.want {
			t.Errorf("Segments(%d, %d) = %d, want %d", tt.ln, tt.seg, got, tt.want)
		}
	}
}

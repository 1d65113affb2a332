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
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseRxCmsgs(b)
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

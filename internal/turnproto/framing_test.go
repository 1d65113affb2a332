package turnproto

import (
	"encoding/binary"
	"testing"
)

func stun(msgLen, total int) []byte {
	b := make([]byte, total)
	binary.BigEndian.PutUint16(b[0:], 0x0001)
	binary.BigEndian.PutUint16(b[2:], uint16(msgLen))
	if total >= 8 {
		binary.BigEndian.PutUint32(b[4:], MagicCookie)
	}
	return b
}

func chanData(ch uint16, n, total int) []byte {
	b := make([]byte, total)
	binary.BigEndian.PutUint16(b[0:], ch)
	binary.BigEndian.PutUint16(b[2:], uint16(n))
	return b
}

func TestClassifyDatagram(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    []byte
		want Framing
	}{
		{"empty", nil, FramingShort},
		{"three bytes", []byte{0x40, 0, 0}, FramingShort},
		{"stun header cut", stun(0, 19), FramingShort},
		{"stun binding", stun(0, 20), FramingSTUN},
		{"stun with attributes", stun(8, 28), FramingSTUN},
		{"stun length short", stun(4, 28), FramingSTUNLength},
		{"stun length long", stun(12, 28), FramingSTUNLength},
		{"stun length not a multiple of 4", stun(2, 22), FramingSTUNLength},
		{"no magic cookie", append([]byte{0, 1, 0, 0, 1, 2, 3, 4}, make([]byte, 12)...), FramingNotTURN},
		{"first bits 10", chanData(0x8000, 0, 4), FramingNotTURN},
		{"first bits 11", chanData(0xC000, 0, 4), FramingNotTURN},
		{"channeldata empty", chanData(0x4000, 0, 4), FramingChannelData},
		{"channeldata 3 padding bytes", chanData(0x4FFF, 1, 8), FramingChannelData},
		{"channeldata 4 bytes after", chanData(0x4FFF, 1, 9), FramingChannelDataLength},
		{"channeldata rfc 5766 range", chanData(0x7FFF, 10, 14), FramingChannelData},
		{"channeldata length beyond", chanData(0x4000, 11, 14), FramingChannelDataLength},
	} {
		if got := ClassifyDatagram(tc.p); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
		if got := ClassifyDatagram(tc.p).Handled(); got != (tc.want == FramingSTUN || tc.want == FramingChannelData) {
			t.Errorf("%s: Handled %v", tc.name, got)
		}
	}
}

package turnproto

import "encoding/binary"

// Framing is what a UDP datagram arriving on a listener is, judged by its
// framing alone, the way the server demultiplexes it (RFC 8656 section 12:
// the first two bits are 00 for STUN, 01 for ChannelData). Only FramingSTUN
// and FramingChannelData can be handled; the server discards every other
// kind, and so may the XDP pre-filter (bpf/parse.h mirrors this function,
// and pkg/loader's tests prove the two agree).
type Framing int

const (
	// FramingSTUN: a STUN header whose length matches the datagram (RFC
	// 8489 section 6.3); the message itself is not decoded.
	FramingSTUN Framing = iota
	// FramingChannelData: a ChannelData header whose length field fits
	// the datagram with at most MaxChannelDataPad bytes after the data
	// (RFC 8656 sections 12.4 and 12.5).
	FramingChannelData
	// FramingShort: fewer than 4 bytes, or a STUN header cut short.
	FramingShort
	// FramingNotTURN: the first two bits are 10 or 11, or 00 without the
	// magic cookie (RFC 8489 section 5): neither STUN nor ChannelData.
	FramingNotTURN
	// FramingSTUNLength: a STUN header whose length field is not a
	// multiple of 4 or does not match the datagram.
	FramingSTUNLength
	// FramingChannelDataLength: a ChannelData header claiming more data
	// than the datagram has, or followed by more than padding.
	FramingChannelDataLength
)

// Handled reports whether the server goes on to parse a datagram of this
// framing (every other kind is discarded as malformed).
func (f Framing) Handled() bool { return f == FramingSTUN || f == FramingChannelData }

func (f Framing) String() string {
	switch f {
	case FramingSTUN:
		return "stun"
	case FramingChannelData:
		return "channeldata"
	case FramingShort:
		return "short"
	case FramingNotTURN:
		return "not_turn"
	case FramingSTUNLength:
		return "stun_length"
	case FramingChannelDataLength:
		return "channeldata_length"
	}
	return "framing(?)"
}

// ClassifyDatagram says what the UDP payload p is by its framing.
func ClassifyDatagram(p []byte) Framing {
	if len(p) < ChannelDataHeaderSize {
		return FramingShort
	}
	switch p[0] >> 6 {
	case 0:
		if len(p) < HeaderSize {
			return FramingShort
		}
		if binary.BigEndian.Uint32(p[MagicCookieOff:]) != MagicCookie {
			return FramingNotTURN
		}
		if !IsSTUNFrame(p) {
			return FramingSTUNLength
		}
		return FramingSTUN
	case 1:
		if _, ok := ChannelDataLen(p); !ok {
			return FramingChannelDataLength
		}
		return FramingChannelData
	}
	return FramingNotTURN
}

// IsSTUNFrame reports whether p passes RFC 8489 section 6.3's first checks
// on a datagram: at least a header, the two top bits zero, the magic
// cookie, and a message length that is a multiple of 4 and equals the
// rest of the datagram.
func IsSTUNFrame(p []byte) bool {
	if len(p) < HeaderSize || p[0]>>6 != 0 || binary.BigEndian.Uint32(p[MagicCookieOff:]) != MagicCookie {
		return false
	}
	n := int(binary.BigEndian.Uint16(p[2:4]))
	return n%4 == 0 && HeaderSize+n == len(p)
}

// ChannelDataLen returns the data length of the ChannelData message p
// (RFC 8656 section 12.4) if the length field fits p and at most
// MaxChannelDataPad bytes follow the data (over UDP the padding is
// optional, section 12.5). The channel number is not checked.
func ChannelDataLen(p []byte) (int, bool) {
	if len(p) < ChannelDataHeaderSize {
		return 0, false
	}
	n := int(binary.BigEndian.Uint16(p[2:4]))
	trail := len(p) - ChannelDataHeaderSize - n
	if trail < 0 || trail > MaxChannelDataPad {
		return 0, false
	}
	return n, true
}

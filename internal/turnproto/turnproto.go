package turnproto

// STUN message header (RFC 8489 section 5): the fixed magic cookie at
// offset 4 and the 20-byte header size.
const (
	MagicCookie    = 0x2112A442
	HeaderSize     = 20
	MagicCookieOff = 4
)

// Channel number ranges. RFC 8656 section 12 allows 0x4000-0x4FFF; RFC 5766
// section 11 allowed 0x4000-0x7FFF, and RFC 5766 clients still pick from
// the wider range (coturn's turnutils_uclient does). The first two bits 01
// tell ChannelData from STUN (00), so the wider range is also every number
// a ChannelData message can carry.
const (
	MinChannel        uint16 = 0x4000
	MaxChannel        uint16 = 0x4FFF
	MaxChannelRFC5766 uint16 = 0x7FFF
)

// ChannelData framing (RFC 8656 section 12.4): a 4-byte header, channel
// number and data length. Over UDP the padding to a multiple of four is
// optional (section 12.5), so at most MaxChannelDataPad bytes may follow
// the data.
const (
	ChannelDataHeaderSize = 4
	MaxChannelDataPad     = 3
)

// Address family codes of REQUESTED-ADDRESS-FAMILY and
// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 sections 18.8 and 18.11).
const (
	FamilyIPv4 byte = 0x01
	FamilyIPv6 byte = 0x02
)

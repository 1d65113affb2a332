package turnclient

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/internal/turnproto"
)

// Channel numbers a client may bind: 0x4000 through 0x4FFF (RFC 8656
// section 12).
const (
	MinChannel = turnproto.MinChannel
	MaxChannel = turnproto.MaxChannel
)

// ChannelDataHeaderSize is the 4-byte ChannelData header: channel number and
// length (RFC 8656 section 12.4).
const ChannelDataHeaderSize = turnproto.ChannelDataHeaderSize

// Credentials are long-term credentials (RFC 8489 section 9.2).
type Credentials struct {
	Username string
	Password string
}

// RESTCredentials returns the credentials of the TURN REST API scheme that
// coturn calls static-auth-secret (draft-uberti-behave-turn-rest): the
// username is "<expiry unix seconds>:<user>" and the password is
// base64(HMAC-SHA1(secret, username)). An empty user gives the bare
// timestamp as username.
func RESTCredentials(secret, user string, expiry time.Time) Credentials {
	name := strconv.FormatInt(expiry.Unix(), 10)
	if user != "" {
		name += ":" + user
	}
	mac := hmac.New(sha1.New, []byte(secret))
	mac.Write([]byte(name))
	return Credentials{Username: name, Password: base64.StdEncoding.EncodeToString(mac.Sum(nil))}
}

// ValidChannel reports whether ch is a channel number a client may bind.
func ValidChannel(ch uint16) bool { return ch >= MinChannel && ch <= MaxChannel }

// AppendChannelData appends a ChannelData message (RFC 8656 section 12.4)
// carrying data on channel ch. Over UDP the padding to a multiple of four
// is optional (section 12.5) and is not added.
func AppendChannelData(dst []byte, ch uint16, data []byte) []byte {
	dst = binary.BigEndian.AppendUint16(dst, ch)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(data)))
	return append(dst, data...)
}

// PutChannelDataHeader writes the 4-byte ChannelData header for a payload of
// n bytes into b, which must hold at least 4 bytes.
func PutChannelDataHeader(b []byte, ch uint16, n int) {
	binary.BigEndian.PutUint16(b[0:2], ch)
	binary.BigEndian.PutUint16(b[2:4], uint16(n))
}

// Errors returned by the parsers.
var (
	ErrNotChannelData = errors.New("not a channeldata message")
	ErrTruncated      = errors.New("truncated message")
)

// IsChannelData reports whether b starts like a ChannelData message: the
// first two bits are 0b01 (RFC 8656 section 12: channel numbers
// 0x4000-0x7FFF; STUN messages start with 0b00).
func IsChannelData(b []byte) bool { return len(b) >= 1 && b[0]&0xC0 == 0x40 }

// ParseChannelData returns the channel number and the application data of a
// ChannelData message. Trailing padding (and anything else past the length
// field) is ignored, as section 12.5 requires of receivers.
func ParseChannelData(b []byte) (ch uint16, data []byte, err error) {
	if len(b) < ChannelDataHeaderSize {
		return 0, nil, ErrTruncated
	}
	ch = binary.BigEndian.Uint16(b[0:2])
	if !ValidChannel(ch) {
		return 0, nil, fmt.Errorf("channel 0x%04x: %w", ch, ErrNotChannelData)
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	if len(b)-ChannelDataHeaderSize < n {
		return 0, nil, fmt.Errorf("channeldata length %d, have %d: %w", n, len(b)-ChannelDataHeaderSize, ErrTruncated)
	}
	return ch, b[ChannelDataHeaderSize : ChannelDataHeaderSize+n], nil
}

// xorPeer converts a netip.AddrPort to pion's attribute type.
func xorAddr(ap netip.AddrPort) stun.XORMappedAddress {
	a := ap.Addr().Unmap()
	return stun.XORMappedAddress{IP: net.IP(a.AsSlice()), Port: int(ap.Port())}
}

func addrPortOf(x stun.XORMappedAddress) (netip.AddrPort, error) {
	a, ok := netip.AddrFromSlice(x.IP)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("bad address length %d", len(x.IP))
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(x.Port)), nil
}

// BuildSendIndication encodes a Send indication (RFC 8656 section 11.1)
// carrying data to peer. Indications carry no integrity.
func BuildSendIndication(peer netip.AddrPort, data []byte) (*stun.Message, error) {
	m := stun.New()
	m.TransactionID = stun.NewTransactionID()
	m.SetType(stun.NewType(stun.MethodSend, stun.ClassIndication))
	m.WriteHeader()
	if err := xorAddr(peer).AddToAs(m, stun.AttrXORPeerAddress); err != nil {
		return nil, fmt.Errorf("xor-peer-address: %w", err)
	}
	m.Add(stun.AttrData, data)
	m.WriteHeader()
	return m, nil
}

// SendIndicationOverhead is the size of a Send indication minus its data
// for a peer of the given family: 20-byte header, XOR-PEER-ADDRESS (12 or
// 24 bytes) and the DATA attribute header (4 bytes, plus padding to 4).
func SendIndicationOverhead(ipv6 bool) int {
	if ipv6 {
		return 20 + 24 + 4
	}
	return 20 + 12 + 4
}

// ParseDataIndication decodes a Data indication (RFC 8656 section 11.4)
// and returns the peer and the data (a slice of b).
func ParseDataIndication(b []byte) (peer netip.AddrPort, data []byte, err error) {
	m := &stun.Message{Raw: b}
	if err := m.Decode(); err != nil {
		return peer, nil, fmt.Errorf("decode data indication: %w", err)
	}
	if m.Type != stun.NewType(stun.MethodData, stun.ClassIndication) {
		return peer, nil, fmt.Errorf("message type %v is not a data indication", m.Type)
	}
	var x stun.XORMappedAddress
	if err := x.GetFromAs(m, stun.AttrXORPeerAddress); err != nil {
		return peer, nil, fmt.Errorf("xor-peer-address: %w", err)
	}
	if peer, err = addrPortOf(x); err != nil {
		return peer, nil, err
	}
	if data, err = m.Get(stun.AttrData); err != nil {
		return peer, nil, fmt.Errorf("data: %w", err)
	}
	return peer, data, nil
}

// TURN attributes pion/stun does not expose as setters.

// requestedTransport is REQUESTED-TRANSPORT (RFC 8656 section 18.7):
// protocol number then three RFFU bytes.
type requestedTransport uint8

func (t requestedTransport) AddTo(m *stun.Message) error {
	m.Add(stun.AttrRequestedTransport, []byte{byte(t), 0, 0, 0})
	return nil
}

// requestedFamily is REQUESTED-ADDRESS-FAMILY (RFC 8656 section 18.8):
// 0x01 IPv4, 0x02 IPv6, then three RFFU bytes.
type requestedFamily uint8

func (f requestedFamily) AddTo(m *stun.Message) error {
	m.Add(stun.AttrRequestedAddressFamily, []byte{byte(f), 0, 0, 0})
	return nil
}

// lifetime is LIFETIME (RFC 8656 section 18.4), seconds, 32 bits.
type lifetime time.Duration

func (l lifetime) AddTo(m *stun.Message) error {
	m.Add(stun.AttrLifetime, binary.BigEndian.AppendUint32(nil, uint32(time.Duration(l)/time.Second)))
	return nil
}

func getLifetime(m *stun.Message) (time.Duration, error) {
	v, err := m.Get(stun.AttrLifetime)
	if err != nil {
		return 0, err
	}
	if len(v) != 4 {
		return 0, fmt.Errorf("lifetime length %d", len(v))
	}
	return time.Duration(binary.BigEndian.Uint32(v)) * time.Second, nil
}

// channelNumber is CHANNEL-NUMBER (RFC 8656 section 18.1): number then two
// RFFU bytes.
type channelNumber uint16

func (c channelNumber) AddTo(m *stun.Message) error {
	m.Add(stun.AttrChannelNumber, []byte{byte(c >> 8), byte(c), 0, 0})
	return nil
}

type peerAddr netip.AddrPort

func (p peerAddr) AddTo(m *stun.Message) error {
	return xorAddr(netip.AddrPort(p)).AddToAs(m, stun.AttrXORPeerAddress)
}

package control

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/internal/turnproto"
)

// TURN methods, RFC 8656 section 18 (and Binding from RFC 8489 section 18.2).
const (
	methodBinding          = stun.MethodBinding          // 0x001
	methodAllocate         = stun.MethodAllocate         // 0x003
	methodRefresh          = stun.MethodRefresh          // 0x004
	methodSend             = stun.MethodSend             // 0x006
	methodData             = stun.MethodData             // 0x007
	methodCreatePermission = stun.MethodCreatePermission // 0x008
	methodChannelBind      = stun.MethodChannelBind      // 0x009
)

// Attributes pion/stun does not define (or defines under another name),
// RFC 8656 section 18 and RFC 8489 section 18.3.
const (
	attrAdditionalAddressFamily stun.AttrType = 0x8000 // RFC 8656 section 18.11
	attrAddressErrorCode        stun.AttrType = 0x8001 // RFC 8656 section 18.12
	attrICMP                    stun.AttrType = 0x8004 // RFC 8656 section 18.13
)

// Address families of REQUESTED-ADDRESS-FAMILY / ADDITIONAL-ADDRESS-FAMILY
// (RFC 8656 section 18.10 and 18.11).
const (
	familyIPv4 = turnproto.FamilyIPv4
	familyIPv6 = turnproto.FamilyIPv6
)

// magicCookie is the fixed STUN header value (RFC 8489 section 5).
const magicCookie = turnproto.MagicCookie

// protoUDP is the REQUESTED-TRANSPORT value for UDP (RFC 8656 section 18.7:
// an IANA protocol number).
const protoUDP = 17

// Channel number range (turnproto): RFC 5766's wider range is accepted
// unless Config.StrictChannelNumbers is set.
const (
	minChannel        = turnproto.MinChannel
	maxChannel        = turnproto.MaxChannel
	maxChannelRFC5766 = turnproto.MaxChannelRFC5766
)

// maxChannelNumber is the highest channel number this server binds.
func (s *Server) maxChannelNumber() uint16 {
	if s.cfg.StrictChannelNumbers {
		return maxChannel
	}
	return maxChannelRFC5766
}

// errBadAttr marks a malformed attribute value; the request is answered
// with 400.
var errBadAttr = errors.New("malformed attribute")

// comprehensionRequired lists the comprehension-required attributes
// (0x0000-0x7FFF, RFC 8489 section 14) this server understands. Any other
// one in a request gets 420 with UNKNOWN-ATTRIBUTES (RFC 8489 section 7.3.1).
var comprehensionRequired = map[stun.AttrType]bool{
	stun.AttrMappedAddress:             true,
	stun.AttrUsername:                  true,
	stun.AttrMessageIntegrity:          true,
	stun.AttrErrorCode:                 true,
	stun.AttrUnknownAttributes:         true,
	stun.AttrRealm:                     true,
	stun.AttrNonce:                     true,
	stun.AttrXORMappedAddress:          true,
	stun.AttrChannelNumber:             true,
	stun.AttrLifetime:                  true,
	stun.AttrXORPeerAddress:            true,
	stun.AttrData:                      true,
	stun.AttrXORRelayedAddress:         true,
	stun.AttrRequestedAddressFamily:    true,
	stun.AttrEvenPort:                  true,
	stun.AttrRequestedTransport:        true,
	stun.AttrDontFragment:              true,
	stun.AttrReservationToken:          true,
	stun.AttrMessageIntegritySHA256:    true,
	stun.AttrPasswordAlgorithm:         true,
	stun.AttrUserhash:                  true,
	stun.AttrPriority:                  true, // ICE (RFC 8445), harmless
	stun.AttrUseCandidate:              true,
	stun.AttrChangeRequest:             true, // RFC 5780, ignored
	stun.AttrConnectionID:              true, // RFC 6062, ignored
	stun.AttrPadding:                   true,
	stun.AttrResponsePort:              true,
	stun.AttrSourceAddress:             true,
	stun.AttrChangedAddress:            true,
	stun.AttrType(0x0002):              true, // RESPONSE-ADDRESS (RFC 3489), ignored
	stun.AttrType(0x0007):              true, // PASSWORD (RFC 3489), ignored
	stun.AttrType(0x000B):              true, // REFLECTED-FROM (RFC 3489), ignored
	stun.AttrType(0x0010):              true, // BANDWIDTH (RFC 5766 draft), ignored
	stun.AttrType(0x0011):              true, // DESTINATION-ADDRESS (draft), ignored
	stun.AttrType(stun.AttrDtlsInStun): true,
}

// unknownRequired returns the comprehension-required attribute types of m
// this server does not understand (RFC 8489 section 7.3.1).
func unknownRequired(m *stun.Message) []stun.AttrType {
	var out []stun.AttrType
	for _, a := range m.Attributes {
		if a.Type.Value() < 0x8000 && !comprehensionRequired[a.Type] {
			out = append(out, a.Type)
		}
	}
	return out
}

// getLifetime reads LIFETIME (RFC 8656 section 18.2): 32-bit seconds.
func getLifetime(m *stun.Message) (time.Duration, bool, error) {
	v, err := m.Get(stun.AttrLifetime)
	if err != nil {
		return 0, false, nil
	}
	if len(v) != 4 {
		return 0, true, fmt.Errorf("lifetime length %d: %w", len(v), errBadAttr)
	}
	return time.Duration(binary.BigEndian.Uint32(v)) * time.Second, true, nil
}

// addLifetime writes LIFETIME in whole seconds.
func addLifetime(m *stun.Message, d time.Duration) {
	var b [4]byte
	secs := d / time.Second
	if secs < 0 {
		secs = 0
	}
	binary.BigEndian.PutUint32(b[:], uint32(secs))
	m.Add(stun.AttrLifetime, b[:])
}

// getChannelNumber reads CHANNEL-NUMBER (RFC 8656 section 18.1): a 16-bit
// number followed by 16 RFFU bits.
func getChannelNumber(m *stun.Message) (uint16, bool, error) {
	v, err := m.Get(stun.AttrChannelNumber)
	if err != nil {
		return 0, false, nil
	}
	if len(v) != 4 {
		return 0, true, fmt.Errorf("channel-number length %d: %w", len(v), errBadAttr)
	}
	return binary.BigEndian.Uint16(v), true, nil
}

// getRequestedTransport reads REQUESTED-TRANSPORT (RFC 8656 section 18.7):
// protocol byte then 24 RFFU bits.
func getRequestedTransport(m *stun.Message) (byte, bool, error) {
	v, err := m.Get(stun.AttrRequestedTransport)
	if err != nil {
		return 0, false, nil
	}
	if len(v) != 4 {
		return 0, true, fmt.Errorf("requested-transport length %d: %w", len(v), errBadAttr)
	}
	return v[0], true, nil
}

// getFamilyAttr reads REQUESTED-ADDRESS-FAMILY or ADDITIONAL-ADDRESS-FAMILY
// (RFC 8656 sections 18.10, 18.11): family byte then 24 RFFU bits.
func getFamilyAttr(m *stun.Message, t stun.AttrType) (byte, bool, error) {
	v, err := m.Get(t)
	if err != nil {
		return 0, false, nil
	}
	if len(v) != 4 {
		return 0, true, fmt.Errorf("%s length %d: %w", t, len(v), errBadAttr)
	}
	return v[0], true, nil
}

// getEvenPort reads EVEN-PORT (RFC 8656 section 18.8): one byte whose top
// bit is R (reserve the next-higher port).
func getEvenPort(m *stun.Message) (present, reserve bool, err error) {
	v, gerr := m.Get(stun.AttrEvenPort)
	if gerr != nil {
		return false, false, nil
	}
	if len(v) != 1 {
		return true, false, fmt.Errorf("even-port length %d: %w", len(v), errBadAttr)
	}
	return true, v[0]&0x80 != 0, nil
}

// getReservationToken reads RESERVATION-TOKEN (RFC 8656 section 18.9): 8
// bytes.
func getReservationToken(m *stun.Message) ([8]byte, bool, error) {
	var tok [8]byte
	v, err := m.Get(stun.AttrReservationToken)
	if err != nil {
		return tok, false, nil
	}
	if len(v) != 8 {
		return tok, true, fmt.Errorf("reservation-token length %d: %w", len(v), errBadAttr)
	}
	copy(tok[:], v)
	return tok, true, nil
}

// addAddressErrorCode writes ADDRESS-ERROR-CODE (RFC 8656 section 18.12):
// family, reserved, class, number, reason.
func addAddressErrorCode(m *stun.Message, fam byte, code stun.ErrorCode, reason string) {
	v := make([]byte, 4, 4+len(reason))
	v[0] = fam
	v[2] = byte(int(code) / 100)
	v[3] = byte(int(code) % 100)
	v = append(v, reason...)
	m.Add(attrAddressErrorCode, v)
}

// getXORAddr decodes one XOR-encoded address attribute value (RFC 8489
// section 14.2; XOR-PEER-ADDRESS and XOR-RELAYED-ADDRESS use the same
// encoding, RFC 8656 sections 18.3, 18.5).
func getXORAddr(v []byte, txID [stun.TransactionIDSize]byte) (netip.AddrPort, error) {
	if len(v) < 4 {
		return netip.AddrPort{}, fmt.Errorf("xor address length %d: %w", len(v), errBadAttr)
	}
	fam := binary.BigEndian.Uint16(v[0:2])
	port := binary.BigEndian.Uint16(v[2:4]) ^ uint16(magicCookie>>16)
	var key [16]byte
	binary.BigEndian.PutUint32(key[0:4], magicCookie)
	copy(key[4:], txID[:])
	switch {
	case fam == 1 && len(v) == 8:
		var ip [4]byte
		for i := range ip {
			ip[i] = v[4+i] ^ key[i]
		}
		return netip.AddrPortFrom(netip.AddrFrom4(ip), port), nil
	case fam == 2 && len(v) == 20:
		var ip [16]byte
		for i := range ip {
			ip[i] = v[4+i] ^ key[i]
		}
		return netip.AddrPortFrom(netip.AddrFrom16(ip), port), nil
	}
	return netip.AddrPort{}, fmt.Errorf("xor address family %d length %d: %w", fam, len(v), errBadAttr)
}

// getXORAddrs returns every attribute of type t (CreatePermission may carry
// several XOR-PEER-ADDRESS, RFC 8656 section 9.1).
func getXORAddrs(m *stun.Message, t stun.AttrType) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, a := range m.Attributes {
		if a.Type != t {
			continue
		}
		ap, err := getXORAddr(a.Value, m.TransactionID)
		if err != nil {
			return nil, err
		}
		out = append(out, ap)
	}
	return out, nil
}

// addXORAddr encodes ap as attribute t.
func addXORAddr(m *stun.Message, t stun.AttrType, ap netip.AddrPort) error {
	a := ap.Addr().Unmap()
	xa := stun.XORMappedAddress{IP: net.IP(a.AsSlice()), Port: int(ap.Port())}
	return xa.AddToAs(m, t)
}

// familyOf returns the REQUESTED-ADDRESS-FAMILY code of a.
func familyOf(a netip.Addr) byte {
	if a.Unmap().Is4() {
		return familyIPv4
	}
	return familyIPv6
}

// famIndex maps a family code to the index of an allocation's relay slot.
func famIndex(f byte) int {
	if f == familyIPv6 {
		return 1
	}
	return 0
}

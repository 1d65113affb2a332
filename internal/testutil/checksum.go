package testutil

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// ErrNoChecksum is returned by VerifyUDP for a datagram sent without a
// checksum (zero): allowed over IPv4 (RFC 768), never over IPv6 (RFC 8200
// section 8.1). The caller decides whether that is an error.
var ErrNoChecksum = errors.New("udp checksum is zero (none sent)")

// Checksum is the Internet checksum (RFC 1071) of the concatenation of
// parts: the one's complement of their one's complement sum. A buffer
// with a correct checksum field in it sums to 0.
func Checksum(parts ...[]byte) uint16 {
	var sum uint32
	var odd bool // a byte of the previous part is waiting for its pair
	var hi byte
	for _, p := range parts {
		if odd && len(p) > 0 {
			sum += uint32(hi)<<8 | uint32(p[0])
			p, odd = p[1:], false
		}
		for len(p) >= 2 {
			sum += uint32(binary.BigEndian.Uint16(p))
			p = p[2:]
		}
		if len(p) == 1 {
			hi, odd = p[0], true
		}
	}
	if odd {
		sum += uint32(hi) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// UDPPseudoHeader is the pseudo-header the UDP checksum covers for a
// datagram of udpLen bytes (header included) from src to dst: RFC 768 for
// IPv4, RFC 8200 section 8.1 for IPv6. IPv4-mapped addresses count as
// IPv4.
func UDPPseudoHeader(src, dst netip.Addr, udpLen int) []byte {
	src, dst = src.Unmap(), dst.Unmap()
	if src.Is4() {
		s, d := src.As4(), dst.As4()
		b := append(s[:], d[:]...)
		b = append(b, 0, 17)
		return binary.BigEndian.AppendUint16(b, uint16(udpLen))
	}
	s, d := src.As16(), dst.As16()
	b := append(s[:], d[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(udpLen))
	return append(b, 0, 0, 0, 17)
}

// VerifyUDP recomputes the checksum of the UDP datagram udp (header and
// payload) from src to dst from scratch. A zero checksum field is
// ErrNoChecksum; a short datagram or a wrong sum is an error saying so.
func VerifyUDP(src, dst netip.Addr, udp []byte) error {
	if len(udp) < 8 {
		return fmt.Errorf("udp datagram of %d bytes: shorter than its header", len(udp))
	}
	field := binary.BigEndian.Uint16(udp[6:8])
	if field == 0 {
		return ErrNoChecksum
	}
	if c := Checksum(UDPPseudoHeader(src, dst, len(udp)), udp); c != 0 {
		return fmt.Errorf("bad udp checksum %#04x (sum off by %#04x)", field, c)
	}
	return nil
}

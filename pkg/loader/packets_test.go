package loader

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/hybridrelay/hybridrelay/internal/testutil"
)

// This file builds and checks frames in Go, independently of the C code:
// every checksum here is a full RFC 1071 computation over the bytes.

type frameSpec struct {
	dstMAC, srcMAC [6]byte
	vlan           uint16 // 0: untagged; else the TCI
	src, dst       netip.AddrPort
	ttl            uint8 // 0 means 64
	tos            uint8
	df             bool
	id             uint16
	payload        []byte
	zeroCsum       bool   // IPv4: send the UDP checksum as 0
	trailer        []byte // bytes after the IP packet (Ethernet padding)
	proto          uint8  // 0: UDP
	ihl            uint8  // 0: 5
	fragOff        uint16 // raw flags/offset override when non-zero (DF bit from df is or-ed)
	nextHdr        uint8  // IPv6 next header override
}

// csumFull is the RFC 1071 Internet checksum of the concatenation of parts.
func csumFull(parts ...[]byte) uint16 { return testutil.Checksum(parts...) }

func (f frameSpec) build() []byte {
	ttl := f.ttl
	if ttl == 0 {
		ttl = 64
	}
	v6 := f.src.Addr().Is6()
	var b []byte
	b = append(b, f.dstMAC[:]...)
	b = append(b, f.srcMAC[:]...)
	etype := uint16(0x0800)
	if v6 {
		etype = 0x86DD
	}
	if f.vlan != 0 {
		b = binary.BigEndian.AppendUint16(b, 0x8100)
		b = binary.BigEndian.AppendUint16(b, f.vlan)
	}
	b = binary.BigEndian.AppendUint16(b, etype)

	udp := make([]byte, 8, 8+len(f.payload))
	binary.BigEndian.PutUint16(udp[0:], f.src.Port())
	binary.BigEndian.PutUint16(udp[2:], f.dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(f.payload)))
	udp = append(udp, f.payload...)
	proto := f.proto
	if proto == 0 {
		proto = 17
	}
	var pseudo []byte
	if v6 {
		s, d := f.src.Addr().As16(), f.dst.Addr().As16()
		pseudo = append(append(pseudo, s[:]...), d[:]...)
		pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(len(udp)))
		pseudo = append(pseudo, 0, 0, 0, 17)
	} else {
		s, d := f.src.Addr().As4(), f.dst.Addr().As4()
		pseudo = append(append(pseudo, s[:]...), d[:]...)
		pseudo = append(pseudo, 0, 17)
		pseudo = binary.BigEndian.AppendUint16(pseudo, uint16(len(udp)))
	}
	if !(f.zeroCsum && !v6) {
		c := csumFull(pseudo, udp)
		if c == 0 {
			c = 0xffff
		}
		binary.BigEndian.PutUint16(udp[6:], c)
	}
	if v6 {
		ip := make([]byte, 40)
		binary.BigEndian.PutUint32(ip[0:], 6<<28|uint32(f.tos)<<20)
		binary.BigEndian.PutUint16(ip[4:], uint16(len(udp)))
		ip[6] = 17
		if f.nextHdr != 0 {
			ip[6] = f.nextHdr
		}
		ip[7] = ttl
		s, d := f.src.Addr().As16(), f.dst.Addr().As16()
		copy(ip[8:], s[:])
		copy(ip[24:], d[:])
		b = append(b, ip...)
	} else {
		ihl := f.ihl
		if ihl == 0 {
			ihl = 5
		}
		ip := make([]byte, int(ihl)*4)
		ip[0] = 4<<4 | ihl
		ip[1] = f.tos
		binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)+len(udp)))
		binary.BigEndian.PutUint16(ip[4:], f.id)
		fo := f.fragOff
		if f.df {
			fo |= 0x4000
		}
		binary.BigEndian.PutUint16(ip[6:], fo)
		ip[8] = ttl
		ip[9] = proto
		s, d := f.src.Addr().As4(), f.dst.Addr().As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		binary.BigEndian.PutUint16(ip[10:], csumFull(ip))
		b = append(b, ip...)
	}
	b = append(b, udp...)
	return append(b, f.trailer...)
}

// channelData is RFC 8656 section 12.4 framing with explicit padding bytes.
func channelData(ch uint16, data, pad []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, ch)
	b = binary.BigEndian.AppendUint16(b, uint16(len(data)))
	b = append(b, data...)
	return append(b, pad...)
}

// verifyChecksums recomputes the IPv4 header checksum and the UDP checksum
// of a frame from scratch (a zero UDP checksum is allowed over IPv4 only,
// RFC 768 and RFC 8200 section 8.1).
func verifyChecksums(frame []byte) error {
	if len(frame) < 14 {
		return fmt.Errorf("short frame")
	}
	off := 12
	etype := binary.BigEndian.Uint16(frame[off:])
	off += 2
	if etype == 0x8100 {
		etype = binary.BigEndian.Uint16(frame[off+2:])
		off += 4
	}
	var src, dst netip.Addr
	var udp []byte
	switch etype {
	case 0x0800:
		ip := frame[off:]
		if len(ip) < 20 {
			return fmt.Errorf("short ipv4")
		}
		hl := int(ip[0]&0xf) * 4
		if csumFull(ip[:hl]) != 0 {
			return fmt.Errorf("ipv4 header checksum wrong")
		}
		tot := int(binary.BigEndian.Uint16(ip[2:]))
		udp = ip[hl:tot]
		if len(udp) >= 8 && binary.BigEndian.Uint16(udp[6:]) == 0 {
			return nil // none (RFC 768)
		}
		if len(udp) >= 8 && binary.BigEndian.Uint16(udp[4:]) != uint16(len(udp)) {
			return fmt.Errorf("udp length %d, ip says %d", binary.BigEndian.Uint16(udp[4:]), len(udp))
		}
		src, dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
	case 0x86DD:
		ip := frame[off:]
		plen := int(binary.BigEndian.Uint16(ip[4:]))
		udp = ip[40 : 40+plen]
		src, dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
	default:
		return fmt.Errorf("ethertype %#x", etype)
	}
	return testutil.VerifyUDP(src, dst, udp)
}

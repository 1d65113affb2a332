package dpe2e

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/hybridrelay/hybridrelay/internal/testutil"
)

// Datagram is one UDP datagram as captured on a link.
type Datagram struct {
	Src, Dst netip.AddrPort
	// L3 is the IP header without the fields that legitimately differ
	// between two sends of the same datagram: for IPv4 the identification
	// and the header checksum are zeroed; the IPv6 header is kept whole.
	L3 []byte
	// UDP is the UDP header and payload, exactly as on the wire; nil for
	// a fragment.
	UDP []byte
	// Fragment is the IP payload of a fragment (after the IPv6 fragment
	// header), nil for a whole datagram. Src and Dst carry no ports then.
	Fragment []byte
}

// Payload is the UDP payload.
func (d Datagram) Payload() []byte { return d.UDP[8:] }

// VerifyChecksum recomputes the UDP checksum over the pseudo-header, header
// and payload (RFC 768; RFC 8200 section 8.1 for IPv6) and returns an error
// when it does not verify. A zero checksum is an error too: the kernel
// always fills it in for the datapaths under test, and IPv6 requires it.
func (d Datagram) VerifyChecksum() error {
	if err := testutil.VerifyUDP(d.Src.Addr(), d.Dst.Addr(), d.UDP); err != nil {
		return fmt.Errorf("%v -> %v: %w", d.Src, d.Dst, err)
	}
	return nil
}

// Capture is an AF_PACKET socket on one interface, receiving every frame
// that arrives on it (not the ones it sends).
type Capture struct {
	fd int
}

// NewCapture opens a capture on ifname. Call it inside the namespace that
// owns the interface (netns.NS.Do); the socket stays there.
func NewCapture(ifname string) (*Capture, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("capture on %s: %w", ifname, err)
	}
	proto := htons(unix.ETH_P_ALL)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
	if err != nil {
		return nil, fmt.Errorf("capture on %s: %w", ifname, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20); err != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 16<<20)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("capture on %s: %w", ifname, err)
	}
	return &Capture{fd: fd}, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Drain returns the UDP datagrams received so far whose destination is dst
// and the IP fragments addressed to dst's address, in arrival order. It
// fails when the kernel dropped frames on the capture socket, which would
// make a comparison meaningless.
func (c *Capture) Drain(dst netip.AddrPort) ([]Datagram, error) {
	return c.drain(func(d Datagram) bool {
		return d.Dst == dst || d.Fragment != nil && d.Dst.Addr() == dst.Addr()
	})
}

// DrainAll returns every UDP datagram and IP fragment received so far.
func (c *Capture) DrainAll() ([]Datagram, error) {
	return c.drain(func(Datagram) bool { return true })
}

func (c *Capture) drain(keep func(Datagram) bool) ([]Datagram, error) {
	var out []Datagram
	buf := make([]byte, 65536)
	for {
		n, from, err := unix.Recvfrom(c.fd, buf, unix.MSG_DONTWAIT)
		if err == unix.EAGAIN {
			break
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return out, fmt.Errorf("capture: %w", err)
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if n > len(buf) {
			return out, fmt.Errorf("capture: frame of %d bytes truncated", n)
		}
		d, ok := parseFrame(buf[:n])
		if ok && keep(d) {
			out = append(out, d)
		}
	}
	st, err := unix.GetsockoptTpacketStats(c.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	if err == nil && st.Drops > 0 {
		return out, fmt.Errorf("capture: kernel dropped %d frames", st.Drops)
	}
	return out, nil
}

// Close closes the capture socket.
func (c *Capture) Close() error { return unix.Close(c.fd) }

// parseFrame decodes Ethernet / IPv4 or IPv6 / UDP; anything else (other
// protocols, fragments, IPv6 extension headers) is not a Datagram.
func parseFrame(f []byte) (Datagram, bool) {
	if len(f) < 14 {
		return Datagram{}, false
	}
	et := binary.BigEndian.Uint16(f[12:14])
	p := f[14:]
	var d Datagram
	var l4 []byte
	switch et {
	case unix.ETH_P_IP:
		if len(p) < 20 || p[0]>>4 != 4 {
			return d, false
		}
		ihl := int(p[0]&0xf) * 4
		total := int(binary.BigEndian.Uint16(p[2:4]))
		if ihl < 20 || total < ihl || total > len(p) || p[9] != unix.IPPROTO_UDP {
			return d, false
		}
		d.L3 = append([]byte(nil), p[:ihl]...)
		d.L3[4], d.L3[5], d.L3[10], d.L3[11] = 0, 0, 0, 0
		src, dst := netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20]))
		l4 = p[ihl:total]
		d.Src, d.Dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
		if binary.BigEndian.Uint16(p[6:8])&0x3fff != 0 { // MF or an offset
			d.Fragment = append([]byte(nil), l4...)
			return d, true
		}
	case unix.ETH_P_IPV6:
		if len(p) < 40 || p[0]>>4 != 6 {
			return d, false
		}
		plen := int(binary.BigEndian.Uint16(p[4:6]))
		if 40+plen > len(p) {
			return d, false
		}
		src, dst := netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40]))
		d.Src, d.Dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
		switch p[6] {
		case unix.IPPROTO_UDP:
			d.L3 = append([]byte(nil), p[:40]...)
			l4 = p[40 : 40+plen]
		case unix.IPPROTO_FRAGMENT: // RFC 8200 section 4.5
			if plen < 8 || p[40] != unix.IPPROTO_UDP {
				return d, false
			}
			d.L3 = append([]byte(nil), p[:48]...)
			d.L3[44], d.L3[45], d.L3[46], d.L3[47] = 0, 0, 0, 0 // identification
			d.Fragment = append([]byte(nil), p[48:40+plen]...)
			return d, true
		default:
			return d, false
		}
	default:
		return d, false
	}
	if len(l4) < 8 || int(binary.BigEndian.Uint16(l4[4:6])) != len(l4) {
		return d, false
	}
	d.UDP = append([]byte(nil), l4...)
	d.Src = netip.AddrPortFrom(d.Src.Addr(), binary.BigEndian.Uint16(l4[0:2]))
	d.Dst = netip.AddrPortFrom(d.Dst.Addr(), binary.BigEndian.Uint16(l4[2:4]))
	return d, true
}

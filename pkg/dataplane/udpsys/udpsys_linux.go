package udpsys

import (
	"encoding/binary"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The system calls take the raw fd from a syscall.RawConn callback, so the
// fd is held by the net package for the duration of the call and cannot be
// closed and reused underneath.

// SockaddrLen is the size reserved for one socket address: sockaddr_in6,
// which also holds a sockaddr_in.
const SockaddrLen = unix.SizeofSockaddrInet6

// Sockaddr is the buffer for one socket address (msg_name).
type Sockaddr = unix.RawSockaddrInet6

// cmsg layout (include/linux/socket.h): header, then data, each aligned.
var (
	// CmsgHdrLen is the aligned length of a cmsg header.
	CmsgHdrLen = unix.CmsgLen(0)
	// RxCtrlLen fits the cmsgs a read may carry: UDP_GRO (int),
	// SO_RXQ_OVFL (u32) and SO_TIMESTAMPNS (a 16-byte timespec).
	RxCtrlLen = 2*unix.CmsgSpace(4) + unix.CmsgSpace(16)
	// GSOCtrlLen fits UDP_SEGMENT (u16).
	GSOCtrlLen = unix.CmsgSpace(2)
)

// Recvmmsg reads up to len(msgs) datagrams without blocking, retrying on
// EINTR; EAGAIN means nothing was queued.
func Recvmmsg(fd uintptr, msgs []unix.Mmsghdr) (int, syscall.Errno) {
	for {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), unix.MSG_DONTWAIT, 0, 0)
		if e == unix.EINTR {
			continue
		}
		return int(n), e
	}
}

// Sendmmsg sends up to len(msgs) datagrams without blocking, retrying on
// EINTR, and returns how many the kernel took.
func Sendmmsg(fd uintptr, msgs []unix.Mmsghdr) (int, syscall.Errno) {
	for {
		n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), unix.MSG_DONTWAIT, 0, 0)
		if e == unix.EINTR {
			continue
		}
		return int(n), e
	}
}

// Sendmsg sends one message (a GSO super-packet, with its UDP_SEGMENT
// cmsg) without blocking, retrying on EINTR.
func Sendmsg(fd uintptr, m *unix.Msghdr) syscall.Errno {
	for {
		_, _, e := unix.Syscall(unix.SYS_SENDMSG, fd, uintptr(unsafe.Pointer(m)), unix.MSG_DONTWAIT)
		if e == unix.EINTR {
			continue
		}
		return e
	}
}

// PutSockaddr writes dst as the socket address for a socket of family
// (AF_INET or AF_INET6) and returns its length, or 0 when dst cannot be
// reached from such a socket.
func PutSockaddr(b *Sockaddr, family int, dst netip.AddrPort) uint32 {
	a := dst.Addr()
	if !a.IsValid() {
		return 0
	}
	raw := (*[SockaddrLen]byte)(unsafe.Pointer(b))
	binary.BigEndian.PutUint16(raw[2:4], dst.Port()) // sin_port / sin6_port: network order
	switch family {
	case unix.AF_INET:
		a = a.Unmap()
		if !a.Is4() {
			return 0
		}
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(b))
		sa.Family = unix.AF_INET
		sa.Addr = a.As4()
		sa.Zero = [8]uint8{}
		return unix.SizeofSockaddrInet4
	case unix.AF_INET6:
		b.Family = unix.AF_INET6
		b.Flowinfo = 0
		b.Addr = a.As16() // an IPv4 address becomes ::ffff:a.b.c.d
		b.Scope_id = 0
		return unix.SizeofSockaddrInet6
	}
	return 0
}

// GetSockaddr decodes a socket address written by the kernel. IPv4-mapped
// IPv6 addresses are unmapped, as in the plain datapath.
func GetSockaddr(b *Sockaddr) netip.AddrPort {
	raw := (*[SockaddrLen]byte)(unsafe.Pointer(b))
	port := binary.BigEndian.Uint16(raw[2:4])
	switch b.Family {
	case unix.AF_INET:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(raw[4:8])), port)
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(b.Addr).Unmap(), port)
	}
	return netip.AddrPort{}
}

// PutGSOCmsg writes the UDP_SEGMENT cmsg carrying the segment size
// (Documentation/networking/segmentation-offloads.rst, "UDP GSO").
func PutGSOCmsg(b []byte, seg uint16) {
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level = unix.SOL_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&b[CmsgHdrLen])) = seg
}

// ParseRxCmsgs returns the UDP_GRO segment size (0 if absent) and the
// SO_RXQ_OVFL drop counter of a read, and whether that counter was present.
// The kernel adds UDP_GRO only to reads that coalesced several datagrams
// (udp_cmsg_recv), and SO_RXQ_OVFL only once the socket has dropped
// (sock_recv_drops).
func ParseRxCmsgs(b []byte) (gsoSize int, drops uint32, haveDrops bool) {
	gsoSize, drops, haveDrops, _ = ParseRxCmsgsStamp(b)
	return
}

// ParseRxCmsgsStamp is ParseRxCmsgs that also returns the kernel receive
// time of the read (SO_TIMESTAMPNS, unix nanoseconds; 0 if absent). For a
// UDP_GRO read it is the first datagram's.
func ParseRxCmsgsStamp(b []byte) (gsoSize int, drops uint32, haveDrops bool, stamp int64) {
	for len(b) >= CmsgHdrLen {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		l := int(h.Len)
		if l < CmsgHdrLen || l > len(b) {
			return
		}
		data := b[CmsgHdrLen:l]
		switch {
		case h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && len(data) >= 4:
			gsoSize = int(*(*int32)(unsafe.Pointer(&data[0])))
		case h.Level == unix.SOL_SOCKET && h.Type == unix.SO_RXQ_OVFL && len(data) >= 4:
			drops = *(*uint32)(unsafe.Pointer(&data[0]))
			haveDrops = true
		case h.Level == unix.SOL_SOCKET && h.Type == unix.SO_TIMESTAMPNS_NEW && len(data) >= 16:
			// struct __kernel_timespec: two s64 on every architecture.
			ts := (*[2]int64)(unsafe.Pointer(&data[0]))
			stamp = ts[0]*1e9 + ts[1]
		case h.Level == unix.SOL_SOCKET && h.Type == unix.SO_TIMESTAMPNS_OLD && len(data) >= int(unsafe.Sizeof(unix.Timespec{})):
			stamp = (*unix.Timespec)(unsafe.Pointer(&data[0])).Nano()
		}
		next := unix.CmsgSpace(l - CmsgHdrLen)
		if next > len(b) {
			return
		}
		b = b[next:]
	}
	return
}

// EnableRxTimestamps turns on kernel receive timestamps in nanoseconds:
// SO_TIMESTAMPNS_NEW (Linux 5.1, y2038-safe on 32-bit), else the old
// option, whose timespec is the same on 64-bit.
func EnableRxTimestamps(fd int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS_NEW, 1); err == nil {
		return nil
	}
	return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS_OLD, 1)
}

// Segments is how many datagrams a read of ln bytes holds when UDP_GRO
// coalesced it in seg-byte segments (seg 0: one datagram).
func Segments(ln, seg int) int {
	if seg <= 0 || ln <= seg {
		return 1
	}
	return (ln + seg - 1) / seg
}

// SetBuffer sets SO_RCVBUF or SO_SNDBUF to size, trying the FORCE variant
// first (CAP_NET_ADMIN, not capped by net.core.[rw]mem_max).
func SetBuffer(fd int, force, plain, size int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, force, size); err == nil {
		return nil
	}
	return unix.SetsockoptInt(fd, unix.SOL_SOCKET, plain, size)
}

// IsGSOUnsupported reports the errors after which a socket stops using
// UDP_SEGMENT for good: the kernel or the route cannot segment (EIO: xfrm
// or UDP-Lite; EINVAL: too many segments or checksums off; ENOPROTOOPT /
// EOPNOTSUPP: option unknown).
func IsGSOUnsupported(e syscall.Errno) bool {
	switch e {
	case unix.EIO, unix.EINVAL, unix.ENOPROTOOPT, unix.EOPNOTSUPP:
		return true
	}
	return false
}

//go:build linux

package bench

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// batchConn does batched I/O on one UDP socket through its RawConn, so the
// Go netpoller still does the waiting: recvmmsg for reads, sendmsg with a
// UDP_SEGMENT control message (kernel >= 4.18, Documentation/networking/
// segmentation-offloads.rst "UDP fragmentation offload") for writes of many
// equal-size datagrams, sendmmsg when GSO is refused.
type batchConn struct {
	conn *net.UDPConn
	rc   syscall.RawConn

	// receive
	rmsgs  []unix.Mmsghdr
	riovs  []unix.Iovec
	rbufs  [][]byte
	rnames []unix.RawSockaddrInet6
	rctl   [][]byte // UDP_GRO control messages, when enabled
	out    []datagram

	// send
	gso    bool
	oob    []byte
	smsgs  []unix.Mmsghdr
	siovs  []unix.Iovec
	sname  unix.RawSockaddrInet6
	Stats  IOStats
	sockFa int
}

func newBatchConn(c *net.UDPConn, batch, bufSize int) (*batchConn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("raw socket: %w", err)
	}
	b := &batchConn{conn: c, rc: rc, gso: true}
	b.rmsgs = make([]unix.Mmsghdr, batch)
	b.riovs = make([]unix.Iovec, batch)
	b.rbufs = make([][]byte, batch)
	b.rnames = make([]unix.RawSockaddrInet6, batch)
	b.out = make([]datagram, 0, batch)
	for i := range b.rmsgs {
		b.rbufs[i] = make([]byte, bufSize)
		b.riovs[i].Base = &b.rbufs[i][0]
		b.riovs[i].SetLen(bufSize)
		b.rmsgs[i].Hdr.Iov = &b.riovs[i]
		b.rmsgs[i].Hdr.SetIovlen(1)
		b.rmsgs[i].Hdr.Name = (*byte)(unsafe.Pointer(&b.rnames[i]))
	}
	b.oob = make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b.oob[0]))
	h.Level = unix.SOL_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	b.smsgs = make([]unix.Mmsghdr, maxGSOSegments)
	b.siovs = make([]unix.Iovec, maxGSOSegments)
	b.sockFa = unix.AF_INET6
	_ = rc.Control(func(fd uintptr) {
		if sa, err := unix.Getsockname(int(fd)); err == nil {
			if _, ok := sa.(*unix.SockaddrInet4); ok {
				b.sockFa = unix.AF_INET
			}
		}
	})
	return b, nil
}

// setBuffers asks for large socket buffers, forcing past rmem_max/wmem_max
// as root (SO_RCVBUFFORCE), so bursts of a flood are not dropped at the
// socket of the measuring side.
func setBuffers(c *net.UDPConn, bytes int) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, bytes) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, bytes)
		}
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, bytes) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, bytes)
		}
	})
}

// enableGRO turns on UDP_GRO (kernel >= 5.0): the kernel may hand over
// several same-size datagrams of one flow as one buffer, with the segment
// size in a control message; ReadBatch splits them again. The read buffers
// must be large (64 KiB) for it to help.
func (b *batchConn) enableGRO() bool {
	var serr error
	if err := b.rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_GRO, 1)
	}); err != nil || serr != nil {
		return false
	}
	b.rctl = make([][]byte, len(b.rmsgs))
	for i := range b.rmsgs {
		b.rctl[i] = make([]byte, unix.CmsgSpace(4))
		b.rmsgs[i].Hdr.Control = &b.rctl[i][0]
	}
	return true
}

// groSize returns the segment size of a coalesced read (0: one datagram).
func groSize(ctl []byte) int {
	for len(ctl) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&ctl[0]))
		if h.Len < unix.SizeofCmsghdr || int(h.Len) > len(ctl) {
			return 0
		}
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && int(h.Len) >= unix.CmsgLen(2) {
			data := ctl[unix.CmsgLen(0):h.Len]
			if len(data) >= 4 {
				return int(*(*int32)(unsafe.Pointer(&data[0])))
			}
			return int(*(*uint16)(unsafe.Pointer(&data[0])))
		}
		ctl = ctl[unix.CmsgSpace(int(h.Len)-unix.CmsgLen(0)):]
	}
	return 0
}

// ReadBatch waits for at least one datagram and returns up to a batch of
// them. The slices are valid until the next ReadBatch.
func (b *batchConn) ReadBatch() ([]datagram, error) {
	var n int
	var serr error
	for i := range b.rmsgs {
		b.rmsgs[i].Hdr.Namelen = uint32(unsafe.Sizeof(b.rnames[i]))
		b.rmsgs[i].Hdr.Flags = 0
		if b.rctl != nil {
			b.rmsgs[i].Hdr.SetControllen(len(b.rctl[i]))
		}
	}
	err := b.rc.Read(func(fd uintptr) bool {
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.rmsgs[0])), uintptr(len(b.rmsgs)), unix.MSG_DONTWAIT, 0, 0)
		if e == unix.EAGAIN || e == unix.EINTR {
			return false
		}
		if e != 0 {
			serr = e
		}
		n = int(r)
		return true
	})
	if err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, fmt.Errorf("recvmmsg: %w", serr)
	}
	b.Stats.ReadCalls++
	b.out = b.out[:0]
	for i := 0; i < n; i++ {
		d := b.rbufs[i][:b.rmsgs[i].Len]
		from := rawToAddrPort(&b.rnames[i])
		seg := 0
		if b.rctl != nil && b.rmsgs[i].Hdr.Controllen > 0 {
			seg = groSize(b.rctl[i][:b.rmsgs[i].Hdr.Controllen])
		}
		if seg <= 0 || seg >= len(d) {
			b.out = append(b.out, datagram{b: d, from: from})
			continue
		}
		for off := 0; off < len(d); off += seg {
			b.out = append(b.out, datagram{b: d[off:min(off+seg, len(d))], from: from})
		}
	}
	return b.out, nil
}

func rawToAddrPort(r *unix.RawSockaddrInet6) netip.AddrPort {
	switch r.Family {
	case unix.AF_INET:
		r4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(r))
		p := (*[2]byte)(unsafe.Pointer(&r4.Port))
		return netip.AddrPortFrom(netip.AddrFrom4(r4.Addr), uint16(p[0])<<8|uint16(p[1]))
	case unix.AF_INET6:
		p := (*[2]byte)(unsafe.Pointer(&r.Port))
		return netip.AddrPortFrom(netip.AddrFrom16(r.Addr).Unmap(), uint16(p[0])<<8|uint16(p[1]))
	}
	return netip.AddrPort{}
}

// putName fills b.sname with dst in the socket's family and returns its
// pointer and length; a zero dst means "connected socket, no name".
func (b *batchConn) putName(dst netip.AddrPort) (*byte, uint32) {
	if !dst.IsValid() {
		return nil, 0
	}
	port := dst.Port()
	if b.sockFa == unix.AF_INET && dst.Addr().Unmap().Is4() {
		r4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(&b.sname))
		*r4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: dst.Addr().Unmap().As4()}
		p := (*[2]byte)(unsafe.Pointer(&r4.Port))
		p[0], p[1] = byte(port>>8), byte(port)
		return (*byte)(unsafe.Pointer(r4)), unix.SizeofSockaddrInet4
	}
	b.sname = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: dst.Addr().As16()}
	p := (*[2]byte)(unsafe.Pointer(&b.sname.Port))
	p[0], p[1] = byte(port>>8), byte(port)
	return (*byte)(unsafe.Pointer(&b.sname)), unix.SizeofSockaddrInet6
}

// WriteSegments sends buf as len(buf)/segSize datagrams (the last may be
// shorter) to dst (zero dst: the connected peer). It uses one sendmsg with
// UDP_SEGMENT; if the kernel refuses GSO (EIO, EINVAL, ENOPROTOOPT,
// EOPNOTSUPP) it falls back to sendmmsg for good. It returns the number of
// datagrams the kernel took; a full socket buffer (EAGAIN after waiting) or
// ENOBUFS counts as sent-nothing, not as an error, since flooding past the
// queue is the point of a flood.
func (b *batchConn) WriteSegments(buf []byte, segSize int, dst netip.AddrPort) (int, error) {
	nseg := (len(buf) + segSize - 1) / segSize
	name, namelen := b.putName(dst)
	if b.gso && nseg > 1 {
		*(*uint16)(unsafe.Pointer(&b.oob[unix.CmsgLen(0)])) = uint16(segSize)
		var iov unix.Iovec
		iov.Base = &buf[0]
		iov.SetLen(len(buf))
		msg := unix.Msghdr{Name: name, Namelen: namelen, Iov: &iov, Control: &b.oob[0]}
		msg.SetIovlen(1)
		msg.SetControllen(len(b.oob))
		var serr syscall.Errno
		err := b.rc.Write(func(fd uintptr) bool {
			_, _, e := unix.Syscall(unix.SYS_SENDMSG, fd, uintptr(unsafe.Pointer(&msg)), unix.MSG_DONTWAIT)
			if e == unix.EAGAIN || e == unix.EINTR {
				return false
			}
			serr = e
			return true
		})
		if err != nil {
			return 0, err
		}
		switch serr {
		case 0:
			b.Stats.GSOSends++
			return nseg, nil
		case unix.ENOBUFS:
			return 0, nil
		case unix.EIO, unix.EINVAL, unix.ENOPROTOOPT, unix.EOPNOTSUPP:
			b.gso = false
			b.Stats.GSOFailure = fmt.Sprintf("sendmsg with UDP_SEGMENT: %v; using sendmmsg", serr)
		default:
			return 0, fmt.Errorf("sendmsg gso: %w", serr)
		}
	}
	return b.writeMmsg(buf, segSize, nseg, name, namelen)
}

func (b *batchConn) writeMmsg(buf []byte, segSize, nseg int, name *byte, namelen uint32) (int, error) {
	if nseg > len(b.smsgs) {
		b.smsgs = make([]unix.Mmsghdr, nseg)
		b.siovs = make([]unix.Iovec, nseg)
	}
	for i := 0; i < nseg; i++ {
		end := (i + 1) * segSize
		if end > len(buf) {
			end = len(buf)
		}
		b.siovs[i].Base = &buf[i*segSize]
		b.siovs[i].SetLen(end - i*segSize)
		b.smsgs[i] = unix.Mmsghdr{}
		b.smsgs[i].Hdr.Iov = &b.siovs[i]
		b.smsgs[i].Hdr.SetIovlen(1)
		b.smsgs[i].Hdr.Name = name
		b.smsgs[i].Hdr.Namelen = namelen
	}
	sent := 0
	for sent < nseg {
		var n int
		var serr syscall.Errno
		err := b.rc.Write(func(fd uintptr) bool {
			r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.smsgs[sent])), uintptr(nseg-sent), unix.MSG_DONTWAIT, 0, 0)
			if e == unix.EAGAIN || e == unix.EINTR {
				return false
			}
			serr = e
			n = int(r)
			return true
		})
		if err != nil {
			return sent, err
		}
		if serr == unix.ENOBUFS {
			return sent, nil
		}
		if serr != 0 {
			return sent, fmt.Errorf("sendmmsg: %w", serr)
		}
		b.Stats.MmsgSends++
		sent += n
	}
	return sent, nil
}

// errClosed reports whether err means the socket was closed or its
// deadline passed (how receive loops are stopped).
func errClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.EBADF) || isTimeout(err)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

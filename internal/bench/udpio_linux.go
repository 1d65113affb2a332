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

	"github.com/hybridrelay/hybridrelay/pkg/dataplane/udpsys"
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
	rnames []udpsys.Sockaddr
	rctl   [][]byte // UDP_GRO control messages, when enabled
	out    []datagram

	// send
	gso    bool
	oob    []byte
	smsgs  []unix.Mmsghdr
	siovs  []unix.Iovec
	sname  udpsys.Sockaddr
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
	b.rnames = make([]udpsys.Sockaddr, batch)
	b.out = make([]datagram, 0, batch)
	for i := range b.rmsgs {
		b.rbufs[i] = make([]byte, bufSize)
		b.riovs[i].Base = &b.rbufs[i][0]
		b.riovs[i].SetLen(bufSize)
		b.rmsgs[i].Hdr.Iov = &b.riovs[i]
		b.rmsgs[i].Hdr.SetIovlen(1)
		b.rmsgs[i].Hdr.Name = (*byte)(unsafe.Pointer(&b.rnames[i]))
	}
	b.oob = make([]byte, udpsys.GSOCtrlLen)
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
		_ = udpsys.SetBuffer(int(fd), unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, bytes)
		_ = udpsys.SetBuffer(int(fd), unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, bytes)
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
		b.rctl[i] = make([]byte, udpsys.RxCtrlLen)
		b.rmsgs[i].Hdr.Control = &b.rctl[i][0]
	}
	return true
}

// ReadBatch waits for at least one datagram and returns up to a batch of
// them. The slices are valid until the next ReadBatch.
func (b *batchConn) ReadBatch() ([]datagram, error) {
	var n int
	var serr error
	for i := range b.rmsgs {
		b.rmsgs[i].Hdr.Namelen = udpsys.SockaddrLen
		b.rmsgs[i].Hdr.Flags = 0
		if b.rctl != nil {
			b.rmsgs[i].Hdr.SetControllen(len(b.rctl[i]))
		}
	}
	err := b.rc.Read(func(fd uintptr) bool {
		r, e := udpsys.Recvmmsg(fd, b.rmsgs)
		if e == unix.EAGAIN {
			return false
		}
		if e != 0 {
			serr = e
		}
		n = r
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
		from := udpsys.GetSockaddr(&b.rnames[i])
		seg := 0
		if b.rctl != nil && b.rmsgs[i].Hdr.Controllen > 0 {
			seg, _, _ = udpsys.ParseRxCmsgs(b.rctl[i][:b.rmsgs[i].Hdr.Controllen])
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

// putName fills b.sname with dst in the socket's family and returns its
// pointer and length; a zero dst means "connected socket, no name". A dst
// the socket's family cannot reach (IPv6 on an IPv4 socket) is an error.
func (b *batchConn) putName(dst netip.AddrPort) (*byte, uint32, error) {
	if !dst.IsValid() {
		return nil, 0, nil
	}
	n := udpsys.PutSockaddr(&b.sname, b.sockFa, dst)
	if n == 0 {
		return nil, 0, fmt.Errorf("destination %v: not reachable from this socket's address family", dst)
	}
	return (*byte)(unsafe.Pointer(&b.sname)), n, nil
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
	name, namelen, err := b.putName(dst)
	if err != nil {
		return 0, err
	}
	if b.gso && nseg > 1 {
		udpsys.PutGSOCmsg(b.oob, uint16(segSize))
		var iov unix.Iovec
		iov.Base = &buf[0]
		iov.SetLen(len(buf))
		msg := unix.Msghdr{Name: name, Namelen: namelen, Iov: &iov, Control: &b.oob[0]}
		msg.SetIovlen(1)
		msg.SetControllen(len(b.oob))
		var serr syscall.Errno
		err := b.rc.Write(func(fd uintptr) bool {
			e := udpsys.Sendmsg(fd, &msg)
			if e == unix.EAGAIN {
				return false
			}
			serr = e
			return true
		})
		if err != nil {
			return 0, err
		}
		switch {
		case serr == 0:
			b.Stats.GSOSends++
			return nseg, nil
		case serr == unix.ENOBUFS:
			return 0, nil
		case udpsys.IsGSOUnsupported(serr):
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
			r, e := udpsys.Sendmmsg(fd, b.smsgs[sent:nseg])
			if e == unix.EAGAIN {
				return false
			}
			serr = e
			n = r
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

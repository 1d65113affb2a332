package dataplane

import (
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hybridrelay/hybridrelay/pkg/dataplane/udpsys"
)

// The gso datapath's sends: one planned run as a UDP_SEGMENT super-packet
// (sendmsg), the rest through sendmmsg, the fallbacks when the kernel
// refuses GSO, and datagrams that must be allowed to fragment.

// errClosed stands for "the socket was closed while its datagrams were
// queued": RawConn.Write refused to run, so nothing touched the fd number.
const errClosed = unix.EBADF

// write runs one sendmsg (single) or sendmmsg over msgs under the socket's
// RawConn, which holds the fd and waits for writability on EAGAIN.
func (st *batchState) write(s *gsoSock, msgs []unix.Mmsghdr, single bool) (int, syscall.Errno) {
	st.wMsgs, st.wSingle, st.wDone, st.wErr = msgs, single, 0, 0
	if err := s.rc.Write(st.writeFn); err != nil {
		return st.wDone, errClosed
	}
	return st.wDone, st.wErr
}

func (st *batchState) doWrite(fd uintptr) bool {
	if st.wSingle {
		e := udpsys.Sendmsg(fd, &st.wMsgs[0].Hdr)
		if e == unix.EAGAIN {
			return false
		}
		if e == 0 {
			st.wDone = 1
		}
		st.wErr = e
		return true
	}
	for st.wDone < len(st.wMsgs) {
		n, e := udpsys.Sendmmsg(fd, st.wMsgs[st.wDone:])
		if e == unix.EAGAIN {
			return false
		}
		st.tally.mmsgCalls++
		if e != 0 {
			st.wErr = e
			return true
		}
		st.wDone += n
	}
	return true
}

// sendGSO sends one planned run as a single sendmsg with UDP_SEGMENT.
func (st *batchState) sendGSO(op sendOp) {
	first := int(op.first)
	count := int(op.count)
	r0 := st.recs[first]
	rl := st.recs[first+count-1]
	s := st.recSock[first]
	t := &st.tally
	nl := udpsys.PutSockaddr(&st.txNames[0], s.family, r0.dst)
	if nl == 0 {
		t.errs += uint64(count)
		return
	}
	total := int(rl.off + rl.n - r0.off)
	st.txIov[0].Base = &st.arena[r0.off]
	st.txIov[0].SetLen(total)
	h := &st.txMsgs[0].Hdr
	h.Name = (*byte)(unsafe.Pointer(&st.txNames[0]))
	h.Namelen = nl
	h.Iov = &st.txIov[0]
	h.SetIovlen(1)
	udpsys.PutGSOCmsg(st.gsoCtrl, uint16(op.seg))
	h.Control = &st.gsoCtrl[0]
	h.SetControllen(len(st.gsoCtrl))
	h.Flags = 0
	var e syscall.Errno
	if hook := st.dp.testGSOErr; hook != nil {
		e = hook()
	}
	if e == 0 {
		_, e = st.write(s, st.txMsgs[:1], true)
	}
	switch {
	case e == 0:
		t.gsoSends++
		t.gsoSegs += uint64(count)
		t.pkts += uint64(count)
		t.bytes += uint64(total)
	case e == errClosed:
		t.drops += uint64(count)
	case udpsys.IsGSOUnsupported(e):
		s.fallback(e)
		st.sendEach(first, count)
	case e == unix.EMSGSIZE:
		// A segment larger than this route's MTU: a property of the
		// route, not of the kernel, so no sticky fallback.
		st.sendEach(first, count)
	default:
		t.errs += uint64(count)
	}
}

// sendEach sends records [first, first+count), all on one socket, one
// datagram per message: sendmsg for one, sendmmsg for more.
func (st *batchState) sendEach(first, count int) {
	s := st.recSock[first]
	t := &st.tally
	k := 0
	for i := first; i < first+count; i++ {
		r := st.recs[i]
		nl := udpsys.PutSockaddr(&st.txNames[k], s.family, r.dst)
		if nl == 0 {
			t.errs++
			continue
		}
		st.txIov[k].Base = &st.arena[r.off]
		if r.n == 0 {
			st.txIov[k].Base = nil
		}
		st.txIov[k].SetLen(int(r.n))
		h := &st.txMsgs[k].Hdr
		h.Name = (*byte)(unsafe.Pointer(&st.txNames[k]))
		h.Namelen = nl
		h.Iov = &st.txIov[k]
		h.SetIovlen(1)
		h.Control = nil
		h.SetControllen(0)
		h.Flags = 0
		k++
	}
	st.sendMsgs(s, st.txMsgs[:k], st.txIov[:k])
}

// sendMsgs sends prepared messages, skipping one that fails and going on
// with the rest (sendmmsg reports an error only for its first message).
func (st *batchState) sendMsgs(s *gsoSock, msgs []unix.Mmsghdr, iovs []unix.Iovec) {
	t := &st.tally
	for len(msgs) > 0 {
		single := len(msgs) == 1
		done, e := st.write(s, msgs, single)
		if single {
			t.singles++
		} else {
			t.mmsgPkts += uint64(done)
		}
		t.pkts += uint64(done)
		for i := 0; i < done; i++ {
			t.bytes += uint64(iovs[i].Len)
		}
		msgs, iovs = msgs[done:], iovs[done:]
		if e == errClosed {
			t.drops += uint64(len(msgs))
			return
		}
		if e == unix.EMSGSIZE && len(msgs) > 0 && !s.relay && (s.family == unix.AF_INET || isMapped(&msgs[0])) {
			st.sendFragmentable(s, msgs[:1], iovs[:1])
			msgs, iovs = msgs[1:], iovs[1:]
			continue
		}
		if e == unix.EMSGSIZE && len(msgs) > 0 && s.df.Load() {
			// A relay socket with DONT-FRAGMENT: above the path MTU,
			// not sent, by design (RFC 8656 section 14).
			t.drops++
			msgs, iovs = msgs[1:], iovs[1:]
			continue
		}
		if e != 0 && len(msgs) > 0 {
			t.errs++
			msgs, iovs = msgs[1:], iovs[1:]
		}
	}
}

// sendDirect sends one datagram too large for the arena without copying.
func (st *batchState) sendDirect(s *gsoSock, p []byte, dst netip.AddrPort) {
	t := &st.tally
	nl := udpsys.PutSockaddr(&st.txNames[0], s.family, dst)
	if nl == 0 {
		t.errs++
		return
	}
	st.txIov[0].Base = &p[0]
	st.txIov[0].SetLen(len(p))
	h := &st.txMsgs[0].Hdr
	h.Name = (*byte)(unsafe.Pointer(&st.txNames[0]))
	h.Namelen = nl
	h.Iov = &st.txIov[0]
	h.SetIovlen(1)
	h.Control = nil
	h.SetControllen(0)
	h.Flags = 0
	st.sendMsgs(s, st.txMsgs[:1], st.txIov[:1])
	st.publish()
}

// isMapped reports whether a message to an AF_INET6 socket goes to an
// IPv4-mapped address (IPv4 on the wire, so IP_MTU_DISCOVER applies).
func isMapped(m *unix.Mmsghdr) bool {
	sa := (*udpsys.Sockaddr)(unsafe.Pointer(m.Hdr.Name))
	return netip.AddrFrom16(sa.Addr).Is4In6()
}

// sendFragmentable sends one IPv4 datagram larger than the path MTU on a
// listener socket the way plain does: under IP_PMTUDISC_WANT, so the kernel
// fragments it without DF. (Relay sockets never toggle: their policy,
// DO or DONT, is fixed by SetDontFragment.)
// The socket is back to IP_PMTUDISC_DO when it returns. (Another goroutine
// sending on the same socket meanwhile may see its datagrams leave without
// DF; datagrams above the MTU are rare on a TURN relay.)
func (st *batchState) sendFragmentable(s *gsoSock, msg []unix.Mmsghdr, iov []unix.Iovec) {
	t := &st.tally
	setPMTU := func(v int) {
		_ = s.rc.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, v) })
	}
	setPMTU(unix.IP_PMTUDISC_WANT)
	done, e := st.write(s, msg, true)
	setPMTU(unix.IP_PMTUDISC_DO)
	t.singles++
	switch {
	case done == 1:
		t.pkts++
		t.bytes += uint64(iov[0].Len)
	case e == errClosed:
		t.drops++
	default:
		t.errs++
	}
}

package dataplane

import (
	"net/netip"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hybridrelay/hybridrelay/pkg/dataplane/udpsys"
)

// The per-goroutine batch state of the gso datapath: the receive buffers of
// one recvmmsg batch, the handler's queued sends, and flushing them at the
// end of the batch.

// batchState is what one goroutine needs for a read batch and its sends.
// It is allocated once (sync.Pool) and reused, so steady state allocates
// nothing per packet.
type batchState struct {
	dp    *gsoDP
	cur   *gsoSock // the socket whose goroutine holds this state
	slot  int
	large bool // from dp.large (BatchSize messages), else dp.small

	slab    []byte // BatchSize slots of slot bytes
	rxMsgs  []unix.Mmsghdr
	rxIov   []unix.Iovec
	rxNames []udpsys.Sockaddr
	rxCtrl  []byte

	arena   []byte // payloads queued by Send, back to back
	used    int
	recs    []txRec
	recSock []*gsoSock // parallel to recs
	ops     []sendOp
	txMsgs  []unix.Mmsghdr
	txIov   []unix.Iovec
	txNames []udpsys.Sockaddr
	gsoCtrl []byte
	tally   txTally

	// arguments and results of writeFn (a method value made once, so the
	// RawConn.Write call does not allocate a closure per send).
	writeFn func(uintptr) bool
	wMsgs   []unix.Mmsghdr
	wSingle bool
	wDone   int
	wErr    syscall.Errno
}

// txTally counts sends during one flush; added to cur's counters at its end.
type txTally struct {
	pkts, bytes, gsoSends, gsoSegs, mmsgCalls, mmsgPkts, singles, errs, drops uint64
}

const (
	// rxSlot holds the largest UDP payload (65535 - 8) and the largest
	// UDP_GRO read (the kernel stops coalescing at 64 KiB).
	rxSlot = 65536
	// txArena bounds the bytes queued between two flushes by a large
	// state; a Send that does not fit flushes first. Small states have
	// smallArena.
	txArena    = 512 << 10
	smallArena = 64 << 10
	// smallBatch is the number of messages of a small state.
	smallBatch = 4
)

func (dp *gsoDP) newState(large bool) *batchState {
	b := dp.opts.BatchSize
	arena := txArena
	maxRecs := min(max(4*b, 64), 1024) // sendmmsg takes at most UIO_MAXIOV (1024)
	if !large && b > smallBatch {
		b, arena, maxRecs = smallBatch, smallArena, 64
	}
	st := &batchState{
		dp:      dp,
		large:   large,
		slot:    rxSlot,
		slab:    make([]byte, b*rxSlot),
		rxMsgs:  make([]unix.Mmsghdr, b),
		rxIov:   make([]unix.Iovec, b),
		rxNames: make([]udpsys.Sockaddr, b),
		rxCtrl:  make([]byte, b*udpsys.RxCtrlLen),
		arena:   make([]byte, arena),
		recs:    make([]txRec, 0, maxRecs),
		recSock: make([]*gsoSock, maxRecs),
		ops:     make([]sendOp, 0, maxRecs),
		txMsgs:  make([]unix.Mmsghdr, maxRecs),
		txIov:   make([]unix.Iovec, maxRecs),
		txNames: make([]udpsys.Sockaddr, maxRecs),
		gsoCtrl: make([]byte, udpsys.GSOCtrlLen),
	}
	for i := range st.rxMsgs {
		st.rxIov[i].Base = &st.slab[i*rxSlot]
		st.rxIov[i].SetLen(rxSlot)
		h := &st.rxMsgs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&st.rxNames[i]))
		h.Iov = &st.rxIov[i]
		h.SetIovlen(1)
		h.Control = &st.rxCtrl[i*udpsys.RxCtrlLen]
	}
	st.writeFn = st.doWrite
	return st
}

func (dp *gsoDP) getState(s *gsoSock, large bool) *batchState {
	pool := &dp.small
	if dp.opts.BatchSize <= smallBatch {
		pool = &dp.large // small and large are the same size
	} else if large {
		if dp.largeInUse.Add(1) <= dp.maxLarge {
			pool = &dp.large
		} else {
			dp.largeInUse.Add(-1)
		}
	}
	st := pool.Get().(*batchState)
	st.cur = s
	return st
}

func (dp *gsoDP) putState(st *batchState) {
	st.cur = nil
	if !st.large {
		dp.small.Put(st)
		return
	}
	if dp.opts.BatchSize > smallBatch {
		dp.largeInUse.Add(-1)
	}
	dp.large.Put(st)
}

func (st *batchState) resetRx() {
	for i := range st.rxMsgs {
		m := &st.rxMsgs[i]
		m.Hdr.Namelen = udpsys.SockaddrLen
		m.Hdr.SetControllen(udpsys.RxCtrlLen)
		m.Hdr.Flags = 0
		m.Len = 0
	}
}

// handleBatch hands the n datagrams of a read to h, splitting GRO reads,
// then flushes what h queued.
func (st *batchState) handleBatch(n int, h Handler) {
	s := st.cur
	c := s.conn
	var pkts, bytes, gro, drops, stale uint64
	// A datagram received before oldest has waited longer than the bound
	// (the kernel stamps it when the socket queues it; CLOCK_REALTIME).
	var oldest int64
	if bound := st.dp.opts.MaxQueueDelay; bound > 0 {
		oldest = time.Now().UnixNano() - int64(bound)
	}
	for i := 0; i < n; i++ {
		m := &st.rxMsgs[i]
		ln := int(m.Len)
		if m.Hdr.Flags&unix.MSG_TRUNC != 0 || ln > st.slot {
			drops++ // larger than any UDP payload: cannot happen, never relay a cut datagram
			continue
		}
		ctrl := st.rxCtrl[i*udpsys.RxCtrlLen:]
		ctrl = ctrl[:min(int(m.Hdr.Controllen), len(ctrl))]
		seg, ovfl, haveOvfl, stamp := udpsys.ParseRxCmsgsStamp(ctrl)
		if haveOvfl {
			s.ctr.kernelDrops.Store(uint64(ovfl))
		}
		if stamp != 0 && stamp < oldest {
			stale += uint64(udpsys.Segments(ln, seg))
			continue
		}
		from := udpsys.GetSockaddr(&st.rxNames[i])
		buf := st.slab[i*st.slot : i*st.slot+ln]
		bytes += uint64(ln)
		if seg > 0 && ln > seg {
			// One GRO read: datagrams of seg bytes from one source, the
			// last possibly shorter (udp_gro_receive only merges
			// same-size segments of one flow).
			gro++
			for off := 0; off < ln; off += seg {
				h(st, c, from, buf[off:min(off+seg, ln)])
				pkts++
			}
			continue
		}
		h(st, c, from, buf)
		pkts++
	}
	st.flush()
	ctr := &s.ctr
	ctr.readCalls.Add(1)
	ctr.rxPackets.Add(pkts)
	ctr.rxBytes.Add(bytes)
	if gro > 0 {
		ctr.groReads.Add(gro)
	}
	if drops > 0 {
		ctr.drops.Add(drops)
	}
	if stale > 0 {
		ctr.staleDrops.Add(stale)
	}
	if pkts > 0 {
		ctr.batch[BatchBucket(int(pkts))].Add(1)
	}
}

// Send implements Tx: it copies payload into the arena and queues it.
func (st *batchState) Send(c Conn, payload []byte, dst netip.AddrPort) {
	gc, ok := c.(*gsoConn)
	if !ok || gc.dp != st.dp {
		_ = c.WriteTo(payload, dst) // a foreign Conn: counted by its own datapath
		return
	}
	s := gc.socks[0]
	if len(gc.socks) > 1 {
		// A listener group: reply from this goroutine's own socket when
		// it is in the group (every member has the same address), else
		// spread over the group by loop.
		if st.cur.conn == gc {
			s = st.cur
		} else {
			s = gc.socks[st.cur.loop%len(gc.socks)]
		}
	}
	if len(payload) > len(st.arena) {
		st.flush()
		st.sendDirect(s, payload, dst)
		return
	}
	if len(st.recs) == cap(st.recs) || st.used+len(payload) > len(st.arena) {
		st.flush()
	}
	off := st.used
	st.used += copy(st.arena[off:], payload)
	i := len(st.recs)
	st.recs = append(st.recs, txRec{
		sock: s.id,
		dst:  dst,
		off:  int32(off),
		n:    int32(len(payload)),
		gso:  st.dp.feat.UDPSegment && !s.gsoOff.Load(),
	})
	st.recSock[i] = s
}

// flush sends everything queued, as planned by planSends, and charges the
// counters to the socket whose goroutine flushes.
func (st *batchState) flush() {
	if len(st.recs) == 0 {
		return
	}
	st.ops = planSends(st.recs, st.ops, st.dp.lim)
	for _, op := range st.ops {
		if op.kind == opGSO && !st.recSock[op.first].gsoOff.Load() {
			st.sendGSO(op)
			continue
		}
		st.sendEach(int(op.first), int(op.count))
	}
	clear(st.recSock[:len(st.recs)]) // do not keep closed sockets alive
	st.recs = st.recs[:0]
	st.used = 0
	st.publish()
}

func (st *batchState) publish() {
	t := &st.tally
	if *t == (txTally{}) {
		return
	}
	c := &st.cur.ctr
	c.txPackets.Add(t.pkts)
	c.txBytes.Add(t.bytes)
	c.gsoSends.Add(t.gsoSends)
	c.gsoSegs.Add(t.gsoSegs)
	c.mmsgCalls.Add(t.mmsgCalls)
	c.mmsgPkts.Add(t.mmsgPkts)
	c.singles.Add(t.singles)
	c.txErrors.Add(t.errs)
	c.drops.Add(t.drops)
	*t = txTally{}
}

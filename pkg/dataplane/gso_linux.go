package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// gsoDP is the batched datapath (see doc.go). Every socket has one
// goroutine reading it with recvmmsg through its RawConn, so Go's netpoller
// parks the goroutine while the socket is empty. What the handler sends
// during a read batch is queued in the batch state of that goroutine and
// leaves at the end of the batch (flush), planned by planSends.
type gsoDP struct {
	opts GSOOptions
	feat Features
	log  *slog.Logger
	lim  planLimits

	mu      sync.Mutex // guards conns, closed, retired; never taken per packet
	conns   map[*gsoConn]struct{}
	closed  bool
	retired []Stats // per loop: counters of sockets already closed

	nextLoop atomic.Uint32
	nextID   atomic.Uint64
	// Batch states, one held by each goroutine while it reads: small ones
	// (smallBatch messages) for a socket's first read after waking, large
	// ones (BatchSize) once a read came back full.
	small, large sync.Pool
	// largeInUse counts large states held; at most maxLarge, beyond which
	// a socket goes on with small ones (bounds memory when the host is so
	// loaded that many relay sockets have queues at once).
	largeInUse atomic.Int32
	maxLarge   int32
	warned     atomic.Bool

	// testGSOErr, set only by tests, replaces the result of every
	// UDP_SEGMENT sendmsg with its return value when that is not 0.
	testGSOErr func() syscall.Errno
}

// NewGSO returns the batched datapath: recvmmsg (+UDP_GRO) reads, sends
// queued per read batch and flushed as UDP_SEGMENT sendmsg runs and
// sendmmsg. Without kernel UDP_SEGMENT support it still batches (sendmmsg
// only) and logs why.
func NewGSO(opts GSOOptions) (Datapath, error) {
	opts = opts.withDefaults()
	dp := &gsoDP{
		opts:    opts,
		feat:    DetectFeatures(),
		log:     opts.Logger,
		lim:     defaultPlanLimits,
		conns:   map[*gsoConn]struct{}{},
		retired: make([]Stats, opts.Loops),
	}
	dp.maxLarge = int32(opts.Loops + 2*runtime.GOMAXPROCS(0))
	dp.small.New = func() any { return dp.newState(false) }
	dp.large.New = func() any { return dp.newState(true) }
	if !dp.feat.UDPSegment || !dp.feat.UDPGRO {
		dp.log.Warn("gso datapath: kernel lacks UDP offloads, batching without them",
			"udp_segment", dp.feat.UDPSegment, "udp_gro", dp.feat.UDPGRO,
			"kernel", dp.feat.Kernel, "reason", dp.feat.Reason)
	}
	return dp, nil
}

func (dp *gsoDP) Name() string { return "gso" }

// Features returns what DetectFeatures found when the datapath was made.
func (dp *gsoDP) Features() Features { return dp.feat }

func (dp *gsoDP) Listen(addr netip.AddrPort, h Handler) (Conn, error) {
	return dp.open(addr, h, dp.opts.Loops, true)
}

func (dp *gsoDP) OpenRelay(addr netip.AddrPort, h Handler) (Conn, error) {
	return dp.open(addr, h, 1, false)
}

// sockCounters are one socket's counters. Receive counters are written by
// the socket's own goroutine; send counters by the goroutine whose batch
// flushed (its own socket is charged) and by WriteTo.
type sockCounters struct {
	readCalls, wouldBlock, rxPackets, rxBytes, groReads, kernelDrops atomic.Uint64
	staleDrops                                                       atomic.Uint64
	batch                                                            [len(BatchHistogramBuckets)]atomic.Uint64
	txPackets, txBytes, gsoSends, gsoSegs, mmsgCalls, mmsgPkts       atomic.Uint64
	singles, txErrors, fallbacks, drops                              atomic.Uint64
}

func (c *sockCounters) snapshot() Stats {
	s := Stats{
		ReadCalls:      c.readCalls.Load(),
		ReadWouldBlock: c.wouldBlock.Load(),
		RxPackets:      c.rxPackets.Load(),
		RxBytes:        c.rxBytes.Load(),
		RxGROReads:     c.groReads.Load(),
		RxKernelDrops:  c.kernelDrops.Load(),
		RxStaleDrops:   c.staleDrops.Load(),
		TxPackets:      c.txPackets.Load(),
		TxBytes:        c.txBytes.Load(),
		TxGSOSends:     c.gsoSends.Load(),
		TxGSOSegments:  c.gsoSegs.Load(),
		TxMmsgCalls:    c.mmsgCalls.Load(),
		TxMmsgPackets:  c.mmsgPkts.Load(),
		TxSingleSends:  c.singles.Load(),
		TxErrors:       c.txErrors.Load(),
		GSOFallbacks:   c.fallbacks.Load(),
		Drops:          c.drops.Load(),
	}
	for i := range s.BatchSizes {
		s.BatchSizes[i] = c.batch[i].Load()
	}
	return s
}

// gsoConn is a listener (one socket per loop, SO_REUSEPORT) or a relay
// socket (one socket).
type gsoConn struct {
	dp        *gsoDP
	socks     []*gsoSock
	local     netip.AddrPort
	relay     bool
	wg        sync.WaitGroup // one per socket goroutine
	closeOnce sync.Once
	closeErr  error
}

type gsoSock struct {
	conn   *gsoConn
	id     uint64
	uc     *net.UDPConn
	rc     syscall.RawConn
	family int // AF_INET or AF_INET6
	loop   int // index for LoopStats
	relay  bool
	// df: a relay socket under SetDontFragment(true) (IP_PMTUDISC_DO): a
	// datagram refused with EMSGSIZE is dropped, never resent.
	df     atomic.Bool
	gsoOff atomic.Bool
	ctr    sockCounters
}

func (dp *gsoDP) open(addr netip.AddrPort, h Handler, n int, reuse bool) (Conn, error) {
	if h == nil {
		return nil, errors.New("open udp socket: nil handler")
	}
	c := &gsoConn{dp: dp, relay: !reuse}
	lc := net.ListenConfig{Control: func(_, _ string, raw syscall.RawConn) error {
		var serr error
		if err := raw.Control(func(fd uintptr) { serr = dp.setup(int(fd), reuse) }); err != nil {
			return err
		}
		return serr
	}}
	bind := addr
	closeAll := func() {
		for _, s := range c.socks {
			s.uc.Close()
		}
	}
	relayLoop := int(dp.nextLoop.Add(1)-1) % dp.opts.Loops
	for i := 0; i < n; i++ {
		pc, err := lc.ListenPacket(context.Background(), udpNetwork(addr.Addr()), hostPort(bind))
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("open udp socket %s: %w", bind, err)
		}
		uc := pc.(*net.UDPConn)
		if i == 0 {
			c.local = uc.LocalAddr().(*net.UDPAddr).AddrPort()
			bind = netip.AddrPortFrom(addr.Addr(), c.local.Port())
		}
		s := &gsoSock{conn: c, id: dp.nextID.Add(1), uc: uc, loop: i, relay: !reuse}
		if !reuse {
			s.loop = relayLoop
		}
		c.socks = append(c.socks, s)
		rc, err := uc.SyscallConn()
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("open udp socket %s: %w", bind, err)
		}
		s.rc = rc
		var serr error
		if err := rc.Control(func(fd uintptr) {
			sa, err := unix.Getsockname(int(fd))
			switch sa.(type) {
			case *unix.SockaddrInet4:
				s.family = unix.AF_INET
			case *unix.SockaddrInet6:
				s.family = unix.AF_INET6
			default:
				serr = fmt.Errorf("getsockname: %v", err)
			}
		}); err != nil || serr != nil {
			closeAll()
			return nil, fmt.Errorf("open udp socket %s: %w", bind, errors.Join(err, serr))
		}
		if s.relay {
			// No DONT-FRAGMENT until the allocation says otherwise.
			if err := setDontFragment(rc, c.local, false); err != nil {
				closeAll()
				return nil, fmt.Errorf("open udp socket %s: %w", bind, err)
			}
		}
	}
	dp.mu.Lock()
	if dp.closed {
		dp.mu.Unlock()
		closeAll()
		return nil, errors.New("open udp socket: datapath closed")
	}
	dp.conns[c] = struct{}{}
	dp.mu.Unlock()
	for _, s := range c.socks {
		c.wg.Add(1)
		go s.serve(h)
	}
	return c, nil
}

func hostPort(a netip.AddrPort) string {
	if !a.Addr().IsValid() {
		return ":" + strconv.Itoa(int(a.Port()))
	}
	return a.String()
}

// setup runs before bind: SO_REUSEPORT for listener groups (the kernel
// spreads flows over the group by 4-tuple hash), large buffers, UDP_GRO and
// SO_RXQ_OVFL.
func (dp *gsoDP) setup(fd int, reuse bool) error {
	if reuse {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fmt.Errorf("SO_REUSEPORT: %w", err)
		}
	}
	// Buffers and drop counting are best effort: a socket without them
	// still works, it only drops sooner or does not say how much.
	if err := setBuffer(fd, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, dp.opts.SocketBuffer); err != nil {
		dp.log.Debug("gso datapath: SO_RCVBUF", "err", err)
	}
	if err := setBuffer(fd, unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, dp.opts.SocketBuffer); err != nil {
		dp.log.Debug("gso datapath: SO_SNDBUF", "err", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1)
	if dp.opts.MaxQueueDelay > 0 {
		if err := enableRxTimestamps(fd); err != nil {
			return fmt.Errorf("SO_TIMESTAMPNS (for max-queue-delay): %w", err)
		}
	}
	if reuse {
		// Listener IPv4 DF, the same as plain's listeners (kernel
		// default IP_PMTUDISC_WANT: DF when the datagram fits the path
		// MTU). The kernel path copies the peer's DF toward the client
		// (RFC 8656 section 14, preferred behaviour); a UDP socket does
		// not see the incoming DF without IP_RECVTOS-style cmsgs, so the
		// userspace path follows section 14's alternate behaviour there.
		// WANT itself cannot be used: it decides for a UDP_SEGMENT send
		// on the whole super-packet (__ip_make_skb: skb->len <= mtu), so
		// GSO segments would leave without DF. IP_PMTUDISC_DO sets DF on
		// everything; a datagram above the path MTU then fails with
		// EMSGSIZE and is resent under WANT (sendFragmentable),
		// fragmented as plain would. Harmless on IPv6-only sockets.
		// Relay sockets take their policy from SetDontFragment (open).
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
	}
	if dp.feat.UDPGRO {
		if err := unix.SetsockoptInt(fd, unix.SOL_UDP, unix.UDP_GRO, 1); err != nil {
			return fmt.Errorf("UDP_GRO: %w", err)
		}
	}
	return nil
}

func (c *gsoConn) LocalAddr() netip.AddrPort { return c.local }

// WriteTo sends one datagram at once on the first socket of the conn.
func (c *gsoConn) WriteTo(payload []byte, dst netip.AddrPort) error {
	s := c.socks[0]
	if _, err := s.uc.WriteToUDPAddrPort(payload, dst); err != nil {
		if s.df.Load() && errors.Is(err, syscall.EMSGSIZE) {
			s.ctr.drops.Add(1) // above the path MTU with DONT-FRAGMENT
		} else {
			s.ctr.txErrors.Add(1)
		}
		return fmt.Errorf("send to %s: %w", dst, err)
	}
	s.ctr.singles.Add(1)
	s.ctr.txPackets.Add(1)
	s.ctr.txBytes.Add(uint64(len(payload)))
	return nil
}

// SetDontFragment implements Conn (see datapath.go): IP_PMTUDISC_DO or
// IP_PMTUDISC_DONT on a relay socket, a no-op on listeners. Either policy
// gives every segment of a UDP_SEGMENT send the same DF bit. Under DONT a
// run whose segments exceed the path MTU fails as a whole with EMSGSIZE
// (udp_send_skb checks gso_size against the MTU) and is resent one datagram
// per message, which the kernel fragments; under DO those datagrams are
// refused again and dropped (Stats.Drops).
func (c *gsoConn) SetDontFragment(on bool) error {
	if !c.relay {
		return nil
	}
	for _, s := range c.socks {
		if err := setDontFragment(s.rc, c.local, on); err != nil {
			return fmt.Errorf("relay socket %s: %w", c.local, err)
		}
		s.df.Store(on)
	}
	return nil
}

// Close closes the sockets and waits for their goroutines, so no handler
// runs for this conn once Close has returned (as with plain, it must not be
// called from a handler serving this same conn).
func (c *gsoConn) Close() error {
	c.closeOnce.Do(func() {
		var errs []error
		for _, s := range c.socks {
			if err := s.uc.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		c.wg.Wait()
		dp := c.dp
		dp.mu.Lock()
		for _, s := range c.socks {
			dp.retired[s.loop].Add(s.ctr.snapshot())
		}
		delete(dp.conns, c)
		dp.mu.Unlock()
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

func (dp *gsoDP) Stats() Stats {
	var s Stats
	for _, l := range dp.LoopStats() {
		s.Add(l)
	}
	s.Datapath = "gso"
	s.Loops = dp.opts.Loops
	return s
}

// LoopStats implements LoopStatser.
func (dp *gsoDP) LoopStats() []Stats {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	out := make([]Stats, dp.opts.Loops)
	copy(out, dp.retired)
	for c := range dp.conns {
		for _, s := range c.socks {
			out[s.loop].Add(s.ctr.snapshot())
		}
	}
	for i := range out {
		out[i].Datapath = "gso"
		out[i].Loops = 1
	}
	return out
}

func (dp *gsoDP) Close() error {
	dp.mu.Lock()
	dp.closed = true
	conns := make([]*gsoConn, 0, len(dp.conns))
	for c := range dp.conns {
		conns = append(conns, c)
	}
	dp.mu.Unlock()
	var errs []error
	for _, c := range conns {
		if err := c.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// fallback turns UDP_SEGMENT off for s for good after a send failed with
// errno, warning once per datapath.
func (s *gsoSock) fallback(errno syscall.Errno) {
	if !s.gsoOff.CompareAndSwap(false, true) {
		return
	}
	s.ctr.fallbacks.Add(1)
	dp := s.conn.dp
	if dp.warned.CompareAndSwap(false, true) {
		dp.log.Warn("gso datapath: UDP_SEGMENT send failed, socket falls back to sendmmsg (further sockets logged at debug level)",
			"socket", s.conn.local, "err", errno)
	} else {
		dp.log.Debug("gso datapath: UDP_SEGMENT fallback", "socket", s.conn.local, "err", errno)
	}
}

// serve is the goroutine of one socket. It holds a batch state only while
// the socket has data: when recvmmsg finds it empty the state goes back to
// the pool before the goroutine parks, so thousands of idle relay sockets
// cost no buffers. After waking it reads with a small state (a relay socket
// at WebRTC rates has one or two datagrams waiting, and hundreds of them
// may be handling at once); a read that fills it switches to a large one.
func (s *gsoSock) serve(h Handler) {
	defer s.conn.wg.Done()
	dp := s.conn.dp
	var (
		st        *batchState
		n         int
		errno     syscall.Errno
		empty     uint64
		wantLarge bool
	)
	read := func(fd uintptr) bool {
		if st == nil {
			st = dp.getState(s, wantLarge)
		}
		st.resetRx()
		n, errno = recvmmsg(fd, st.rxMsgs)
		if errno == unix.EAGAIN {
			empty++
			dp.putState(st)
			st, wantLarge = nil, false
			return false // park until readable
		}
		return true
	}
	for {
		if err := s.rc.Read(read); err != nil {
			break // closed
		}
		if empty > 0 {
			s.ctr.wouldBlock.Add(empty)
			empty = 0
		}
		if errno != 0 || n <= 0 {
			// Not EAGAIN: a pending socket error (ICMP on a connected
			// socket, ENOMEM). It concerns an earlier datagram; go on.
			continue
		}
		st.handleBatch(n, h)
		if !st.large && n == len(st.rxMsgs) && dp.largeInUse.Load() < dp.maxLarge {
			dp.putState(st) // more is waiting: read in large batches
			st, wantLarge = nil, true
		}
	}
	if st != nil {
		dp.putState(st)
	}
}

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
	rxNames []sockaddrBuf
	rxCtrl  []byte

	arena   []byte // payloads queued by Send, back to back
	used    int
	recs    []txRec
	recSock []*gsoSock // parallel to recs
	ops     []sendOp
	txMsgs  []unix.Mmsghdr
	txIov   []unix.Iovec
	txNames []sockaddrBuf
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
		rxNames: make([]sockaddrBuf, b),
		rxCtrl:  make([]byte, b*rxCtrlLen),
		arena:   make([]byte, arena),
		recs:    make([]txRec, 0, maxRecs),
		recSock: make([]*gsoSock, maxRecs),
		ops:     make([]sendOp, 0, maxRecs),
		txMsgs:  make([]unix.Mmsghdr, maxRecs),
		txIov:   make([]unix.Iovec, maxRecs),
		txNames: make([]sockaddrBuf, maxRecs),
		gsoCtrl: make([]byte, gsoCtrlLen),
	}
	for i := range st.rxMsgs {
		st.rxIov[i].Base = &st.slab[i*rxSlot]
		st.rxIov[i].SetLen(rxSlot)
		h := &st.rxMsgs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&st.rxNames[i]))
		h.Iov = &st.rxIov[i]
		h.SetIovlen(1)
		h.Control = &st.rxCtrl[i*rxCtrlLen]
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
		m.Hdr.Namelen = sockaddrLen
		m.Hdr.SetControllen(rxCtrlLen)
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
		ctrl := st.rxCtrl[i*rxCtrlLen:]
		ctrl = ctrl[:min(int(m.Hdr.Controllen), len(ctrl))]
		seg, ovfl, haveOvfl, stamp := parseRxCmsgsStamp(ctrl)
		if haveOvfl {
			s.ctr.kernelDrops.Store(uint64(ovfl))
		}
		if stamp != 0 && stamp < oldest {
			stale += uint64(segments(ln, seg))
			continue
		}
		from := getSockaddr(&st.rxNames[i])
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
		e := sendmsg(fd, &st.wMsgs[0].Hdr)
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
		n, e := sendmmsg(fd, st.wMsgs[st.wDone:])
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
	nl := putSockaddr(&st.txNames[0], s.family, r0.dst)
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
	putGSOCmsg(st.gsoCtrl, uint16(op.seg))
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
	case isGSOUnsupported(e):
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
		nl := putSockaddr(&st.txNames[k], s.family, r.dst)
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
	nl := putSockaddr(&st.txNames[0], s.family, dst)
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
	sa := (*sockaddrBuf)(unsafe.Pointer(m.Hdr.Name))
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

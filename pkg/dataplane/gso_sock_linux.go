package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/hybridrelay/hybridrelay/pkg/dataplane/udpsys"
)

// The gso datapath's sockets: opening and configuring them (one per loop
// with SO_REUSEPORT for a listener), their Conn, their counters and the
// receive loop each runs.

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
	if err := udpsys.SetBuffer(fd, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, dp.opts.SocketBuffer); err != nil {
		dp.log.Debug("gso datapath: SO_RCVBUF", "err", err)
	}
	if err := udpsys.SetBuffer(fd, unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, dp.opts.SocketBuffer); err != nil {
		dp.log.Debug("gso datapath: SO_SNDBUF", "err", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1)
	if dp.opts.MaxQueueDelay > 0 {
		if err := udpsys.EnableRxTimestamps(fd); err != nil {
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
		n, errno = udpsys.Recvmmsg(fd, st.rxMsgs)
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

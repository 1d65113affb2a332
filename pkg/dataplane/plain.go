package dataplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
)

// maxDatagram is the largest UDP payload a socket read accepts.
const maxDatagram = 65535

// plain is the baseline datapath: each socket has one goroutine that reads
// one datagram per system call, and every send is one system call.
type plain struct {
	mu     sync.Mutex // guards conns and closed
	conns  map[*plainConn]struct{}
	closed bool

	counters plainCounters
}

type plainCounters struct {
	readCalls, rxPackets, rxBytes atomic.Uint64
	txPackets, txBytes, txErrors  atomic.Uint64
	drops                         atomic.Uint64
	batchOfOne                    atomic.Uint64
}

// NewPlain returns the one-syscall-per-datagram datapath.
func NewPlain() Datapath {
	return &plain{conns: map[*plainConn]struct{}{}}
}

func (p *plain) Name() string { return "plain" }

// Listen opens a listener socket. It keeps the kernel's default IPv4 DF
// policy, IP_PMTUDISC_WANT: DF on every datagram that fits the path MTU,
// larger ones fragmented without DF. The kernel path copies the peer's DF
// toward the client (RFC 8656 section 14, preferred behaviour); a UDP
// socket does not see the incoming DF (it would take IP_RECVTOS-style
// cmsgs), so the userspace path follows section 14's alternate behaviour
// there and does not copy it.
func (p *plain) Listen(addr netip.AddrPort, h Handler) (Conn, error) {
	return p.open(addr, h, false)
}

func (p *plain) OpenRelay(addr netip.AddrPort, h Handler) (Conn, error) {
	return p.open(addr, h, true)
}

func (p *plain) open(addr netip.AddrPort, h Handler, relay bool) (Conn, error) {
	if h == nil {
		return nil, errors.New("open udp socket: nil handler")
	}
	uc, err := net.ListenUDP(udpNetwork(addr.Addr()), net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, fmt.Errorf("open udp socket %s: %w", addr, err)
	}
	c := &plainConn{dp: p, uc: uc, local: uc.LocalAddr().(*net.UDPAddr).AddrPort(), relay: relay, done: make(chan struct{})}
	if relay {
		rc, err := uc.SyscallConn()
		if err == nil {
			c.rc = rc
			// No DONT-FRAGMENT until the allocation says otherwise.
			err = setDontFragment(rc, c.local, false)
		}
		if err != nil {
			uc.Close()
			return nil, fmt.Errorf("open udp socket %s: %w", addr, err)
		}
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		uc.Close()
		return nil, errors.New("open udp socket: datapath closed")
	}
	p.conns[c] = struct{}{}
	p.mu.Unlock()
	go c.readLoop(h)
	return c, nil
}

// udpNetwork keeps an IPv4 socket IPv4-only and an IPv6 one IPv6-only, so a
// relay address of one family never receives the other (RFC 8656 section
// 7.1: a relayed transport address has one family).
func udpNetwork(a netip.Addr) string {
	switch {
	case a.Is4():
		return "udp4"
	case a.Is6() && !a.Is4In6():
		return "udp6"
	}
	return "udp"
}

func (p *plain) Stats() Stats {
	c := &p.counters
	s := Stats{
		Datapath:  "plain",
		ReadCalls: c.readCalls.Load(),
		RxPackets: c.rxPackets.Load(),
		RxBytes:   c.rxBytes.Load(),
		TxPackets: c.txPackets.Load(),
		TxBytes:   c.txBytes.Load(),
		TxErrors:  c.txErrors.Load(),
		Drops:     c.drops.Load(),
	}
	s.TxSingleSends = s.TxPackets + s.TxErrors
	s.BatchSizes[0] = c.batchOfOne.Load()
	p.mu.Lock()
	s.Loops = len(p.conns)
	p.mu.Unlock()
	return s
}

func (p *plain) Close() error {
	p.mu.Lock()
	p.closed = true
	conns := make([]*plainConn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	var errs []error
	for _, c := range conns {
		if err := c.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

type plainConn struct {
	dp        *plain
	uc        *net.UDPConn
	rc        syscall.RawConn // relay sockets only
	local     netip.AddrPort
	relay     bool
	df        atomic.Bool // SetDontFragment(true) applied
	closeOnce sync.Once
	done      chan struct{} // closed when readLoop has returned
}

func (c *plainConn) LocalAddr() netip.AddrPort { return c.local }

func (c *plainConn) WriteTo(payload []byte, dst netip.AddrPort) error {
	ctr := &c.dp.counters
	if _, err := c.uc.WriteToUDPAddrPort(payload, dst); err != nil {
		if c.df.Load() && errors.Is(err, syscall.EMSGSIZE) {
			// Above the path MTU with DONT-FRAGMENT: not sent, by
			// design (RFC 8656 section 14).
			ctr.drops.Add(1)
		} else {
			ctr.txErrors.Add(1)
		}
		return fmt.Errorf("send to %s: %w", dst, err)
	}
	ctr.txPackets.Add(1)
	ctr.txBytes.Add(uint64(len(payload)))
	return nil
}

// SetDontFragment implements Conn (see datapath.go); a no-op on listeners.
func (c *plainConn) SetDontFragment(on bool) error {
	if !c.relay {
		return nil
	}
	if err := setDontFragment(c.rc, c.local, on); err != nil {
		return fmt.Errorf("relay socket %s: %w", c.local, err)
	}
	c.df.Store(on)
	return nil
}

func (c *plainConn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		err = c.uc.Close()
		<-c.done
		c.dp.mu.Lock()
		delete(c.dp.conns, c)
		c.dp.mu.Unlock()
	})
	return err
}

// plainTx writes each datagram as soon as it is queued.
type plainTx struct{}

func (plainTx) Send(c Conn, payload []byte, dst netip.AddrPort) {
	// Errors are counted by WriteTo; a relay does not retry datagrams.
	_ = c.WriteTo(payload, dst)
}

func (c *plainConn) readLoop(h Handler) {
	defer close(c.done)
	buf := make([]byte, maxDatagram)
	ctr := &c.dp.counters
	for {
		n, from, err := c.uc.ReadFromUDPAddrPort(buf)
		ctr.readCalls.Add(1)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// ICMP errors (ECONNREFUSED) surface here on Linux; they
			// concern one earlier send, not this socket.
			continue
		}
		ctr.rxPackets.Add(1)
		ctr.rxBytes.Add(uint64(n))
		ctr.batchOfOne.Add(1)
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		h(plainTx{}, c, from, buf[:n])
	}
}

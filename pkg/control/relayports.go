package control

import (
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// Relay sockets and the ports they hold: one relaySock per relayed
// transport address, the pool that hands out free ports of the configured
// range (RFC 8656 section 7.2: EVEN-PORT, RESERVATION-TOKEN) and gives
// them back once their socket is really closed.

// relaySock is one relayed transport address. Its allocation pointer is set
// once the allocation exists (a reserved socket has none yet), so the
// socket's handler needs no lookup.
type relaySock struct {
	s     *Server
	conn  dataplane.Conn
	addr  netip.AddrPort
	alloc atomic.Pointer[allocation]
}

func (r *relaySock) handle(tx dataplane.Tx, _ dataplane.Conn, from netip.AddrPort, p []byte) {
	defer r.s.recoverPacket()
	a := r.alloc.Load()
	if a == nil {
		r.s.stats.dropNoAllocation.Add(1)
		return
	}
	a.fromPeer(tx, r, netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), p)
}

// errNoPorts means the relay port range of an address is exhausted (508).
var errNoPorts = errors.New("relay port range exhausted")

// reservation is a relay socket held for a later Allocate carrying its
// RESERVATION-TOKEN (RFC 8656 section 7.2, EVEN-PORT with R).
type reservation struct {
	sock    *relaySock
	expires time.Time
}

// portPool owns the relay ports this server holds per relay IP and the
// EVEN-PORT reservations. Its lock is taken by its own methods only; the
// sockets themselves are opened and closed through the Server (open,
// release), which never calls back into the pool while the pool holds its
// lock, except release, which closes asynchronously.
type portPool struct {
	// Set by init, read-only afterwards.
	lo, hi  uint16
	open    func(netip.AddrPort) (*relaySock, error)
	release func(*relaySock) // closes the socket, then calls free

	mu                  sync.Mutex // guards the fields below
	used                map[netip.Addr]map[uint16]bool
	reservations        map[[8]byte]*reservation
	reservationLifetime time.Duration
}

func (p *portPool) init(lo, hi uint16, open func(netip.AddrPort) (*relaySock, error), release func(*relaySock)) {
	p.lo, p.hi, p.open, p.release = lo, hi, open, release
	p.used = map[netip.Addr]map[uint16]bool{}
	p.reservations = map[[8]byte]*reservation{}
	p.reservationLifetime = defaultReservationLifetime
}

// setReservationLifetime changes how long new reservations are held.
func (p *portPool) setReservationLifetime(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reservationLifetime = d
}

// openLocked opens a relay socket on ip:port and marks the port used.
// Caller holds p.mu.
func (p *portPool) openLocked(ip netip.Addr, port uint16) (*relaySock, error) {
	r, err := p.open(netip.AddrPortFrom(ip, port))
	if err != nil {
		return nil, err
	}
	m := p.used[ip]
	if m == nil {
		m = map[uint16]bool{}
		p.used[ip] = m
	}
	m[port] = true
	return r, nil
}

// openAt opens a relay socket on exactly addr (a restored allocation's
// relayed address), which must lie in the configured range.
func (p *portPool) openAt(addr netip.AddrPort) (*relaySock, error) {
	if addr.Port() < p.lo || addr.Port() > p.hi {
		return nil, fmt.Errorf("relay %s: port outside the configured range %d-%d", addr, p.lo, p.hi)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.openLocked(addr.Addr(), addr.Port())
}

// alloc opens a relay socket on ip with a random free port of the range
// (retrying the next port on EADDRINUSE). even asks for an even port;
// reserve additionally holds port+1 and returns its token.
func (p *portPool) alloc(ip netip.Addr, even, reserve bool, now time.Time) (*relaySock, [8]byte, error) {
	var tok [8]byte
	lo, hi := int(p.lo), int(p.hi)
	n := hi - lo + 1
	start := mrand.IntN(n)
	p.mu.Lock()
	defer p.mu.Unlock()
	used := p.used[ip]
	for i := 0; i < n; i++ {
		port := lo + (start+i)%n
		if (even || reserve) && port%2 != 0 {
			continue
		}
		if reserve && port+1 > hi {
			continue
		}
		if used[uint16(port)] || (reserve && used[uint16(port+1)]) {
			continue
		}
		r, err := p.openLocked(ip, uint16(port))
		if err != nil {
			if errors.Is(err, syscall.EADDRINUSE) {
				continue
			}
			return nil, tok, fmt.Errorf("open relay %s: %w", netip.AddrPortFrom(ip, uint16(port)), err)
		}
		if !reserve {
			return r, tok, nil
		}
		r2, err := p.openLocked(ip, uint16(port+1))
		if err != nil {
			p.release(r)
			if errors.Is(err, syscall.EADDRINUSE) {
				continue
			}
			return nil, tok, fmt.Errorf("open reserved relay %s: %w", netip.AddrPortFrom(ip, uint16(port+1)), err)
		}
		if _, err := rand.Read(tok[:]); err != nil {
			p.release(r)
			p.release(r2)
			return nil, tok, fmt.Errorf("reservation token: %w", err)
		}
		p.reservations[tok] = &reservation{sock: r2, expires: now.Add(p.reservationLifetime)}
		return r, tok, nil
	}
	return nil, tok, errNoPorts
}

// take returns the socket held for tok, if still valid.
func (p *portPool) take(tok [8]byte, now time.Time) *relaySock {
	p.mu.Lock()
	defer p.mu.Unlock()
	rv, ok := p.reservations[tok]
	if !ok {
		return nil
	}
	delete(p.reservations, tok)
	if !now.Before(rv.expires) {
		p.release(rv.sock)
		return nil
	}
	return rv.sock
}

func (p *portPool) expireReservations(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for tok, rv := range p.reservations {
		if !now.Before(rv.expires) {
			delete(p.reservations, tok)
			p.release(rv.sock)
		}
	}
}

func (p *portPool) closeReservations() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for tok, rv := range p.reservations {
		delete(p.reservations, tok)
		p.release(rv.sock)
	}
}

// free gives addr's port back (its socket is closed).
func (p *portPool) free(addr netip.AddrPort) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if m := p.used[addr.Addr()]; m != nil {
		delete(m, addr.Port())
		if len(m) == 0 {
			delete(p.used, addr.Addr())
		}
	}
}

// openRelay opens and registers the relay socket on addr (the pool's
// open; it keeps no pool state).
func (s *Server) openRelay(addr netip.AddrPort) (*relaySock, error) {
	r := &relaySock{s: s, addr: addr}
	c, err := s.dp.OpenRelay(addr, r.handle)
	if err != nil {
		return nil, err
	}
	r.conn = c
	s.relays.Store(addr, r)
	return r, nil
}

// allocRelay opens a relay socket on ip with a free port (see portPool.alloc).
func (s *Server) allocRelay(ip netip.Addr, even, reserve bool, now time.Time) (*relaySock, [8]byte, error) {
	return s.ports.alloc(ip, even, reserve, now)
}

// takeReservation returns the socket held for tok, if still valid.
func (s *Server) takeReservation(tok [8]byte, now time.Time) *relaySock {
	return s.ports.take(tok, now)
}

// releaseRelay closes r and then frees its port. The close runs on its own
// goroutine: Conn.Close waits for the socket's receive loop, and a
// batching datapath may serve several sockets from the loop that is running
// the handler deleting this allocation. Shutdown waits for these closes.
// The port stays marked used until the socket is really closed, so it is
// not handed out while still bound.
func (s *Server) releaseRelay(r *relaySock) {
	r.alloc.Store(nil)
	s.relays.CompareAndDelete(r.addr, r)
	s.closers.Add(1)
	go func() {
		defer s.closers.Done()
		_ = r.conn.Close()
		s.ports.free(r.addr)
	}()
}

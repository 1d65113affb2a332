package control

import (
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// channelCooldown is how long a channel number and peer stay reserved after
// the binding expired (RFC 8656 section 12: "the channel MUST NOT be
// rebound ... until 5 minutes after the binding expired" — this keeps late
// packets of the old binding from reaching a new peer).
const channelCooldown = 5 * time.Minute

// defaultReservationLifetime is how long an EVEN-PORT R reservation is held
// (RFC 8656 section 7.2: "approximately 30 seconds").
const defaultReservationLifetime = 30 * time.Second

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

// allocation is one TURN allocation (RFC 8656 section 2.2).
type allocation struct {
	s        *Server
	tuple    fiveTuple
	sink     clientSink
	username string
	quotaKey string // what the per-user quota counts (see credentials.quotaKey)
	created  time.Time
	dontFrag bool
	// allocTxID and allocResp answer a retransmitted Allocate (RFC 8656
	// section 7.2: same 5-tuple and transaction ID → same response).
	allocTxID [12]byte
	allocResp []byte
	bw        *tokenBucket

	toPeerPkts, toPeerBytes     atomic.Uint64
	toClientPkts, toClientBytes atomic.Uint64
	lastActivity                atomic.Int64 // unix ns of the last relayed datagram, either path

	mu sync.RWMutex // guards every field below
	// relays are indexed by famIndex (IPv4, IPv6); at least one is set.
	relays     [2]*relaySock
	expires    time.Time
	perms      map[netip.Addr]time.Time
	chans      map[uint16]*channel
	chanByPeer map[netip.AddrPort]*channel
	dead       bool
}

// channel is a channel binding; its fields are guarded by allocation.mu.
type channel struct {
	num     uint16
	peer    netip.AddrPort
	expires time.Time
	// cooling: the binding expired at expires and is kept, without
	// forwarding, until expires+channelCooldown.
	cooling bool
	// ownPeer: the peer's IP is one of this server's addresses (set once
	// at bind; the policy is fixed after Start).
	ownPeer bool

	offloaded bool
	off       ChannelOffload

	// Activity, written under the read lock, hence atomics: the last
	// datagram either path relayed on this channel (the kernel path is
	// noticed when its counters move, see pollKernel).
	lastActivity atomic.Int64
	kernelSeen   atomic.Uint64 // kernel packets (both directions) at the last poll
}

func newAllocation(s *Server, t fiveTuple, sink clientSink, user string, now time.Time) *allocation {
	a := &allocation{
		s: s, tuple: t, sink: sink, username: user, created: now,
		perms:      map[netip.Addr]time.Time{},
		chans:      map[uint16]*channel{},
		chanByPeer: map[netip.AddrPort]*channel{},
	}
	if s.cfg.BandwidthLimit > 0 {
		bl := float64(s.cfg.BandwidthLimit)
		a.bw = newTokenBucket(bl, bl, now)
	}
	return a
}

func (s *Server) lookup(t fiveTuple) *allocation {
	v, ok := s.allocs.Load(t)
	if !ok {
		return nil
	}
	return v.(*allocation)
}

func (a *allocation) expiry() time.Time {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.expires
}

func (a *allocation) relay(fam byte) *relaySock {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.relays[famIndex(fam)]
}

// permitted reports whether a live permission exists for ip. Caller holds
// a.mu.
func (a *allocation) permittedLocked(ip netip.Addr, now time.Time) bool {
	exp, ok := a.perms[ip]
	return ok && now.Before(exp)
}

// wantOffload reports whether ch may be forwarded by the kernel: an offload
// exists, the client is on UDP, the peer's IP is not one of our relay IPs
// (hairpin stays in userspace: XDP_TX cannot deliver to this host, and
// neither can the kernel path deliver to any local address), the
// allocation has no bandwidth limit (the kernel path does not meter, and it
// must never forward what userspace would drop), and the channel, its
// permission and the allocation are live.
// Caller holds a.mu.
func (a *allocation) wantOffloadLocked(ch *channel, now time.Time) (ChannelOffload, bool) {
	s := a.s
	if s.off == nil || a.tuple.proto != tUDP || a.bw != nil || a.dead || ch.cooling {
		return ChannelOffload{}, false
	}
	r := a.relays[famIndex(familyOf(ch.peer.Addr()))]
	pexp, ok := a.perms[ch.peer.Addr()]
	if r == nil || !ok {
		return ChannelOffload{}, false
	}
	exp := ch.expires
	if pexp.Before(exp) {
		exp = pexp
	}
	if a.expires.Before(exp) {
		exp = a.expires
	}
	if !now.Before(exp) {
		return ChannelOffload{}, false
	}
	return ChannelOffload{
		Client:       a.tuple.client,
		Listener:     s.offloadListener(a.tuple.server, familyOf(a.tuple.client.Addr())),
		Relay:        r.addr,
		Peer:         ch.peer,
		Channel:      ch.num,
		Expires:      exp,
		DontFragment: a.dontFrag,
	}, true
}

// offloadListener is the listener address the kernel must match. A
// wildcard listener is replaced by the first relay address of the client's
// family (the address clients are told to use); a wrong guess only means
// the kernel never matches and everything stays on the userspace path.
func (s *Server) offloadListener(l netip.AddrPort, fam byte) netip.AddrPort {
	if !l.Addr().IsUnspecified() {
		return l
	}
	for _, ip := range s.relayIPs {
		if familyOf(ip) == fam {
			return netip.AddrPortFrom(ip, l.Port())
		}
	}
	return l
}

// syncOffloadLocked brings the kernel entry of ch in line with the
// control-plane state (docs/design.md "Kernel-path invariants" 1-3): install when it becomes
// eligible, refresh when the expiry moved, remove when it is no longer
// eligible. Offload errors never reach the client: the channel stays on the
// userspace path and the error is counted (and logged once). Caller holds
// a.mu for writing, which also orders the calls for one channel.
func (a *allocation) syncOffloadLocked(ch *channel, now time.Time) {
	s := a.s
	if s.off == nil {
		return
	}
	want, ok := a.wantOffloadLocked(ch, now)
	switch {
	case ok && !ch.offloaded:
		if err := s.off.Install(want); err != nil {
			s.stats.offloadInstallErrors.Add(1)
			if errors.Is(err, ErrOffloadFull) {
				s.stats.offloadFull.Add(1)
				if !s.offFull.Swap(true) {
					s.log.Warn("offload table full: channels stay on the userspace path", "channel", ch.num, "client", a.tuple.client)
				}
			} else if !s.offErrLog.Swap(true) {
				s.log.Warn("offload install failed: channel stays on the userspace path", "err", err)
			}
			return
		}
		s.stats.offloadInstalls.Add(1)
		ch.offloaded, ch.off = true, want
	case ok && ch.offloaded:
		if want == ch.off {
			return
		}
		if want.Peer != ch.off.Peer || want.Relay != ch.off.Relay {
			a.removeOffloadLocked(ch)
			a.syncOffloadLocked(ch, now)
			return
		}
		if err := s.off.Refresh(want); err != nil {
			s.stats.offloadRefreshErrors.Add(1)
			if !s.offErrLog.Swap(true) {
				s.log.Warn("offload refresh failed: channel moves to the userspace path", "err", err)
			}
			a.removeOffloadLocked(ch)
			return
		}
		ch.off = want
	case !ok && ch.offloaded:
		a.removeOffloadLocked(ch)
	}
}

// removeOffloadLocked deletes the kernel entry of ch, keeping what it
// counted. Caller holds a.mu for writing.
func (a *allocation) removeOffloadLocked(ch *channel) {
	if !ch.offloaded {
		return
	}
	s := a.s
	if u, err := s.off.Usage(ch.off); err == nil {
		s.stats.retiredToPeerPackets.Add(u.ToPeerPackets)
		s.stats.retiredToPeerBytes.Add(u.ToPeerBytes)
		s.stats.retiredToClientPackets.Add(u.ToClientPackets)
		s.stats.retiredToClientBytes.Add(u.ToClientBytes)
	}
	if err := s.off.Remove(ch.off); err != nil {
		s.stats.offloadRemoveErrors.Add(1)
		if !s.offErrLog.Swap(true) {
			s.log.Warn("offload remove failed", "err", err)
		}
	} else {
		s.stats.offloadRemoves.Add(1)
	}
	ch.offloaded = false
	ch.off = ChannelOffload{}
}

// syncAllOffloadLocked re-evaluates every channel (after an allocation or
// permission change).
func (a *allocation) syncAllOffloadLocked(now time.Time) {
	if a.s.off == nil {
		return
	}
	for _, ch := range a.chans {
		a.syncOffloadLocked(ch, now)
	}
}

// expire drops what outlived its lifetime (janitor).
func (a *allocation) expire(now time.Time) {
	a.mu.Lock()
	if a.dead {
		a.mu.Unlock()
		return
	}
	if !now.Before(a.expires) {
		a.mu.Unlock()
		a.s.stats.allocationsExpired.Add(1)
		a.delete("expired")
		return
	}
	changed := false
	for ip, exp := range a.perms {
		if !now.Before(exp) {
			delete(a.perms, ip)
			changed = true
		}
	}
	for num, ch := range a.chans {
		switch {
		case ch.cooling && !now.Before(ch.expires.Add(channelCooldown)):
			delete(a.chans, num)
			delete(a.chanByPeer, ch.peer)
			changed = true
		case !ch.cooling && !now.Before(ch.expires):
			ch.cooling = true
			changed = true
		}
	}
	if changed {
		a.syncAllOffloadLocked(now)
		a.s.state.markDirty()
	}
	a.mu.Unlock()
}

// delete removes the allocation: offload entries first (so the kernel
// stops forwarding), then the lookup entries, then the relay sockets, and
// gives its quota back.
func (a *allocation) delete(reason string) {
	if !a.release(false) {
		return
	}
	s := a.s
	s.releaseQuota(a.quotaKey)
	s.stats.allocationsDeleted.Add(1)
	s.state.markDirty()
	s.log.Debug("allocation deleted", "client", a.tuple.client, "transport", a.tuple.proto, "reason", reason)
}

// shutdown releases the allocation at server shutdown; with keepOffload the
// kernel entries stay (restart without dropping media).
func (a *allocation) shutdown(keepOffload bool) {
	a.release(keepOffload)
}

// release marks the allocation dead, removes its kernel entries unless
// keepOffload, takes it out of the lookup and closes its relay sockets. It
// reports false when the allocation was already dead.
func (a *allocation) release(keepOffload bool) bool {
	s := a.s
	a.mu.Lock()
	if a.dead {
		a.mu.Unlock()
		return false
	}
	a.dead = true
	for _, ch := range a.chans {
		if ch.offloaded && !keepOffload {
			a.removeOffloadLocked(ch)
		}
	}
	relays := a.relays
	a.mu.Unlock()
	s.allocs.CompareAndDelete(a.tuple, a)
	for _, r := range relays {
		if r != nil {
			s.releaseRelay(r)
		}
	}
	s.closeTCPRelay(a) // RFC 6062 relays (tcpalloc.go)
	return true
}

// pollKernel marks offloaded channels whose kernel counters moved since the
// last poll as active: a channel the kernel forwards is as alive as one
// userspace forwards, although userspace never sees its packets.
func (a *allocation) pollKernel(now time.Time) {
	if a.s.off == nil {
		return
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	for _, ch := range a.chans {
		if !ch.offloaded {
			continue
		}
		u, err := a.s.off.Usage(ch.off)
		if err != nil {
			continue
		}
		if n := u.ToPeerPackets + u.ToClientPackets; n != ch.kernelSeen.Load() {
			ch.kernelSeen.Store(n)
			ch.lastActivity.Store(now.UnixNano())
			a.lastActivity.Store(now.UnixNano())
		}
	}
}

func unixNanoTime(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// counts returns the numbers of live permissions, live channels and
// offloaded channels, and the kernel usage of the offloaded ones.
func (a *allocation) counts(now time.Time) (perms, chans, offl int, u ChannelUsage) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	for _, exp := range a.perms {
		if now.Before(exp) {
			perms++
		}
	}
	for _, ch := range a.chans {
		if ch.cooling {
			continue
		}
		chans++
		if ch.offloaded {
			offl++
			if cu, err := a.s.off.Usage(ch.off); err == nil {
				u.ToPeerPackets += cu.ToPeerPackets
				u.ToPeerBytes += cu.ToPeerBytes
				u.ToClientPackets += cu.ToClientPackets
				u.ToClientBytes += cu.ToClientBytes
			}
		}
	}
	return
}

func (a *allocation) info(now time.Time) AllocationInfo {
	a.mu.RLock()
	defer a.mu.RUnlock()
	ai := AllocationInfo{
		Transport:    a.tuple.proto.String(),
		Client:       a.tuple.client,
		Server:       a.tuple.server,
		Username:     a.username,
		Created:      a.created,
		Expires:      a.expires,
		DontFragment: a.dontFrag,
		ToPeer:       PathCounters{a.toPeerPkts.Load(), a.toPeerBytes.Load()},
		ToClient:     PathCounters{a.toClientPkts.Load(), a.toClientBytes.Load()},
		LastActivity: unixNanoTime(a.lastActivity.Load()),
	}
	for _, r := range a.relays {
		if r != nil {
			ai.Relays = append(ai.Relays, r.addr)
		}
	}
	for ip, exp := range a.perms {
		if now.Before(exp) {
			ai.Permissions = append(ai.Permissions, PermissionInfo{Peer: ip, Expires: exp})
		}
	}
	slices.SortFunc(ai.Permissions, func(x, y PermissionInfo) int { return x.Peer.Compare(y.Peer) })
	for _, ch := range a.chans {
		if ch.cooling {
			continue
		}
		ci := ChannelInfo{Number: ch.num, Peer: ch.peer, Expires: ch.expires, Offloaded: ch.offloaded,
			LastActivity: unixNanoTime(ch.lastActivity.Load())}
		if ch.offloaded {
			if u, err := a.s.off.Usage(ch.off); err == nil {
				ci.Kernel = u
			}
		}
		ai.Channels = append(ai.Channels, ci)
	}
	slices.SortFunc(ai.Channels, func(x, y ChannelInfo) int { return int(x.Number) - int(y.Number) })
	return ai
}

// ---- relay ports ----

// errNoPorts means the relay port range of an address is exhausted (508).
var errNoPorts = errors.New("relay port range exhausted")

// reservation is a relay socket held for a later Allocate carrying its
// RESERVATION-TOKEN (RFC 8656 section 7.2, EVEN-PORT with R).
type reservation struct {
	sock    *relaySock
	expires time.Time
}

// portPool tracks the relay ports this server holds per relay IP, and
// EVEN-PORT reservations. It is only used on the allocation path.
type portPool struct {
	mu           sync.Mutex // guards used and reservations
	used         map[netip.Addr]map[uint16]bool
	reservations map[[8]byte]*reservation

	reservationLifetime time.Duration // immutable after init (tests shorten it)
}

func (p *portPool) init() {
	p.used = map[netip.Addr]map[uint16]bool{}
	p.reservations = map[[8]byte]*reservation{}
	p.reservationLifetime = defaultReservationLifetime
}

// openRelayLocked opens a relay socket on ip:port. Caller holds p.mu.
func (s *Server) openRelayLocked(ip netip.Addr, port uint16) (*relaySock, error) {
	r := &relaySock{s: s, addr: netip.AddrPortFrom(ip, port)}
	c, err := s.dp.OpenRelay(r.addr, r.handle)
	if err != nil {
		return nil, err
	}
	r.conn = c
	m := s.ports.used[ip]
	if m == nil {
		m = map[uint16]bool{}
		s.ports.used[ip] = m
	}
	m[port] = true
	s.relays.Store(r.addr, r)
	return r, nil
}

// allocRelay opens a relay socket on ip with a random free port of the
// configured range (retrying the next port on EADDRINUSE). even asks for an
// even port; reserve additionally holds port+1 and returns its token.
func (s *Server) allocRelay(ip netip.Addr, even, reserve bool, now time.Time) (*relaySock, [8]byte, error) {
	var tok [8]byte
	lo, hi := int(s.cfg.MinPort), int(s.cfg.MaxPort)
	n := hi - lo + 1
	start := mrand.IntN(n)
	p := &s.ports
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
		r, err := s.openRelayLocked(ip, uint16(port))
		if err != nil {
			if errors.Is(err, syscall.EADDRINUSE) {
				continue
			}
			return nil, tok, fmt.Errorf("open relay %s: %w", netip.AddrPortFrom(ip, uint16(port)), err)
		}
		if !reserve {
			return r, tok, nil
		}
		r2, err := s.openRelayLocked(ip, uint16(port+1))
		if err != nil {
			s.releaseRelay(r)
			if errors.Is(err, syscall.EADDRINUSE) {
				continue
			}
			return nil, tok, fmt.Errorf("open reserved relay %s: %w", netip.AddrPortFrom(ip, uint16(port+1)), err)
		}
		if _, err := rand.Read(tok[:]); err != nil {
			s.releaseRelay(r)
			s.releaseRelay(r2)
			return nil, tok, fmt.Errorf("reservation token: %w", err)
		}
		p.reservations[tok] = &reservation{sock: r2, expires: now.Add(p.reservationLifetime)}
		return r, tok, nil
	}
	return nil, tok, errNoPorts
}

// takeReservation returns the socket held for tok, if still valid.
func (s *Server) takeReservation(tok [8]byte, now time.Time) *relaySock {
	p := &s.ports
	p.mu.Lock()
	defer p.mu.Unlock()
	rv, ok := p.reservations[tok]
	if !ok {
		return nil
	}
	delete(p.reservations, tok)
	if !now.Before(rv.expires) {
		s.releaseRelay(rv.sock)
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
			rv.sock.s.releaseRelay(rv.sock)
		}
	}
}

func (p *portPool) closeReservations() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for tok, rv := range p.reservations {
		delete(p.reservations, tok)
		rv.sock.s.releaseRelay(rv.sock)
	}
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
		s.ports.mu.Lock()
		defer s.ports.mu.Unlock()
		if m := s.ports.used[r.addr.Addr()]; m != nil {
			delete(m, r.addr.Port())
			if len(m) == 0 {
				delete(s.ports.used, r.addr.Addr())
			}
		}
	}()
}

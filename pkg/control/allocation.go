package control

import (
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// channelCooldown is how long a channel number and peer stay reserved after
// the binding expired (RFC 8656 section 12: "the channel MUST NOT be
// rebound ... until 5 minutes after the binding expired" — this keeps late
// packets of the old binding from reaching a new peer).
const channelCooldown = 5 * time.Minute

// defaultReservationLifetime is how long an EVEN-PORT R reservation is held
// (RFC 8656 section 7.2: "approximately 30 seconds").
const defaultReservationLifetime = 30 * time.Second

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
	// bw is the bandwidth-limit (nil: unlimited), meter the kernel's
	// meter behind it when the allocation has one. Both are set before
	// the allocation is published and never change.
	bw    bandwidthLimiter
	meter BandwidthMeter

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

	// offloaded: off is what the kernel table was last told (Bind
	// succeeded); the table's owner keeps what is installed.
	offloaded bool
	off       ChannelBinding

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
	a.bw, a.meter = s.newBandwidthLimiter(t, now)
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
	if a.meter != nil && !keepOffload {
		a.meter.Release() // after its kernel entries; a restart keeps it
	}
	s.allocs.CompareAndDelete(a.tuple, a)
	for _, r := range relays {
		if r != nil {
			s.releaseRelay(r)
		}
	}
	s.closeTCPRelay(a) // RFC 6062 relays (tcpalloc.go)
	return true
}

func unixNanoTime(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// counts returns the numbers of live permissions, live channels and
// offloaded channels, and the kernel usage of the offloaded ones (from
// usage, one snapshot of the table).
func (a *allocation) counts(now time.Time, usage UsageSnapshot) (perms, chans, offl int, u ChannelUsage) {
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
			if cu, ok := usage.Of(ch.off); ok {
				u.Add(cu)
			}
		}
	}
	return
}

func (a *allocation) info(now time.Time, usage UsageSnapshot) AllocationInfo {
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
	if a.bw != nil {
		d := a.bw.drops()
		ai.BandwidthDropped = &d
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
			ci.Kernel, _ = usage.Of(ch.off)
		}
		ai.Channels = append(ai.Channels, ci)
	}
	slices.SortFunc(ai.Channels, func(x, y ChannelInfo) int { return int(x.Number) - int(y.Number) })
	return ai
}

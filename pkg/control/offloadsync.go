package control

import (
	"errors"
	"net/netip"
	"time"
)

// Keeping the kernel's channel entries in line with the allocations
// (docs/design.md, Kernel-path invariants 1-3): which channels the kernel
// may forward, installing, refreshing and removing them, and reading back
// what the kernel forwarded.

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

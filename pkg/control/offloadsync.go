package control

import (
	"errors"
	"net/netip"
	"time"
)

// Keeping the kernel channel table in line with the allocations
// (docs/design.md, Kernel-path invariants 1-3): which channels the kernel
// may forward and until when, declared to the table (KernelChannels) when
// that changes, and what the kernel forwarded, read back one snapshot at a
// time.

// wantOffload reports whether ch may be forwarded by the kernel, and the
// binding to declare: a kernel table exists, the client is on UDP, the
// allocation has no bandwidth limit or its limit is the kernel's meter
// (the kernel must never forward what userspace would drop), and the channel, its
// permission and the allocation are live. A peer that is another of this
// server's relayed addresses is declared like any other: whether the
// kernel forwards it relay to relay or passes it to userspace is the
// table's decision (docs/design.md, Relay to relay).
// Caller holds a.mu.
func (a *allocation) wantOffloadLocked(ch *channel, now time.Time) (ChannelBinding, bool) {
	s := a.s
	if s.off == nil || a.tuple.proto != tUDP || (a.bw != nil && a.meter == nil) || a.dead || ch.cooling {
		return ChannelBinding{}, false
	}
	r := a.relays[famIndex(familyOf(ch.peer.Addr()))]
	pexp, ok := a.perms[ch.peer.Addr()]
	if r == nil || !ok {
		return ChannelBinding{}, false
	}
	exp := ch.expires
	if pexp.Before(exp) {
		exp = pexp
	}
	if a.expires.Before(exp) {
		exp = a.expires
	}
	if !now.Before(exp) {
		return ChannelBinding{}, false
	}
	return ChannelBinding{
		Client:       a.tuple.client,
		Listener:     s.offloadListener(a.tuple.server, familyOf(a.tuple.client.Addr())),
		Relay:        r.addr,
		Peer:         ch.peer,
		Number:       ch.num,
		Expires:      exp,
		DontFragment: a.dontFrag,
		Meter:        meterSlot(a.meter),
	}, true
}

// meterSlot is the kernel meter of a limited allocation, 0 for none.
func meterSlot(m BandwidthMeter) uint32 {
	if m == nil {
		return 0
	}
	return m.Slot()
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

// syncOffloadLocked brings the kernel table in line with ch
// (docs/design.md, Kernel-path invariants 1-3): Bind when ch becomes
// eligible or its binding's expiry moved, Unbind when it is no longer
// eligible. Another peer or relayed address is a new binding: the old one
// is withdrawn first, so what it counted is retired with it. Table errors
// never reach the client: the channel stays on the userspace path and the
// error is counted (and logged once); a failed update withdraws the
// channel, so the kernel never forwards past what the control plane
// allows. Caller holds a.mu for writing, which also orders the calls for
// one channel.
func (a *allocation) syncOffloadLocked(ch *channel, now time.Time) {
	s := a.s
	if s.off == nil {
		return
	}
	want, ok := a.wantOffloadLocked(ch, now)
	switch {
	case ok && !ch.offloaded:
		if err := s.off.Bind(want); err != nil {
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
		if err := s.off.Bind(want); err != nil {
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

// removeOffloadLocked withdraws ch from the kernel table, keeping what it
// counted. Caller holds a.mu for writing.
func (a *allocation) removeOffloadLocked(ch *channel) {
	if !ch.offloaded {
		return
	}
	s := a.s
	u, err := s.off.Unbind(ch.off)
	s.stats.retiredToPeerPackets.Add(u.ToPeerPackets)
	s.stats.retiredToPeerBytes.Add(u.ToPeerBytes)
	s.stats.retiredToClientPackets.Add(u.ToClientPackets)
	s.stats.retiredToClientBytes.Add(u.ToClientBytes)
	if err != nil {
		s.stats.offloadRemoveErrors.Add(1)
		if !s.offErrLog.Swap(true) {
			s.log.Warn("offload remove failed", "err", err)
		}
	} else {
		s.stats.offloadRemoves.Add(1)
	}
	ch.offloaded = false
	ch.off = ChannelBinding{}
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

// kernelUsage is one snapshot of the kernel table's usage (nil without a
// table, or when it cannot be read: the kernel numbers are then missing
// from what is reported, never wrong).
func (s *Server) kernelUsage() UsageSnapshot {
	if s.off == nil {
		return nil
	}
	u, err := s.off.Usage()
	if err != nil {
		if !s.offErrLog.Swap(true) {
			s.log.Warn("offload usage read failed", "err", err)
		}
		return nil
	}
	return u
}

// pollKernel reads the kernel table's usage once and marks the channels
// whose counters moved since the last poll as active (janitor).
func (s *Server) pollKernel(now time.Time) {
	usage := s.kernelUsage()
	if usage == nil {
		return
	}
	s.allocs.Range(func(_, v any) bool {
		v.(*allocation).pollKernel(now, usage)
		return true
	})
}

// pollKernel marks offloaded channels whose kernel counters moved since the
// last poll as active: a channel the kernel forwards is as alive as one
// userspace forwards, although userspace never sees its packets.
func (a *allocation) pollKernel(now time.Time, usage UsageSnapshot) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	for _, ch := range a.chans {
		if !ch.offloaded {
			continue
		}
		u, ok := usage.Of(ch.off)
		if !ok {
			continue
		}
		if n := u.Packets(); n != ch.kernelSeen.Load() {
			ch.kernelSeen.Store(n)
			ch.lastActivity.Store(now.UnixNano())
			a.lastActivity.Store(now.UnixNano())
		}
	}
}

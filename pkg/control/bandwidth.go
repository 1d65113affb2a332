package control

import (
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/kchan"
)

// BandwidthMeter is one allocation's bandwidth-limit budget kept by the
// kernel channel table (docs/design.md "Bandwidth limit").
type BandwidthMeter = kchan.Meter

// Metering is implemented by a KernelChannels that can enforce
// bandwidth-limit itself (pkg/loader's XDP). Without it, a limited
// allocation stays on the userspace path.
type Metering interface {
	// Meter returns the meter of the allocation whose client sends from
	// client to listener, limited to rate bytes/s with bursts of burst
	// bytes (re-adopted with its state after a restart).
	Meter(client, listener netip.AddrPort, rate, burst uint64) (BandwidthMeter, error)
}

// bandwidthLimiter is what an allocation's relaying checks before it sends:
// a token bucket of its own, or the kernel's meter.
type bandwidthLimiter interface {
	allow(n int, now time.Time) bool
	drops() PathCounters
}

// bucketLimiter is the userspace-only limit: a token bucket of limit bytes
// per second with a burst of one second.
type bucketLimiter struct {
	b                  *tokenBucket
	dropPkts, dropByte atomic.Uint64
}

func (l *bucketLimiter) allow(n int, now time.Time) bool {
	if l.b.take(float64(n), now) {
		return true
	}
	l.dropPkts.Add(1)
	l.dropByte.Add(uint64(n))
	return false
}

func (l *bucketLimiter) drops() PathCounters {
	return PathCounters{l.dropPkts.Load(), l.dropByte.Load()}
}

// meterLimiter charges the kernel's meter.
type meterLimiter struct{ m BandwidthMeter }

func (l meterLimiter) allow(n int, _ time.Time) bool { return l.m.Allow(n) }

func (l meterLimiter) drops() PathCounters {
	p, b := l.m.Drops()
	return PathCounters{p, b}
}

// newBandwidthLimiter returns the allocation's limiter (nil: unlimited).
// A UDP allocation gets the kernel's meter when the offload meters, so its
// channels can be offloaded; otherwise, or when the kernel has no meter
// left, a token bucket (and the allocation stays in userspace). Called
// before the allocation is published; the caller releases the meter if the
// allocation is not.
func (s *Server) newBandwidthLimiter(t fiveTuple, now time.Time) (bandwidthLimiter, BandwidthMeter) {
	if s.cfg.BandwidthLimit <= 0 {
		return nil, nil
	}
	limit := uint64(s.cfg.BandwidthLimit)
	if mo, ok := s.off.(Metering); ok && t.proto == tUDP {
		m, err := mo.Meter(t.client, t.server, limit, limit)
		if err == nil {
			return meterLimiter{m}, m
		}
		if s.offErrLog.CompareAndSwap(false, true) {
			s.log.Warn("no kernel bandwidth meter for an allocation: it stays on the userspace path", "client", t.client, "err", err)
		}
	}
	bl := float64(limit)
	return &bucketLimiter{b: newTokenBucket(bl, bl, now)}, nil
}

// releaseUnpublished gives back the kernel meter of an allocation that was
// never published (a concurrent Allocate won).
func (a *allocation) releaseUnpublished() {
	if a.meter != nil {
		a.meter.Release()
	}
}

// bucket is the allocation's own token bucket (nil: unlimited, or metered
// by the kernel), for the TCP relay's pacing (tcpconnect.go); TCP
// allocations never get a kernel meter.
func (a *allocation) bucket() *tokenBucket {
	if b, ok := a.bw.(*bucketLimiter); ok {
		return b.b
	}
	return nil
}

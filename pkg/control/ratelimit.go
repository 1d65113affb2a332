package control

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"time"
)

// tokenBucket is a classic token bucket; the zero rate means unlimited.
// Its mutex guards only its own two fields.
type tokenBucket struct {
	mu     sync.Mutex
	tokens float64
	last   time.Time

	rate  float64 // tokens per second; immutable
	burst float64 // immutable
}

func newTokenBucket(rate, burst float64, now time.Time) *tokenBucket {
	return &tokenBucket{tokens: burst, last: now, rate: rate, burst: burst}
}

// take removes n tokens if available.
func (b *tokenBucket) take(n float64, now time.Time) bool {
	if b == nil || b.rate <= 0 {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens += el * b.rate
		if b.tokens > b.burst {
			b.tokens = b.burst
		}
		b.last = now
	}
	if b.tokens < n {
		return false
	}
	b.tokens -= n
	return true
}

// full reports whether the bucket has refilled completely (nothing to
// remember about this source any more).
func (b *tokenBucket) full(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.tokens+now.Sub(b.last).Seconds()*b.rate >= b.burst
}

// ipLimiter rate-limits unauthenticated requests per source IP (the 401
// amplification problem; docs/design.md, Security defaults). It is sharded so the
// per-packet path takes no global lock, and bounded: at most maxEntries
// sources are remembered; when a shard is full, new sources are refused
// until the janitor prunes refilled buckets.
type ipLimiter struct {
	rate, burst float64
	seed        maphash.Seed
	shards      [16]limiterShard
	perShard    int
}

type limiterShard struct {
	mu      sync.Mutex
	buckets map[netip.Addr]*tokenBucket
}

func newIPLimiter(rate float64, burst int, maxEntries int) *ipLimiter {
	l := &ipLimiter{rate: rate, burst: float64(burst), seed: maphash.MakeSeed(), perShard: maxEntries / 16}
	if l.burst < 1 {
		l.burst = 1
	}
	if l.perShard < 1 {
		l.perShard = 1
	}
	for i := range l.shards {
		l.shards[i].buckets = map[netip.Addr]*tokenBucket{}
	}
	return l
}

func (l *ipLimiter) shard(ip netip.Addr) *limiterShard {
	b := ip.As16()
	return &l.shards[maphash.Bytes(l.seed, b[:])%uint64(len(l.shards))]
}

// allow takes one token for ip.
func (l *ipLimiter) allow(ip netip.Addr, now time.Time) bool {
	if l.rate <= 0 {
		return true
	}
	sh := l.shard(ip)
	sh.mu.Lock()
	b, ok := sh.buckets[ip]
	if !ok {
		if len(sh.buckets) >= l.perShard {
			sh.mu.Unlock()
			return false
		}
		b = newTokenBucket(l.rate, l.burst, now)
		sh.buckets[ip] = b
	}
	sh.mu.Unlock()
	return b.take(1, now)
}

// prune forgets sources whose bucket is full again.
func (l *ipLimiter) prune(now time.Time) {
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		for ip, b := range sh.buckets {
			if b.full(now) {
				delete(sh.buckets, ip)
			}
		}
		sh.mu.Unlock()
	}
}

func (l *ipLimiter) size() int {
	n := 0
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		n += len(sh.buckets)
		sh.mu.Unlock()
	}
	return n
}

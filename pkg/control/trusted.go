package control

import (
	"hash/maphash"
	"sync"
	"time"
)

// trustedTuples gives every UDP 5-tuple that has proven itself its own
// budget for unauthenticated responses (Binding answers, 401/438
// challenges), instead of the per-source-IP one of ipLimiter. A 5-tuple
// has proven itself when it holds an allocation, or when a request from it
// passed the long-term credential check within the nonce lifetime: the
// client then read a nonce sent to that address, so the source is not
// spoofed, and answering it amplifies nothing.
//
// This is what keeps one IP's strangers from starving its customers:
// behind a carrier-grade NAT thousands of users share one public IP, and
// one of them flooding unauthenticated requests empties the per-IP bucket.
// With this, only other strangers of that IP (clients that have not
// authenticated yet) share the flooder's budget; see docs/design.md
// "Security defaults" for the trade-off.
//
// Bounded like ipLimiter: at most maxEntries proven 5-tuples are
// remembered, except that a 5-tuple holding an allocation always gets its
// bucket (allocations are bounded by max-allocations).
type trustedTuples struct {
	rate, burst float64
	seed        maphash.Seed
	perShard    int
	shards      [16]trustedShard
}

type trustedShard struct {
	mu      sync.Mutex
	entries map[fiveTuple]*trustedTuple
}

// trustedTuple is one proven 5-tuple. until is guarded by its shard's
// mutex; the bucket has its own.
type trustedTuple struct {
	until  time.Time // the last credential check plus the nonce lifetime
	bucket *tokenBucket
}

func newTrustedTuples(rate float64, burst, maxEntries int) *trustedTuples {
	t := &trustedTuples{rate: rate, burst: max(float64(burst), 1), seed: maphash.MakeSeed(), perShard: max(maxEntries/16, 1)}
	for i := range t.shards {
		t.shards[i].entries = map[fiveTuple]*trustedTuple{}
	}
	return t
}

func (t *trustedTuples) shard(ft fiveTuple) *trustedShard {
	return &t.shards[maphash.Comparable(t.seed, ft)%uint64(len(t.shards))]
}

// prove records that a request from ft passed the credential check; the
// 5-tuple stays trusted until until. A full shard refuses new 5-tuples
// (they keep the per-IP budget) but still extends known ones.
func (t *trustedTuples) prove(ft fiveTuple, now, until time.Time) {
	sh := t.shard(ft)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if e, ok := sh.entries[ft]; ok {
		if until.After(e.until) {
			e.until = until
		}
		return
	}
	if len(sh.entries) >= t.perShard {
		return
	}
	sh.entries[ft] = &trustedTuple{until: until, bucket: newTokenBucket(t.rate, t.burst, now)}
}

// take charges one unauthenticated response to ft's own budget. trusted
// is false when ft has not proven itself (or no longer has, and holds no
// allocation): the caller then applies the per-IP budget.
func (t *trustedTuples) take(ft fiveTuple, now time.Time, holdsAllocation bool) (ok, trusted bool) {
	if t.rate <= 0 {
		return true, true
	}
	sh := t.shard(ft)
	sh.mu.Lock()
	e, known := sh.entries[ft]
	switch {
	case known && (holdsAllocation || now.Before(e.until)):
	case known:
		delete(sh.entries, ft) // the proof has lapsed
		sh.mu.Unlock()
		return false, false
	case holdsAllocation:
		e = &trustedTuple{until: now, bucket: newTokenBucket(t.rate, t.burst, now)}
		sh.entries[ft] = e
	default:
		sh.mu.Unlock()
		return false, false
	}
	sh.mu.Unlock()
	return e.bucket.take(1, now), true
}

// prune forgets 5-tuples whose proof has lapsed and that hold no
// allocation.
func (t *trustedTuples) prune(now time.Time, holdsAllocation func(fiveTuple) bool) {
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for ft, e := range sh.entries {
			if !now.Before(e.until) && !holdsAllocation(ft) {
				delete(sh.entries, ft)
			}
		}
		sh.mu.Unlock()
	}
}

func (t *trustedTuples) size() int {
	n := 0
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		n += len(sh.entries)
		sh.mu.Unlock()
	}
	return n
}

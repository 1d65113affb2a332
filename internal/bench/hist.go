package bench

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// Histogram is a log-linear latency histogram: 16 linear sub-buckets per
// power of two, so any quantile is within about 6 % of the true value.
// Record is lock-free (one atomic add) so receive loops can share one.
type Histogram struct {
	counts [64 * histSub]atomic.Uint64
}

const histSubBits = 4
const histSub = 1 << histSubBits

func histBucket(v uint64) int {
	if v < histSub {
		return int(v)
	}
	exp := bits.Len64(v) - 1 - histSubBits // >= 0
	sub := int(v>>uint(exp)) & (histSub - 1)
	return (exp+1)*histSub + sub
}

// histLow is the smallest value of bucket i.
func histLow(i int) uint64 {
	if i < histSub {
		return uint64(i)
	}
	exp := i/histSub - 1
	sub := i % histSub
	return uint64(histSub+sub) << uint(exp)
}

// Record adds one observation (negative values, from clock steps, count as
// zero).
func (h *Histogram) Record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.counts[histBucket(uint64(d))].Add(1)
}

// Count is the number of observations.
func (h *Histogram) Count() uint64 {
	var n uint64
	for i := range h.counts {
		n += h.counts[i].Load()
	}
	return n
}

// Quantile returns the q-quantile (0 < q <= 1), as the midpoint of the
// bucket holding it; 0 without observations.
func (h *Histogram) Quantile(q float64) time.Duration {
	total := h.Count()
	if total == 0 {
		return 0
	}
	rank := uint64(q*float64(total) + 0.5)
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			lo := histLow(i)
			hi := histLow(i + 1)
			return time.Duration(lo + (hi-lo)/2)
		}
	}
	return time.Duration(histLow(len(h.counts) - 1))
}

// Merge adds o's observations to h.
func (h *Histogram) Merge(o *Histogram) {
	for i := range h.counts {
		if n := o.counts[i].Load(); n != 0 {
			h.counts[i].Add(n)
		}
	}
}

// Reset clears h.
func (h *Histogram) Reset() {
	for i := range h.counts {
		h.counts[i].Store(0)
	}
}

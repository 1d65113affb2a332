package loader

import "time"

// MonotonicNanos converts t to CLOCK_MONOTONIC nanoseconds, the clock the
// program's expiries are kept in (kernelExpiry stores them). This is the
// only place that conversion is made. Times before the clock's origin give 0
// (already expired); the zero Time is 0.
func MonotonicNanos(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	mono, now := monoNow()
	ns := mono + int64(t.Sub(now))
	if ns < 0 {
		return 0
	}
	return uint64(ns)
}

// kernelExpiry is the nanosecond expiry stored in a map entry for t (the
// one userspace reads back; the program compares the jiffies one,
// jiffies.go), early by coarseLag as the jiffies one is.
func kernelExpiry(t time.Time) uint64 {
	ns := MonotonicNanos(t)
	if ns <= coarseLag {
		return 0
	}
	return ns - coarseLag
}

// expiryFromKernel undoes kernelExpiry: the channel's CLOCK_MONOTONIC
// expiry.
func expiryFromKernel(stored uint64) uint64 {
	if stored == 0 {
		return 0
	}
	return stored + coarseLag
}

// TimeFromMonotonic is the inverse of MonotonicNanos (wall clock time with a
// monotonic reading, to within the conversion's microsecond).
func TimeFromMonotonic(ns uint64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	mono, now := monoNow()
	return now.Add(time.Duration(int64(ns) - mono))
}

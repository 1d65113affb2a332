//go:build !linux

package loader

import "time"

var monoStart = time.Now()

// monoNow has no bpf_ktime_get_ns to match off Linux; it keeps the
// conversions consistent with themselves.
func monoNow() (int64, time.Time) {
	now := time.Now()
	return int64(now.Sub(monoStart)), now
}

// coarseLag: see mono_linux.go.
const coarseLag = uint64(70 * time.Millisecond)

// tickNanos: see mono_linux.go.
func tickNanos() uint64 { return uint64(10 * time.Millisecond) }

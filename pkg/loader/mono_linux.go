package loader

import (
	"time"

	"golang.org/x/sys/unix"
)

// monoNow reads CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns (the kernel's
// ktime_get_mono_fast_ns), together with the wall clock.
func monoNow() (int64, time.Time) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		// Cannot fail on Linux with a valid clock id and pointer.
		return 0, time.Now()
	}
	return ts.Nano(), time.Now()
}

// coarseLag bounds how far the program's clock, bpf_ktime_get_coarse_ns
// (CLOCK_MONOTONIC_COARSE: the timekeeper's value at the last tick, no
// clocksource read), trails CLOCK_MONOTONIC: one tick, which
// clock_getres reports for the coarse clock. Twice that, at least 1 ms.
var coarseLag = func() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGetres(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil || ts.Nano() <= 0 {
		return uint64(10 * time.Millisecond) // HZ=100, the slowest tick
	}
	return uint64(max(2*ts.Nano(), int64(time.Millisecond)))
}()

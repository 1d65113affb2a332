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

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

// coarseLag bounds how far the tick-driven clocks, the jiffies the program
// reads and CLOCK_MONOTONIC_COARSE (both the timekeeper's state at the last
// jiffies update, no clocksource read), trail CLOCK_MONOTONIC. One CPU, the
// do_timer CPU, advances it each tick (clock_getres reports the tick for
// the coarse clock). When that CPU is held up (a VM exit, stop_machine) the
// others wait MAX_STALLED_JIFFIES (5) of their own ticks before forcing the
// update (kernel/time/tick-sched.c, since Linux 6.0), so the clock can
// trail by six ticks and a little; the bound is seven ticks, at least 7 ms.
// The cost of a generous bound is only that userspace carries a channel for
// its last few tens of milliseconds.
var coarseLag = func() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGetres(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil || ts.Nano() <= 0 {
		return uint64(70 * time.Millisecond) // HZ=100, the slowest tick
	}
	return uint64(max(7*ts.Nano(), int64(7*time.Millisecond)))
}()

// tickNanos is the length of a jiffy: the coarse clocks' resolution, which
// the kernel reports as TICK_NSEC.
func tickNanos() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGetres(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil || ts.Nano() <= 0 {
		return uint64(10 * time.Millisecond)
	}
	return uint64(ts.Nano())
}

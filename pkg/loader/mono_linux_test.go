package loader

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestCoarseLagBoundsTheProgramClock: the program compares expiries with
// jiffies, which the timekeeper advances together with
// CLOCK_MONOTONIC_COARSE; that must never trail CLOCK_MONOTONIC by more
// than coarseLag, or a channel would forward past its expiry.
func TestCoarseLagBoundsTheProgramClock(t *testing.T) {
	// Each sample reads the coarse clock between two CLOCK_MONOTONIC
	// reads; a sample whose bracket is wider than 50 µs was preempted (or
	// its vCPU descheduled) and says nothing about the clock, so it is
	// skipped. after-coarse over-states the lag by at most the bracket.
	const bracket = 50 * time.Microsecond
	var worst int64
	samples := 0
	deadline := time.Now().Add(200 * time.Millisecond)
	for time.Now().Before(deadline) {
		var before, c, after unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &before); err != nil {
			t.Fatal(err)
		}
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &c); err != nil {
			t.Fatal(err)
		}
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &after); err != nil {
			t.Fatal(err)
		}
		if after.Nano()-before.Nano() > int64(bracket) {
			continue
		}
		samples++
		worst = max(worst, after.Nano()-c.Nano())
		time.Sleep(time.Duration(samples%977) * time.Microsecond)
	}
	if samples < 100 {
		t.Fatalf("only %d unpreempted samples in 200 ms", samples)
	}
	if worst < 0 || uint64(worst) > coarseLag {
		t.Fatalf("coarse clock trails by %v over %d samples, lag bound is %v", time.Duration(worst), samples, time.Duration(coarseLag))
	}
	t.Logf("coarse clock trailed by at most %v over %d samples; bound %v", time.Duration(worst), samples, time.Duration(coarseLag))
	// An expiry stored for t is reached by the coarse clock no later
	// than t on the monotonic clock. The two conversions read the clocks
	// separately, so they may differ by a preemption; 1 ms is far below
	// the lag being checked.
	exp := time.Now().Add(time.Second)
	if got, want := kernelExpiry(exp)+coarseLag, MonotonicNanos(exp); got > want+uint64(time.Millisecond) || got+uint64(time.Millisecond) < want {
		t.Fatalf("kernelExpiry %d + lag, want %d", got, want)
	}
	// A past expiry is already reached by the program's clock.
	var c unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &c); err != nil {
		t.Fatal(err)
	}
	if past := kernelExpiry(time.Now().Add(-time.Second)); past > uint64(c.Nano()) {
		t.Fatalf("a past expiry is stored as %d, after the coarse clock's %d", past, c.Nano())
	}
	if kernelExpiry(time.Time{}) != 0 {
		t.Fatal("zero expiry not stored as 0")
	}
}

package loader

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
)

// The program compares expiries with bpf_jiffies64(), which the verifier
// inlines into a load of the kernel's jiffies (no helper call, unlike
// bpf_ktime_get_coarse_ns). The kernel keeps jiffies in step with
// CLOCK_MONOTONIC (tick_do_update_jiffies64 advances them by whole ticks of
// the monotonic clock); between updates they trail it by up to a tick, and
// a little more when the tick is late. This file converts an expiry to
// jiffies so that the program stops forwarding at the latest when the
// expiry has passed on CLOCK_MONOTONIC, never later (userspace carries the
// channel for the last few ticks).
//
// The relation is read through the hr_clock probe program (BPF_PROG_RUN:
// bpf_ktime_get_ns, then bpf_jiffies64). With tick the jiffy's length and
// one sample (k, j), d = k - j*tick bounds the clocks' offset D from above
// (jiffies never run ahead: j*tick <= t - D at any time t >= k), so for
// every t at or after the expiry T, jiffies(t) >= (T - d - lag)/tick - 1,
// where lag bounds how far jiffies trail. That, less a drift allowance for
// how far T lies ahead, is the stored value. Every conversion takes a fresh
// sample, so the offset is never stale.

// jiffyDriftPPM allows the jiffies to run this much slower than
// CLOCK_MONOTONIC between now and an expiry (a kernel whose periodic tick
// counts jiffies from its own timer). NTP's slew limit is 500 ppm.
const jiffyDriftPPM = 1000

// jiffyClock converts to the program's jiffies.
type jiffyClock struct {
	probe *ebpf.Program
	tick  uint64 // ns per jiffy
}

// sample reads CLOCK_MONOTONIC ns and then jiffies in the kernel.
func (c jiffyClock) sample() (mono, jiffies uint64, err error) {
	in := make([]byte, 64)
	opts := ebpf.RunOptions{Data: in, DataOut: make([]byte, len(in)+256), Repeat: 1}
	if _, err := c.probe.Run(&opts); err != nil {
		return 0, 0, fmt.Errorf("read the kernel's clocks (BPF_PROG_RUN): %w", err)
	}
	if len(opts.DataOut) < 16 {
		return 0, 0, fmt.Errorf("read the kernel's clocks: %d bytes back", len(opts.DataOut))
	}
	return binary.NativeEndian.Uint64(opts.DataOut[0:]), binary.NativeEndian.Uint64(opts.DataOut[8:]), nil
}

// newJiffyClock checks that jiffies advance by one per tick of the
// length clock_getres reports (what the conversion assumes), over about
// ten ticks.
func newJiffyClock(probe *ebpf.Program) (jiffyClock, error) {
	c := jiffyClock{probe: probe, tick: tickNanos()}
	k1, j1, err := c.sample()
	if err != nil {
		return c, err
	}
	time.Sleep(time.Duration(10 * c.tick))
	k2, j2, err := c.sample()
	if err != nil {
		return c, err
	}
	elapsed, counted := int64(k2-k1), int64(j2-j1)*int64(c.tick)
	if d := elapsed - counted; d < -3*int64(c.tick) || d > 3*int64(c.tick) {
		return c, fmt.Errorf("jiffies advanced %d in %v, not one per %v tick: cannot convert expiries", j2-j1,
			time.Duration(elapsed), time.Duration(c.tick))
	}
	return c, nil
}

// expiry is the jiffies value to store for an expiry of mono (CLOCK_MONOTONIC
// ns, 0 for none); 0 (always expired) for one that is due within the
// margins.
func (c jiffyClock) expiry(mono uint64) (uint64, error) {
	if mono == 0 {
		return 0, nil
	}
	k, j, err := c.sample()
	if err != nil {
		return 0, err
	}
	d := int64(k) - int64(j*c.tick) + int64(time.Microsecond) // the reads' spacing
	margin := int64(coarseLag) + int64(c.tick)
	if ahead := int64(mono) - int64(k); ahead > 0 {
		margin += ahead / 1e6 * jiffyDriftPPM
	}
	v := int64(mono) - d - margin
	if v < int64(c.tick) {
		return 0, nil
	}
	return uint64(v)/c.tick - 1, nil
}

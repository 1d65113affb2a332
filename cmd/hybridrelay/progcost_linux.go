package main

import (
	"fmt"
	"time"

	"github.com/cilium/ebpf"

	"github.com/hybridrelay/hybridrelay/internal/bench"
)

// measureProgCost is the in-place cost of program id: kernel BPF run-time
// statistics switched on for d only (through a BPF_ENABLE_STATS
// descriptor, so kernel.bpf_stats_enabled is never written and the
// previous state returns when the descriptor closes), run_time_ns /
// run_cnt over that window.
func measureProgCost(id uint32, d time.Duration) (bench.ProgCost, error) {
	cost, err := bench.MeasureProgCost([]ebpf.ProgramID{ebpf.ProgramID(id)}, func() error { time.Sleep(d); return nil })
	if err != nil {
		return bench.ProgCost{}, fmt.Errorf("program cost: %w", err)
	}
	return cost, nil
}

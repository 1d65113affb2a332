package bench

import "time"

// ProgCost is what a set of BPF programs did in a measurement window, from
// the kernel's run-time statistics (run_cnt and run_time_ns, as `bpftool
// prog show` prints them): summed over the programs, after minus before.
type ProgCost struct {
	Runs    uint64        `json:"runs"`
	RunTime time.Duration `json:"run_time_ns"`
}

// NsPerRun is the mean cost of one run (for an XDP program: one packet)
// in nanoseconds; 0 when the programs did not run.
func (c ProgCost) NsPerRun() float64 {
	if c.Runs == 0 {
		return 0
	}
	return float64(c.RunTime.Nanoseconds()) / float64(c.Runs)
}

// progSample is one program's counters at one moment.
type progSample struct {
	runs    uint64
	runTime time.Duration
}

// progCostDelta sums after-before over the programs (same order). A
// counter that went backwards (the program was replaced under the same
// id, which the kernel never reuses while it is held open) counts as zero
// rather than wrapping.
func progCostDelta(before, after []progSample) ProgCost {
	var c ProgCost
	for i := range before {
		if i >= len(after) {
			break
		}
		if after[i].runs >= before[i].runs {
			c.Runs += after[i].runs - before[i].runs
		}
		if after[i].runTime >= before[i].runTime {
			c.RunTime += after[i].runTime - before[i].runTime
		}
	}
	return c
}

package bench

import (
	"testing"
	"time"
)

func TestProgCostDelta(t *testing.T) {
	before := []progSample{{runs: 100, runTime: 5 * time.Microsecond}, {runs: 0, runTime: 0}}
	after := []progSample{{runs: 1100, runTime: 105 * time.Microsecond}, {runs: 1000, runTime: 20 * time.Microsecond}}
	c := progCostDelta(before, after)
	if c.Runs != 2000 || c.RunTime != 120*time.Microsecond {
		t.Fatalf("%+v", c)
	}
	if got := c.NsPerRun(); !near(got, 60) {
		t.Fatalf("ns/run %v, want 60", got)
	}
	// A counter that went backwards is not a huge unsigned difference.
	c = progCostDelta([]progSample{{runs: 10, runTime: time.Second}}, []progSample{{runs: 5, runTime: time.Millisecond}})
	if c.Runs != 0 || c.RunTime != 0 || c.NsPerRun() != 0 {
		t.Fatalf("backwards: %+v", c)
	}
	if (ProgCost{RunTime: time.Second}).NsPerRun() != 0 {
		t.Fatal("no runs must be 0 ns/run, not a division by zero")
	}
}

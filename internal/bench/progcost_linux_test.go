//go:build linux

package bench

import (
	"os"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/hybridrelay/hybridrelay/internal/privtest"
	"github.com/hybridrelay/hybridrelay/internal/xdppass"
)

// TestMeasureProgCost runs a trivial XDP program a known number of times
// with BPF_PROG_RUN inside the window: the meter must count those runs,
// with a plausible time per run, and leave kernel.bpf_stats_enabled as it
// found it (BPF_ENABLE_STATS never writes the sysctl).
func TestMeasureProgCost(t *testing.T) {
	privtest.Need(t)
	before, err := os.ReadFile("/proc/sys/kernel/bpf_stats_enabled")
	if err != nil {
		t.Fatal(err)
	}
	prog, err := xdppass.Load("")
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	info, err := prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("no program id")
	}
	const repeat = 5000
	cost, err := MeasureProgCost([]ebpf.ProgramID{id}, func() error {
		_, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 64), Repeat: repeat})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if cost.Runs != repeat {
		t.Errorf("runs %d, want %d", cost.Runs, repeat)
	}
	if ns := cost.NsPerRun(); ns <= 0 || ns > 100000 {
		t.Errorf("%.1f ns per run of a two-instruction program", ns)
	}
	after, err := os.ReadFile("/proc/sys/kernel/bpf_stats_enabled")
	if err != nil {
		t.Fatal(err)
	}
	if string(after) != string(before) {
		t.Errorf("bpf_stats_enabled %q after, %q before", after, before)
	}
	if _, err := StartProgCost([]ebpf.ProgramID{id, 0}); err == nil {
		t.Error("StartProgCost accepted program id 0")
	}
}

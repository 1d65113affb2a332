//go:build linux

package bench

import (
	"errors"
	"fmt"
	"io"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ProgCostMeter measures the in-place cost of attached BPF programs
// (docs/design.md, "Testing on these machines": run_time_ns / run_cnt of
// the attached program during a flood, against a trivial program in the
// same run). StartProgCost opens the programs and turns the kernel's
// run-time statistics on; Stop reads the counters again and turns them
// off.
//
// Statistics are enabled with BPF_ENABLE_STATS, which holds them on only
// while its file descriptor is open: kernel.bpf_stats_enabled is never
// written, a crash cannot leave it on, and statistics someone else turned
// on stay on. While on, every BPF program on the host pays for the two
// clock reads, so measure windows, not lifetimes.
//
// `hybridrelay stats` can report the same figure for a live daemon: take
// the program ids from the relay interfaces (netns.NS.XDPProgramIDs, or
// the loader's links), then
//
//	cost, err := bench.MeasureProgCost(ids, func() error { time.Sleep(time.Second); return nil })
//	fmt.Printf("%.0f ns/packet over %d packets\n", cost.NsPerRun(), cost.Runs)
type ProgCostMeter struct {
	stats  io.Closer
	sets   [][]*ebpf.Program
	before [][]progSample
}

// StartProgCost starts measuring; each set is a group of program ids
// whose counters are summed (one program attached to several interfaces
// is one id). On error nothing stays open.
func StartProgCost(sets ...[]ebpf.ProgramID) (m *ProgCostMeter, err error) {
	m = &ProgCostMeter{}
	defer func() {
		if err != nil {
			m.close()
			m = nil
		}
	}()
	for _, ids := range sets {
		var progs []*ebpf.Program
		for _, id := range ids {
			p, err := ebpf.NewProgramFromID(id)
			if err != nil {
				m.sets = append(m.sets, progs)
				return m, fmt.Errorf("prog cost: open program %d: %w", id, err)
			}
			progs = append(progs, p)
		}
		m.sets = append(m.sets, progs)
	}
	if m.stats, err = ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); err != nil {
		return m, fmt.Errorf("prog cost: enable bpf run-time stats: %w", err)
	}
	// Read after enabling: run_time_ns only grows while stats are on.
	for _, progs := range m.sets {
		s, err := sampleProgs(progs)
		if err != nil {
			return m, err
		}
		m.before = append(m.before, s)
	}
	return m, nil
}

// Stop reads the counters, turns the statistics off and closes the
// programs; it returns one ProgCost per set given to StartProgCost.
func (m *ProgCostMeter) Stop() ([]ProgCost, error) {
	var costs []ProgCost
	var errs []error
	for i, progs := range m.sets {
		after, err := sampleProgs(progs)
		if err != nil {
			errs = append(errs, err)
			costs = append(costs, ProgCost{})
			continue
		}
		costs = append(costs, progCostDelta(m.before[i], after))
	}
	if err := m.close(); err != nil {
		errs = append(errs, err)
	}
	return costs, errors.Join(errs...)
}

func (m *ProgCostMeter) close() error {
	var errs []error
	if m.stats != nil {
		if err := m.stats.Close(); err != nil {
			errs = append(errs, fmt.Errorf("prog cost: disable bpf stats: %w", err))
		}
		m.stats = nil
	}
	for _, progs := range m.sets {
		for _, p := range progs {
			p.Close()
		}
	}
	m.sets = nil
	return errors.Join(errs...)
}

func sampleProgs(progs []*ebpf.Program) ([]progSample, error) {
	var out []progSample
	for _, p := range progs {
		st, err := p.Stats()
		if err != nil {
			return nil, fmt.Errorf("prog cost: read program stats: %w", err)
		}
		out = append(out, progSample{runs: st.RunCount, runTime: st.Runtime})
	}
	return out, nil
}

// MeasureProgCost is StartProgCost, window, Stop for one set of programs:
// what they cost while window ran.
func MeasureProgCost(progIDs []ebpf.ProgramID, window func() error) (ProgCost, error) {
	m, err := StartProgCost(progIDs)
	if err != nil {
		return ProgCost{}, err
	}
	werr := window()
	costs, err := m.Stop()
	if werr != nil {
		return ProgCost{}, werr
	}
	if err != nil {
		return ProgCost{}, err
	}
	return costs[0], nil
}

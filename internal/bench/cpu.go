package bench

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is USER_HZ, the unit of /proc/stat and /proc/<pid>/stat times.
// It is 100 on every Linux ABI Go supports (sysconf(_SC_CLK_TCK)).
const clockTick = 100

// SystemCPU is the machine-wide CPU time from the first line of /proc/stat.
type SystemCPU struct {
	Busy  time.Duration // user+nice+system+irq+softirq+steal, all CPUs
	Total time.Duration // Busy + idle + iowait
}

// ReadSystemCPU reads /proc/stat. Softirq time is where most packet
// processing of the kernel path lands, so it counts as busy.
func ReadSystemCPU() (SystemCPU, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return SystemCPU{}, fmt.Errorf("read /proc/stat: %w", err)
	}
	return parseProcStat(string(b))
}

func parseProcStat(s string) (SystemCPU, error) {
	line, _, _ := strings.Cut(s, "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return SystemCPU{}, fmt.Errorf("parse /proc/stat: unexpected first line %q", line)
	}
	var v [8]uint64 // user nice system idle iowait irq softirq steal
	for i := range v {
		n, err := strconv.ParseUint(f[i+1], 10, 64)
		if err != nil {
			return SystemCPU{}, fmt.Errorf("parse /proc/stat field %d: %w", i+1, err)
		}
		v[i] = n
	}
	busy := v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
	total := busy + v[3] + v[4]
	tick := time.Second / clockTick
	return SystemCPU{Busy: time.Duration(busy) * tick, Total: time.Duration(total) * tick}, nil
}

// ProcessCPU returns utime+stime of process pid (its threads included).
func ProcessCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read process cpu: %w", err)
	}
	return parsePidStat(string(b))
}

func parsePidStat(s string) (time.Duration, error) {
	// The command name (field 2) is in parentheses and may hold spaces:
	// count fields after the last ')'. utime and stime are fields 14, 15.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse pid stat: no command field")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("parse pid stat: %d fields", len(f))
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse pid stat: utime %q stime %q", f[11], f[12])
	}
	return time.Duration(u+st) * (time.Second / clockTick), nil
}

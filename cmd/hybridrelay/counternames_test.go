package main

import (
	"strings"
	"testing"

	"github.com/hybridrelay/hybridrelay/internal/admin"
	"github.com/hybridrelay/hybridrelay/pkg/loader"
)

// TestKernelCountersExplained: every counter of the program is one the
// operator tooling explains: a forwarding counter, a pass reason of
// admin.PassReasons, a pre-filter drop reason of admin.PrefilterReasons, or
// the bandwidth-limit drops, and every reason those tables list exists.
func TestKernelCountersExplained(t *testing.T) {
	names := map[string]bool{}
	for i := 0; i < loader.NumCounters; i++ {
		n := loader.Counter(i).String()
		names[n] = true
		switch {
		case strings.HasPrefix(n, "fwd_"):
		case strings.HasPrefix(n, "pass_"):
			if admin.LookupPassReason(n).Meaning == "" {
				t.Errorf("%s has no entry in admin.PassReasons", n)
			}
		case strings.HasPrefix(n, "drop_prefilter_"):
			found := false
			for _, r := range admin.PrefilterReasons {
				found = found || "drop_prefilter_"+r.Name == n
			}
			if !found {
				t.Errorf("%s has no entry in admin.PrefilterReasons", n)
			}
		case n == "drop_bandwidth_packets" || n == "drop_bandwidth_bytes":
			// The "kernel over limit" row of stats and
			// hybridrelay_kernel_drops_total{reason="bandwidth"}.
		default:
			t.Errorf("counter %s is neither fwd_, pass_, drop_prefilter_ nor drop_bandwidth_", n)
		}
	}
	for _, r := range admin.PassReasons {
		if !names["pass_"+r.Name] {
			t.Errorf("admin.PassReasons lists %s, the program has no such counter", r.Name)
		}
	}
	for _, r := range admin.PrefilterReasons {
		if !names["drop_prefilter_"+r.Name] {
			t.Errorf("admin.PrefilterReasons lists %s, the program has no such counter", r.Name)
		}
	}
}

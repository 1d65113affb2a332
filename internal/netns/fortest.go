package netns

import "testing"

// ForTest builds a topology as opts says for a test or benchmark, removes
// it (namespaces and veths) at tb's cleanup, and fails tb when it cannot
// be built or removed. The veths' temporary names in the root namespace carry the
// process id, so test binaries building topologies at once do not collide.
func ForTest(tb testing.TB, opts TopologyOptions) *Topology {
	tb.Helper()
	topo, err := NewTopologyWith(opts)
	if err != nil {
		tb.Fatalf("network namespaces: %v", err)
	}
	tb.Cleanup(func() {
		if err := topo.Close(); err != nil {
			tb.Errorf("remove network namespaces: %v", err)
		}
	})
	return topo
}

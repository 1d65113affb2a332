package dpe2e

import (
	"strings"
	"testing"

	"github.com/hybridrelay/hybridrelay/internal/netns"
)

// newTopology builds the three namespaces, removed at the end of the test.
// netns names its temporary veths hrv<n> with a per-process counter, so
// two test binaries building topologies at once (go test ./... runs
// packages in parallel) can collide on a name: that one error is retried,
// the counter having moved on.
func newTopology(tb testing.TB) *netns.Topology {
	tb.Helper()
	var err error
	for range 5 {
		var topo *netns.Topology
		if topo, err = netns.NewTopology(); err == nil {
			tb.Cleanup(func() { topo.Close() })
			return topo
		}
		if !strings.Contains(err.Error(), "File exists") {
			break
		}
	}
	tb.Fatal(err)
	return nil
}

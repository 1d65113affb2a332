package xdpe2e

import (
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/internal/testutil"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
	"github.com/hybridrelay/hybridrelay/pkg/loader"
)

// TestPionThroughXDP: a pion/turn v4 client allocates through the relay
// with the XDP program attached; once its channel is bound the kernel
// forwards both directions (the XDP counters account for every packet, the
// userspace path for none) and data arrives byte-exact.
func TestPionThroughXDP(t *testing.T) { forEachVariant(t, testPionThroughXDP) }

func testPionThroughXDP(t *testing.T, to netns.TopologyOptions) {
	for _, fam := range []struct {
		name string
		v6   bool
		gso  bool
	}{{"ipv4", false, false}, {"ipv6", true, false}, {"ipv4-gso", false, true}, {"ipv6-gso", true, true}} {
		t.Run(fam.name, func(t *testing.T) {
			dp := dataplane.NewPlain()
			if fam.gso {
				var err error
				if dp, err = dataplane.NewGSO(dataplane.GSOOptions{Loops: 1}); err != nil {
					t.Fatal(err)
				}
			}
			e := newEnvDP(t, to, fam.v6, 64, dp, nil)
			pr := newPeer(t, e, 40000)
			pc := newPion(t, e)
			if pc.relayAddr().Addr().Is6() != fam.v6 {
				t.Fatalf("relayed address %v is of the wrong family", pc.relayAddr())
			}
			// The first datagrams go as Send indications while pion binds
			// a channel in the background.
			exchange(t, pc, pr, 3, "warmup")
			testutil.WaitFor(t, 5*time.Second, "offloaded channel", func() bool { return offloadedChannels(e.srv) == 1 })

			before := counters(t, e.path.X)
			usBefore := e.srv.Stats()
			const n = 40
			exchange(t, pc, pr, n, "kernel")
			after := counters(t, e.path.X)
			usAfter := e.srv.Stats()
			if d := after.Get(loader.FwdToPeerPackets) - before.Get(loader.FwdToPeerPackets); d != n {
				t.Errorf("xdp forwarded %d packets to the peer, want %d", d, n)
			}
			if d := after.Get(loader.FwdToClientPackets) - before.Get(loader.FwdToClientPackets); d != n {
				t.Errorf("xdp forwarded %d packets to the client, want %d", d, n)
			}
			if d := usAfter.UserspaceToPeer.Packets - usBefore.UserspaceToPeer.Packets; d != 0 {
				t.Errorf("userspace relayed %d packets to the peer while the channel was offloaded", d)
			}
			if d := usAfter.UserspaceToClient.Packets - usBefore.UserspaceToClient.Packets; d != 0 {
				t.Errorf("userspace relayed %d packets to the client while the channel was offloaded", d)
			}
			// The per-channel usage the control plane reads back.
			var usage uint64
			for _, a := range e.srv.Allocations() {
				for _, c := range a.Channels {
					usage += c.Kernel.ToPeerPackets
				}
			}
			if usage < n {
				t.Errorf("channel usage counted %d packets to the peer, want at least %d", usage, n)
			}
		})
	}
}

// Package xdpe2e puts hybridrelay's XDP fast path on a netns.Topology and
// holds its end-to-end tests (real TURN clients through the relay
// namespace with the program attached).
//
// Attach is also the entry point for benchmark harnesses:
//
//	topo, _ := netns.NewTopology()
//	p, err := xdpe2e.Attach(topo, xdpe2e.Options{MaxChannels: 4096})
//	defer p.Close()
//	srv, _ := control.NewServer(cfg, control.Options{
//		Datapath: turntest.InNamespace(dataplane.NewPlain(), topo.Relay), // internal/testutil/turntest
//		Offload:  p.Offload(),
//	})
//	topo.Relay.Do(srv.Start)
//
// It loads and pins from the root namespace (on a private bpffs mount
// unless Options.PinDir is set), attaches the relay program natively to the
// relay namespace's two veths, fills the devmap with them, and attaches the
// XDP_PASS program to the client and peer ends: XDP_TX/redirect into a veth
// delivers nothing unless its peer end runs an XDP program (docs/design.md).
package xdpe2e

// Package xdppass builds the trivial XDP program (`r0 = XDP_PASS; exit`)
// that probe attaches to test a host's XDP modes, that test topologies put
// on veth ends so frames sent with XDP_TX or a redirect are delivered
// (docs/design.md, Testing: veth facts), and that benchmarks use as the
// baseline of the program-cost meter. The relay object has its own
// pass_all program (pkg/loader), for callers that already loaded it.
package xdppass

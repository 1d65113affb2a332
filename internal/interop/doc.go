// Package interop tests hybridrelay against TURN clients that nobody in this
// project wrote: coturn's turnutils_uclient / turnutils_peer and the
// pion/turn v4 client library. It also holds the robustness tests that the
// foundation issue asks for: a malformed-packet flood against a server that
// is relaying live traffic (RFC 8489 section 6.3, RFC 8656 section 12.6
// and its Security Considerations), and the per-source limit on unauthenticated requests (the 401
// amplification problem).
//
// Three ways of running the server are used: an in-process
// control.Server on loopback (plain and gso datapaths), so a test can read
// its counters, allocation table, goroutines and heap; the test binary
// re-executed as a server inside the relay namespace of an internal/netns
// topology (TestMain), for real routing under the default peer policy; and
// the built cmd/hybridrelay binary with --datapath xdp in that topology,
// for the kernel fast path.
//
// The package's only non-test code parses turnutils_uclient's summary, so
// that a silent loss shows up as a failure (uclient exits 0 even when every
// packet was lost). docs/interop.md says how to run the tests and how to
// point a WebRTC or coturn client at hybridrelay.
package interop

// Package interop tests hybridrelay against TURN clients that nobody in this
// project wrote: coturn's turnutils_uclient / turnutils_peer and the
// pion/turn v4 client library. It also holds the robustness tests that the
// foundation issue asks for: a malformed-packet flood against a server that
// is relaying live traffic (RFC 8656 section 20 "Security Considerations",
// RFC 8489 section 16), and the per-source limit on unauthenticated requests
// (the 401 amplification problem).
//
// The tests run an in-process control.Server on loopback with the plain
// datapath; the package's only non-test code parses turnutils_uclient's
// summary so that a silent loss shows up as a failure (uclient exits 0 even
// when every packet was lost). docs/interop.md says how to run it and how
// to point a WebRTC or coturn client at hybridrelay.
package interop

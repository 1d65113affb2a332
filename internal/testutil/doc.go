// Package testutil holds the small helpers several test packages share:
// polling for a condition (WaitFor, Poll), a self-signed TLS certificate
// (WriteSelfSignedCert), and an independent computation of the Internet
// checksum (RFC 1071) and the UDP checksum over its pseudo-header (RFC 768,
// RFC 8200 section 8.1), which the kernel-path and datapath tests verify
// rewritten packets with (docs/design.md, Kernel-path invariants, 5).
//
// It imports nothing of this module, so any package's own tests may use
// it; helpers that need the datapath or a TURN client live in
// internal/testutil/turntest.
package testutil

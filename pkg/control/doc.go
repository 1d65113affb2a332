// Package control is the STUN/TURN control plane of hybridrelay (RFC 8489,
// RFC 8656): listeners (UDP through a dataplane.Datapath, TCP, TLS),
// long-term and TURN REST credentials, nonces, allocations, permissions,
// channels, lifetimes, quotas, the peer policy and rate limits.
//
// It tells an [Offload] (the XDP fast path) which channel bindings it may
// forward in the kernel and when they stop being valid; without one every
// packet takes the userspace path, which produces the same bytes.
package control

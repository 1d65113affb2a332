package control

import "github.com/hybridrelay/hybridrelay/internal/kchan"

// ErrOffloadFull is returned (wrapped) by a KernelChannels whose table has
// no room. The channel then stays on the userspace path; it is never an
// error to the client.
var ErrOffloadFull = kchan.ErrFull

// ChannelBinding is what the control plane declares to the kernel: channel
// Number of the allocation (Client, Listener, Relay) goes to Peer until
// Expires, the earliest of the channel binding's, the permission's and the
// allocation's expiry (docs/design.md, Kernel-path invariants, 1). Only
// UDP clients are declared; TCP/TLS clients and Send indications stay in
// userspace.
type ChannelBinding = kchan.Binding

// ChannelUsage is what the kernel counted for one channel.
type ChannelUsage = kchan.Usage

// UsageSnapshot is the usage of every channel in the kernel table, read in
// one pass.
type UsageSnapshot = kchan.Snapshot

// KernelChannels is the kernel channel table as the control plane sees it
// (pkg/loader's XDP implements it; cmd/hybridrelay wires it in). The
// table's owner decides how a binding lands in its maps: a new entry, an
// expiry moved in place, relay-to-relay forwarding between two of this
// server's allocations. Every method must be safe for concurrent use; the
// control plane orders the calls for one channel. Bind has returned before
// the ChannelBind success response leaves, so the first ChannelData cannot
// race the map insert (Kernel-path invariants, 3).
type KernelChannels interface {
	// Bind makes the kernel forward b until b.Expires, installing it or
	// updating what is installed for b's channel. An error leaves the
	// channel on the userspace path.
	Bind(b ChannelBinding) error
	// Unbind stops the kernel forwarding b and returns what it counted
	// for b; unbinding a channel that is not installed is not an error.
	Unbind(b ChannelBinding) (ChannelUsage, error)
	// Usage reads every installed channel's counters at once.
	Usage() (UsageSnapshot, error)
}

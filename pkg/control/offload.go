package control

import (
	"errors"
	"net/netip"
	"time"
)

// ErrOffloadFull is returned by an Offload whose table has no room. The
// channel then stays on the userspace path; it is never an error to the
// client.
var ErrOffloadFull = errors.New("offload table full")

// ChannelOffload describes one bound channel the kernel may forward in both
// directions:
//
//	client -> Listener  ChannelData(Channel)  ==>  Relay -> Peer   (payload)
//	Peer   -> Relay     payload               ==>  Listener -> Client ChannelData(Channel)
//
// Only UDP clients are offloaded; TCP/TLS clients and Send indications stay
// in userspace.
type ChannelOffload struct {
	Client   netip.AddrPort // the client's transport address as the server sees it
	Listener netip.AddrPort // the server address the client sends to
	Relay    netip.AddrPort // the allocation's relayed transport address
	Peer     netip.AddrPort
	Channel  uint16
	// Expires is the earliest of the channel binding's, the permission's and
	// the allocation's expiry. The kernel checks it on every packet.
	Expires time.Time
	// DontFragment sets DF on relayed IPv4 packets (DONT-FRAGMENT in the
	// Allocate request).
	DontFragment bool
	// Meter is the allocation's bandwidth meter (Metering), nil when the
	// allocation is not limited: the kernel limits the channel on it.
	Meter BandwidthMeter
}

// ChannelUsage is what the kernel counted for one channel.
type ChannelUsage struct {
	ToPeerPackets, ToPeerBytes     uint64
	ToClientPackets, ToClientBytes uint64
}

// Offload is the kernel fast path as the control plane sees it. Every method
// must be safe for concurrent use. Install is called, and has returned,
// before the ChannelBind success response leaves, so the first ChannelData
// cannot race the map insert.
type Offload interface {
	// Install adds or replaces both directions of a channel.
	Install(c ChannelOffload) error
	// Refresh moves the expiry of an installed channel.
	Refresh(c ChannelOffload) error
	// Remove deletes both directions; removing an absent channel is not an
	// error.
	Remove(c ChannelOffload) error
	// Usage reads the per-channel counters.
	Usage(c ChannelOffload) (ChannelUsage, error)
}

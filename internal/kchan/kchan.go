package kchan

import (
	"errors"
	"net/netip"
	"time"
)

var (
	// ErrFull means the table has no room: the channel stays on the
	// userspace path; it is never an error to the client.
	ErrFull = errors.New("kernel channel table full")
	// ErrUnsupported means the kernel path cannot forward the channel
	// (mixed address families, a channel number outside 0x4000-0x7FFF,
	// ...); it stays on the userspace path.
	ErrUnsupported = errors.New("channel not supported by the kernel path")
)

// Binding is one bound channel the kernel may forward, in both
// directions:
//
//	Client -> Listener  ChannelData(Number)  ==>  Relay -> Peer          data
//	Peer   -> Relay     data                 ==>  Listener -> Client     ChannelData(Number)
//
// Only UDP clients are bound; TCP/TLS clients and Send indications stay in
// userspace. The kernel path forwards only bindings whose four addresses
// are of one family (IPv4-mapped IPv6 addresses count as IPv4).
type Binding struct {
	Client   netip.AddrPort // the client's transport address as the server sees it
	Listener netip.AddrPort // the server address the client sends to
	Relay    netip.AddrPort // the allocation's relayed transport address
	Peer     netip.AddrPort
	Number   uint16 // the channel number, 0x4000-0x7FFF (RFC 8656 section 12, RFC 5766 section 11)
	// Expires is the earliest of the channel binding's, the permission's
	// and the allocation's expiry; the kernel checks it on every packet
	// (docs/design.md, Kernel-path invariants, 1). The zero Time means
	// already expired.
	Expires time.Time
	// DontFragment sets DF on relayed IPv4 packets to the peer
	// (DONT-FRAGMENT in the Allocate request, RFC 8656 section 14).
	DontFragment bool
	// Meter is the allocation's bandwidth meter slot (Meter.Slot), 0 when
	// the allocation is not limited; every channel of an allocation has
	// the same one (docs/design.md, Bandwidth limit).
	Meter uint32
}

// Meter is one allocation's bandwidth-limit budget, held by the kernel
// table's owner and shared by the kernel path (which meters the
// allocation's channels on it) and the userspace path (Allow), so the
// allocation has one limit whichever path carries its bytes.
type Meter interface {
	// Slot is what Binding.Meter carries.
	Slot() uint32
	// Allow charges n bytes about to be relayed in userspace and reports
	// whether they conform (what does not is counted as dropped).
	Allow(n int) bool
	// Drops is what was dropped over the limit, by both paths.
	Drops() (packets, bytes uint64)
	// Release gives the meter back once the allocation's kernel entries
	// are gone.
	Release()
}

// Key identifies a binding in the table: the client->peer direction's
// match (client, listener, channel number), with IPv4-mapped addresses
// unmapped as the packet carries them.
type Key struct {
	Client, Listener netip.AddrPort
	Number           uint16
}

// Key is b's table key.
func (b Binding) Key() Key {
	return Key{Client: unmap(b.Client), Listener: unmap(b.Listener), Number: b.Number}
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// Usage is what the kernel counted for one channel: data bytes (the
// ChannelData payload to the peer, the peer datagram's payload to the
// client), summed over the CPUs.
type Usage struct {
	ToPeerPackets   uint64 `json:"to_peer_packets"`
	ToPeerBytes     uint64 `json:"to_peer_bytes"`
	ToClientPackets uint64 `json:"to_client_packets"`
	ToClientBytes   uint64 `json:"to_client_bytes"`
}

// Add adds v to u.
func (u *Usage) Add(v Usage) {
	u.ToPeerPackets += v.ToPeerPackets
	u.ToPeerBytes += v.ToPeerBytes
	u.ToClientPackets += v.ToClientPackets
	u.ToClientBytes += v.ToClientBytes
}

// Packets is the number of packets in both directions.
func (u Usage) Packets() uint64 { return u.ToPeerPackets + u.ToClientPackets }

// Snapshot is the usage of every installed channel, read at one moment
// (one pass over the usage map).
type Snapshot map[Key]Usage

// Of returns b's usage and whether b is in the snapshot.
func (s Snapshot) Of(b Binding) (Usage, bool) {
	u, ok := s[b.Key()]
	return u, ok
}

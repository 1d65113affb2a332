package control

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/hybridrelay/hybridrelay/pkg/loader"
)

// XDPOffload is the kernel fast path (pkg/loader's XDP program and maps)
// as an Offload. It is safe for concurrent use.
//
// After a restart the loader re-adopts the pinned maps with the previous
// process's entries. The new Server re-installs the channels it restores
// from its StateFile (Install replaces an entry in place, keeping its
// usage counters); call Reconcile after Server.Start to delete the entries
// nobody re-installed. Until then they only forward until their own
// expiry, which the kernel enforces.
type XDPOffload struct {
	x *loader.XDP
}

var _ Offload = (*XDPOffload)(nil)

// NewXDPOffload adapts a loaded (and normally attached) program. The
// caller keeps ownership of x (Close/Unpin).
func NewXDPOffload(x *loader.XDP) *XDPOffload {
	return &XDPOffload{x: x}
}

func toLoaderChannel(c ChannelOffload) loader.Channel {
	lc := loader.Channel{
		Client: c.Client, Listener: c.Listener, Relay: c.Relay, Peer: c.Peer,
		Number: c.Channel, Expires: c.Expires, DontFragment: c.DontFragment,
	}
	if m, ok := c.Meter.(*loader.Meter); ok {
		lc.Meter = m.Slot()
	}
	return lc
}

var _ Metering = (*XDPOffload)(nil)

// Meter returns the kernel's bandwidth meter for an allocation.
func (o *XDPOffload) Meter(client, listener netip.AddrPort, rate, burst uint64) (BandwidthMeter, error) {
	m, err := o.x.AcquireMeter(client, listener, rate, burst)
	if err != nil {
		return nil, fmt.Errorf("xdp offload meter: %w", err)
	}
	return m, nil
}

// Install adds or replaces both directions of c. A full table returns an
// error wrapping ErrOffloadFull (the loader also counts it in its
// pass_map_full counter); a channel the program cannot forward (an IPv6
// client with an IPv4 relay address, ...) an error wrapping
// loader.ErrUnsupported. Either way the channel stays in userspace.
func (o *XDPOffload) Install(c ChannelOffload) error {
	err := o.x.PutChannel(toLoaderChannel(c))
	if errors.Is(err, loader.ErrFull) {
		return fmt.Errorf("xdp offload install: %w: %w", ErrOffloadFull, err)
	}
	if err != nil {
		return fmt.Errorf("xdp offload install: %w", err)
	}
	return nil
}

// Refresh moves the expiry of both directions. An entry that vanished
// (deleted by an operator, never re-adopted) is installed again.
func (o *XDPOffload) Refresh(c ChannelOffload) error {
	err := o.x.UpdateExpiry(toLoaderChannel(c))
	if errors.Is(err, loader.ErrNotFound) {
		return o.Install(c)
	}
	if err != nil {
		return fmt.Errorf("xdp offload refresh: %w", err)
	}
	return nil
}

// Remove deletes both directions; an absent channel is not an error.
func (o *XDPOffload) Remove(c ChannelOffload) error {
	if err := o.x.DeleteChannel(toLoaderChannel(c)); err != nil {
		return fmt.Errorf("xdp offload remove: %w", err)
	}
	return nil
}

// Usage reads the kernel's per-channel counters.
func (o *XDPOffload) Usage(c ChannelOffload) (ChannelUsage, error) {
	s, err := o.x.ChannelCounters(toLoaderChannel(c))
	if err != nil {
		return ChannelUsage{}, fmt.Errorf("xdp offload usage: %w", err)
	}
	return ChannelUsage{
		ToPeerPackets: s.ToPeerPackets, ToPeerBytes: s.ToPeerBytes,
		ToClientPackets: s.ToClientPackets, ToClientBytes: s.ToClientBytes,
	}, nil
}

// Reconcile deletes kernel entries re-adopted from a previous process that
// the current control plane did not install again (see XDPOffload). It
// returns how many it removed.
func (o *XDPOffload) Reconcile() (int, error) {
	n, err := o.x.Reconcile()
	if err != nil {
		return n, fmt.Errorf("xdp offload reconcile: %w", err)
	}
	return n, nil
}

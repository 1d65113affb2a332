package loader

// The channel table: what one bound channel is in the maps, and installing,
// refreshing, deleting and reading it back (the index in XDP mirrors the
// maps so no write needs a read).

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/cilium/ebpf"

	"github.com/hybridrelay/hybridrelay/internal/kchan"
)

// Channel is one bound channel as the kernel forwards it: the control
// plane's binding (kchan.Binding, the same fields, converted for free), on
// which the loader hangs its key building (keys.go).
type Channel kchan.Binding

// ChannelEntry is one installed channel as read back from the maps.
type ChannelEntry struct {
	Channel
	// ExpiresNs is the channel's CLOCK_MONOTONIC expiry (the map holds it
	// early by the coarse clock's lag, see kernelExpiry).
	ExpiresNs uint64
	Slot      uint32
	Usage     kchan.Usage
	// PeerEntry reports whether the peer->client direction is present.
	PeerEntry bool
	// Hairpin: the entry is written relay-to-relay (hairpin.go); ExpiresNs
	// is then the earlier of the two channels'.
	Hairpin bool
}

// entry is what the index remembers about an installed channel: enough to
// rewrite both values and delete both keys without reading the maps.
type entry struct {
	cv relayC2pVal // the channel's own c2p value, never hairpinned
	pk relayP2cKey
	pv relayP2cVal
	// probe is the p2c key a relay-to-relay target would have
	// (hairpin.go); written is the c2p value in the map (cv, or cv
	// hairpinned to the channel installed under probe).
	probe   relayP2cKey
	written relayC2pVal
}

// PutChannel installs or replaces both directions of c. Re-installing a
// channel keeps its slot and usage counters. A full table returns ErrFull
// (and counts it); a channel the program cannot forward ErrUnsupported.
func (x *XDP) PutChannel(c Channel) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed {
		return fmt.Errorf("put channel: %w", os.ErrClosed)
	}
	if x.egress == nil {
		return fmt.Errorf("put channel: %w", errReadOnly)
	}
	probe, _, _, _, err := c.keys(0, 0)
	if err != nil {
		return fmt.Errorf("put channel: %w", err)
	}
	old := x.index[probe]
	var slot uint32
	switch {
	case old != nil:
		slot = old.cv.Slot
	case len(x.free) == 0:
		x.countMapFull()
		return fmt.Errorf("put channel %#x: %w", c.Number, ErrFull)
	default:
		slot = x.free[len(x.free)-1]
	}
	ck, cv, pk, pv, err := c.keys(slot, kernelExpiry(c.Expires))
	if err != nil {
		return fmt.Errorf("put channel: %w", err)
	}
	if cv.ExpiresJiffies, err = x.clock.expiry(MonotonicNanos(c.Expires)); err != nil {
		return fmt.Errorf("put channel %#x: %w", c.Number, err)
	}
	pv.ExpiresJiffies = cv.ExpiresJiffies
	// The way to each destination, resolved before the entries exist.
	if cv.Egress, err = x.egress.acquire(c.Peer.Addr(), c.Relay.Addr()); err != nil {
		return x.egressFailed(c, "peer", err)
	}
	if pv.Egress, err = x.egress.acquire(c.Client.Addr(), c.Listener.Addr()); err != nil {
		x.egress.release(cv.Egress)
		return x.egressFailed(c, "client", err)
	}
	fail := func(err error) error {
		x.egress.release(cv.Egress)
		x.egress.release(pv.Egress)
		return err
	}
	if old == nil {
		// A new owner of the slot starts from zero, on every CPU.
		zero := make([]relayChanStats, x.possibleCPUs())
		if err := x.objs.ChanUsage.Put(slot, zero); err != nil {
			return fail(fmt.Errorf("put channel %#x: reset usage: %w", c.Number, err))
		}
	}
	// Peer direction first: a client packet forwarded before the peer
	// entry exists would only mean the answer takes userspace.
	if err := x.putP2c(pk, pv, ebpf.UpdateAny); err != nil {
		if isFull(err) {
			x.countMapFull()
			return fail(fmt.Errorf("put channel %#x: peer entry: %w", c.Number, ErrFull))
		}
		return fail(fmt.Errorf("put channel %#x: peer entry: %w", c.Number, err))
	}
	hpProbe := hairpinProbe(cv, pk)
	written := x.c2pValue(ck, cv, hpProbe)
	if err := x.putC2p(ck, written, ebpf.UpdateAny); err != nil {
		if old != nil && old.pk == pk {
			_ = x.putP2c(pk, old.pv, ebpf.UpdateAny)
		} else {
			_ = x.deleteP2c(pk)
		}
		if isFull(err) {
			x.countMapFull()
			return fail(fmt.Errorf("put channel %#x: client entry: %w", c.Number, ErrFull))
		}
		return fail(fmt.Errorf("put channel %#x: client entry: %w", c.Number, err))
	}
	if old != nil {
		x.unlinkLocked(ck, old.pk, old.probe)
		if old.pk != pk {
			// Same channel, other peer: relay-to-relay entries that
			// targeted the old peer key fall back, then the old
			// reverse entry goes.
			_ = x.rewriteDependentsLocked(old.pk)
			_ = x.deleteP2c(old.pk)
		}
		x.egress.release(old.cv.Egress)
		x.egress.release(old.pv.Egress)
	}
	if old == nil {
		x.free = x.free[:len(x.free)-1]
		x.slotGen[slot]++
	}
	e := &entry{cv: cv, pk: pk, pv: pv, probe: hpProbe, written: written}
	x.index[ck] = e
	x.linkLocked(ck, e)
	delete(x.adopted, ck)
	if err := x.rewriteDependentsLocked(pk); err != nil {
		return fmt.Errorf("put channel %#x: %w", c.Number, err)
	}
	return nil
}

// UpdateExpiry moves the expiry of an installed channel (both directions).
// Counters are not touched (they live outside the entries).
func (x *XDP) UpdateExpiry(c Channel) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed {
		return fmt.Errorf("update expiry: %w", os.ErrClosed)
	}
	if x.egress == nil {
		return fmt.Errorf("update expiry: %w", errReadOnly)
	}
	ck, _, _, _, err := c.keys(0, 0)
	if err != nil {
		return fmt.Errorf("update expiry: %w", err)
	}
	e := x.index[ck]
	if e == nil {
		return fmt.Errorf("update expiry of channel %#x: %w", c.Number, ErrNotFound)
	}
	ns := kernelExpiry(c.Expires)
	jiffies, err := x.clock.expiry(MonotonicNanos(c.Expires))
	if err != nil {
		return fmt.Errorf("update expiry of channel %#x: %w", c.Number, err)
	}
	cv, pv := e.cv, e.pv
	cv.ExpiresNs, pv.ExpiresNs = ns, ns
	cv.ExpiresJiffies, pv.ExpiresJiffies = jiffies, jiffies
	if err := x.putP2c(e.pk, pv, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("update expiry of channel %#x: peer entry: %w", c.Number, err)
	}
	written := x.c2pValue(ck, cv, e.probe)
	if err := x.putC2p(ck, written, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("update expiry of channel %#x: client entry: %w", c.Number, err)
	}
	e.cv, e.pv, e.written = cv, pv, written
	delete(x.adopted, ck)
	// A relay-to-relay entry that targets this channel takes the new
	// expiry if it is the earlier one.
	if err := x.rewriteDependentsLocked(e.pk); err != nil {
		return fmt.Errorf("update expiry of channel %#x: %w", c.Number, err)
	}
	return nil
}

// DeleteChannel removes both directions; an absent channel is not an error.
// Only Client, Listener and Number of c are used.
func (x *XDP) DeleteChannel(c Channel) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed {
		return fmt.Errorf("delete channel: %w", os.ErrClosed)
	}
	if x.egress == nil {
		return fmt.Errorf("delete channel: %w", errReadOnly)
	}
	ck, err := c.c2pKey()
	if err != nil {
		return nil // never installable, so not installed
	}
	return x.deleteLocked(ck)
}

func (x *XDP) deleteLocked(ck relayC2pKey) error {
	e := x.index[ck]
	if e == nil {
		return nil
	}
	var errs []error
	// Relay-to-relay entries that send to this channel's client stop
	// doing so before it goes.
	x.unlinkLocked(ck, e.pk, e.probe)
	if err := x.rewriteDependentsLocked(e.pk); err != nil {
		errs = append(errs, err)
	}
	if err := x.deleteC2p(ck); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("client entry: %w", err))
	}
	if err := x.deleteP2c(e.pk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("peer entry: %w", err))
	}
	if len(errs) > 0 {
		x.linkLocked(ck, e)
		return fmt.Errorf("delete channel %#x: %w", host16(ck.Channel), errors.Join(errs...))
	}
	delete(x.index, ck)
	delete(x.adopted, ck)
	x.free = append(x.free, e.cv.Slot)
	x.egress.release(e.cv.Egress)
	x.egress.release(e.pv.Egress)
	return nil
}

// c2pKey is the client->peer key of c (only Client, Listener, Number).
func (c Channel) c2pKey() (relayC2pKey, error) {
	full := c
	if !full.Relay.IsValid() {
		full.Relay = c.Listener
	}
	if !full.Peer.IsValid() {
		full.Peer = c.Client
	}
	if full.Relay.Addr().Unmap().Is4() != full.Client.Addr().Unmap().Is4() {
		full.Relay, full.Peer = c.Listener, c.Client
	}
	ck, _, _, _, err := full.keys(0, 0)
	return ck, err
}

// ChannelCounters reads the usage counters of an installed channel.
func (x *XDP) ChannelCounters(c Channel) (kchan.Usage, error) {
	ck, err := c.c2pKey()
	if err != nil {
		return kchan.Usage{}, fmt.Errorf("channel counters: %w", err)
	}
	x.mu.Lock()
	e := x.index[ck]
	x.mu.Unlock()
	if e == nil {
		return kchan.Usage{}, fmt.Errorf("channel counters of %#x: %w", c.Number, ErrNotFound)
	}
	return x.slotUsage(e.cv.Slot)
}

// possibleCPUs is the number of values of a per-CPU map entry.
func (x *XDP) possibleCPUs() int {
	n, err := ebpf.PossibleCPU()
	if err != nil || n < 1 {
		return 1
	}
	return n
}

// IterateChannels calls fn for every channel in the kernel's client->peer
// map (what `hybridrelay maps dump` shows), read from the map itself, not
// from the index. fn returning false stops the iteration.
func (x *XDP) IterateChannels(fn func(ChannelEntry) bool) error {
	// Every slot's usage in one batched pass, not a lookup per entry
	// (nil where the kernel has no batch operations).
	var usage []kchan.Usage
	if err := x.batchUsage(func(slot uint32, u kchan.Usage) {
		if int(slot) >= len(usage) {
			usage = append(usage, make([]kchan.Usage, int(slot)+1-len(usage))...)
		}
		usage[slot] = u
	}); err != nil {
		usage = nil
	}
	var k relayC2pKey
	var v relayC2pVal
	it := x.objs.C2pChannels.Iterate()
	for it.Next(&k, &v) {
		e := ChannelEntry{Channel: channelFrom(k, v), ExpiresNs: expiryFromKernel(v.ExpiresNs), Slot: v.Slot,
			Hairpin: v.Flags&flagHairpin != 0}
		if int(v.Slot) < len(usage) {
			e.Usage = usage[v.Slot]
		} else if u, err := x.slotUsage(v.Slot); err == nil {
			e.Usage = u
		}
		_, _, pk, _, err := e.Channel.keys(0, 0)
		if err == nil {
			var pv relayP2cVal
			e.PeerEntry = x.objs.P2cChannels.Lookup(pk, &pv) == nil
		}
		if !fn(e) {
			return nil
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate channels: %w", err)
	}
	return nil
}

// Len is the number of channels installed.
func (x *XDP) Len() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.index)
}

// Reconcile deletes the channels found in re-adopted maps that were not
// installed (PutChannel/UpdateExpiry) since Load: after a restart the
// control plane restores its state, re-installs what it still has, and then
// calls Reconcile so stale entries do not linger until they expire.
func (x *XDP) Reconcile() (removed int, err error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	defer x.meters.reconcile()
	var errs []error
	for ck := range x.adopted {
		if err := x.deleteLocked(ck); err != nil {
			errs = append(errs, err)
			continue
		}
		removed++
	}
	return removed, errors.Join(errs...)
}

func isFull(err error) bool {
	// A preallocated hash map with no free element returns E2BIG.
	return errors.Is(err, syscall.E2BIG)
}

// egressFailed reports a failed egress slot acquisition; only a full table
// counts as map_full (a failed map write is an error of its own).
func (x *XDP) egressFailed(c Channel, to string, err error) error {
	if errors.Is(err, ErrFull) {
		x.countMapFull()
	}
	return fmt.Errorf("put channel %#x: egress to the %s: %w", c.Number, to, err)
}

package loader

// The kernel channel table as the control plane uses it (control.KernelChannels):
// the control plane declares bindings (Bind) and withdraws them (Unbind); this
// file decides how each lands in the maps (a new entry, an expiry moved in
// place, a move to another peer) and reads every channel's usage in one pass.
// The index in XDP is the installed state; the desired state is what the
// last Bind said.

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/cilium/ebpf"

	"github.com/hybridrelay/hybridrelay/internal/kchan"
)

// Bind makes the kernel forward b until b.Expires: a channel not installed
// is installed; one installed with the same peer, relayed address and DF
// only has its expiry moved in place (both directions); anything else is
// replaced, keeping its usage slot. Relay-to-relay rewriting follows from
// the installed channels (hairpin.go). A full table is an error wrapping
// kchan.ErrFull, a binding the program cannot forward one wrapping
// kchan.ErrUnsupported; either way the channel stays in userspace.
func (x *XDP) Bind(b kchan.Binding) error {
	c := Channel(b)
	if x.sameRoute(c) {
		err := x.UpdateExpiry(c)
		if !errors.Is(err, ErrNotFound) {
			return err
		}
		// Deleted underneath (an operator, a Reconcile): install again.
	}
	return x.PutChannel(c)
}

// sameRoute reports whether c is installed with the same peer, relayed
// address and flags, so that only its expiry may differ.
func (x *XDP) sameRoute(c Channel) bool {
	ck, cv, pk, _, err := c.keys(0, 0)
	if err != nil {
		return false
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	e := x.index[ck]
	return e != nil && e.pk == pk && e.cv.Flags == cv.Flags
}

// Unbind removes both directions of b and returns what the kernel counted
// for it, read just before the entries went. Unbinding a channel that is
// not installed returns zero usage and no error. Only Client, Listener and
// Number of b are used.
func (x *XDP) Unbind(b kchan.Binding) (kchan.Usage, error) {
	c := Channel(b)
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed {
		return kchan.Usage{}, fmt.Errorf("unbind channel: %w", os.ErrClosed)
	}
	if x.egress == nil {
		return kchan.Usage{}, fmt.Errorf("unbind channel: %w", errReadOnly)
	}
	ck, err := c.c2pKey()
	if err != nil {
		return kchan.Usage{}, nil // never installable, so not installed
	}
	e := x.index[ck]
	if e == nil {
		return kchan.Usage{}, nil
	}
	u, uerr := x.slotUsage(e.cv.Slot)
	if err := x.deleteLocked(ck); err != nil {
		return u, err
	}
	if uerr != nil {
		return u, fmt.Errorf("unbind channel %#x: final usage: %w", c.Number, uerr)
	}
	return u, nil
}

// usageChunk is how many slots one BPF_MAP_LOOKUP_BATCH call reads.
const usageChunk = 256

// Usage reads the usage of every installed channel in one pass over the
// per-CPU usage array (batched lookups of usageChunk slots; one lookup per
// installed slot where the kernel has no batch operations, before 5.6).
// x.mu is not held during the read, so Bind and Unbind do not wait for it;
// a channel whose slot changed owner meanwhile is left out of the
// snapshot rather than shown with another channel's counts.
func (x *XDP) Usage() (kchan.Snapshot, error) {
	owners := x.slotOwners()
	read, err := x.readSlots(owners)
	if err != nil {
		return nil, fmt.Errorf("channel usage: %w", err)
	}
	return x.snapshotOf(owners, read), nil
}

// slotOwner is who held a usage slot when Usage started.
type slotOwner struct {
	ck  relayC2pKey
	gen uint32 // x.slotGen of the slot then
}

func (x *XDP) slotOwners() map[uint32]slotOwner {
	x.mu.Lock()
	defer x.mu.Unlock()
	owners := make(map[uint32]slotOwner, len(x.index))
	for ck, e := range x.index {
		owners[e.cv.Slot] = slotOwner{ck, x.slotGen[e.cv.Slot]}
	}
	return owners
}

// readSlots reads the usage of the slots in owners, without x.mu.
func (x *XDP) readSlots(owners map[uint32]slotOwner) (map[uint32]kchan.Usage, error) {
	read := make(map[uint32]kchan.Usage, len(owners))
	if len(owners) == 0 {
		return read, nil
	}
	err := x.batchUsage(func(slot uint32, u kchan.Usage) {
		if _, ok := owners[slot]; ok {
			read[slot] = u
		}
	})
	if errors.Is(err, ebpf.ErrNotSupported) {
		for slot := range owners {
			u, err := x.slotUsage(slot)
			if err != nil {
				return nil, err
			}
			read[slot] = u
		}
		return read, nil
	}
	return read, err
}

// snapshotOf keys what was read by channel, keeping only the slots whose
// owner is still the one slotOwners saw.
func (x *XDP) snapshotOf(owners map[uint32]slotOwner, read map[uint32]kchan.Usage) kchan.Snapshot {
	x.mu.Lock()
	defer x.mu.Unlock()
	snap := make(kchan.Snapshot, len(read))
	for slot, u := range read {
		o := owners[slot]
		if e := x.index[o.ck]; e != nil && e.cv.Slot == slot && x.slotGen[slot] == o.gen {
			snap[keyOf(o.ck)] = u
		}
	}
	return snap
}

// batchUsage calls fn with every slot of the usage array, summed over the
// CPUs.
func (x *XDP) batchUsage(fn func(slot uint32, u kchan.Usage)) error {
	ncpu := x.possibleCPUs()
	keys := make([]uint32, usageChunk)
	vals := make([]relayChanStats, usageChunk*ncpu)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := x.objs.ChanUsage.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			fn(keys[i], sumUsage(vals[i*ncpu:(i+1)*ncpu]))
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil // the end of the array
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
	}
}

// slotUsage reads one usage slot, summed over the CPUs.
func (x *XDP) slotUsage(slot uint32) (kchan.Usage, error) {
	var per []relayChanStats
	if err := x.objs.ChanUsage.Lookup(slot, &per); err != nil {
		return kchan.Usage{}, fmt.Errorf("read channel usage slot %d: %w", slot, err)
	}
	return sumUsage(per), nil
}

func sumUsage(per []relayChanStats) kchan.Usage {
	var u kchan.Usage
	for _, s := range per {
		u.Add(kchan.Usage{ToPeerPackets: s.ToPeerPackets, ToPeerBytes: s.ToPeerBytes,
			ToClientPackets: s.ToClientPackets, ToClientBytes: s.ToClientBytes})
	}
	return u
}

// keyOf is the table key of an installed channel.
func keyOf(ck relayC2pKey) kchan.Key {
	return kchan.Key{
		Client:   netip.AddrPortFrom(addrFrom(ck.ClientAddr, ck.Family), host16(ck.ClientPort)),
		Listener: netip.AddrPortFrom(addrFrom(ck.ListenerAddr, ck.Family), host16(ck.ListenerPort)),
		Number:   host16(ck.Channel),
	}
}

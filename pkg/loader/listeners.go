package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
)

// maxListeners is the size of the listeners map (bpf/consts.h).
const maxListeners = int(relayHrMapSizeHR_MAX_LISTENERS)

// Listener is one UDP listener address the program knows, and whether the
// pre-filter guards it.
type Listener struct {
	Addr      netip.AddrPort
	Prefilter bool
}

func listenerKey(a netip.AddrPort) (relayListenerKey, error) {
	if !a.IsValid() || a.Port() == 0 {
		return relayListenerKey{}, fmt.Errorf("listener %s: not an address and port", a)
	}
	if a.Addr().IsUnspecified() {
		// The program sees destination addresses only: a wildcard
		// listener is given as the host's addresses it serves.
		return relayListenerKey{}, fmt.Errorf("listener %s: wildcard address, give the host's addresses", a)
	}
	b, fam := addrBytes(a.Addr())
	return relayListenerKey{Addr: b, Port: wire16(a.Port()), Family: fam}, nil
}

// SetListeners makes addrs the server's UDP listener addresses in the
// program (replacing the set). With Options.Prefilter, a UDP datagram to
// one of them that the server would discard by its framing alone
// (internal/turnproto ClassifyDatagram: shorter than a header, neither STUN
// nor ChannelData, or lengths that do not match the datagram) is dropped in
// the kernel and counted in a drop_prefilter_* counter; without it the
// addresses are installed unguarded and nothing is dropped. Datagrams to
// any other address or port, and every non-UDP packet, are never dropped.
// Addresses must be concrete (a wildcard listener is given as the host's
// addresses); IPv4-mapped addresses count as IPv4.
func (x *XDP) SetListeners(addrs []netip.AddrPort) error {
	if x.opts.ReadOnly {
		return fmt.Errorf("set listeners: %w", errReadOnly)
	}
	want := map[relayListenerKey]bool{}
	for _, a := range addrs {
		k, err := listenerKey(a)
		if err != nil {
			return fmt.Errorf("set listeners: %w", err)
		}
		want[k] = true
	}
	if len(want) > maxListeners {
		return fmt.Errorf("set listeners: %d addresses, the program holds %d", len(want), maxListeners)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	var stale []relayListenerKey
	var k relayListenerKey
	var v relayListenerVal
	it := x.objs.Listeners.Iterate()
	for it.Next(&k, &v) {
		if !want[k] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("set listeners: read map: %w", err)
	}
	for _, k := range stale {
		if err := x.objs.Listeners.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("set listeners: remove: %w", err)
		}
	}
	val := relayListenerVal{}
	if x.opts.Prefilter {
		val.Flags = uint32(relayHrListenerFlagHR_L_PREFILTER)
	}
	for k := range want {
		if err := x.objs.Listeners.Put(k, val); err != nil {
			return fmt.Errorf("set listeners: add: %w", err)
		}
	}
	return nil
}

// Listeners lists the installed listener addresses, sorted.
func (x *XDP) Listeners() ([]Listener, error) {
	var out []Listener
	var k relayListenerKey
	var v relayListenerVal
	it := x.objs.Listeners.Iterate()
	for it.Next(&k, &v) {
		out = append(out, Listener{
			Addr:      netip.AddrPortFrom(addrFrom(k.Addr, k.Family), host16(k.Port)),
			Prefilter: v.Flags&uint32(relayHrListenerFlagHR_L_PREFILTER) != 0,
		})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read listeners: %w", err)
	}
	slices.SortFunc(out, func(a, b Listener) int { return a.Addr.Compare(b.Addr) })
	return out, nil
}

// SetPrefilter turns the pre-filter on or off for the installed listener
// addresses (and the ones SetListeners installs later), in place: the
// program reads the flag per packet.
func (x *XDP) SetPrefilter(on bool) error {
	if x.opts.ReadOnly {
		return fmt.Errorf("set prefilter: %w", errReadOnly)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.opts.Prefilter = on
	if err := x.applyPrefilterSetting(); err != nil {
		return fmt.Errorf("set prefilter: %w", err)
	}
	return nil
}

// applyPrefilterSetting makes the installed listener entries follow
// Options.Prefilter. Load calls it before the control plane calls
// SetListeners: a restart with the pre-filter turned off stops dropping at
// once.
func (x *XDP) applyPrefilterSetting() error {
	ls, err := x.Listeners()
	if err != nil {
		return err
	}
	want := relayListenerVal{}
	if x.opts.Prefilter {
		want.Flags = uint32(relayHrListenerFlagHR_L_PREFILTER)
	}
	for _, l := range ls {
		if l.Prefilter == x.opts.Prefilter {
			continue
		}
		k, err := listenerKey(l.Addr)
		if err != nil {
			continue
		}
		if err := x.objs.Listeners.Put(k, want); err != nil {
			return fmt.Errorf("pre-filter on %s: %w", l.Addr, err)
		}
	}
	return nil
}

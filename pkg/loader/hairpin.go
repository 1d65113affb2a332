package loader

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// Relay-to-relay in the kernel (docs/design.md "Egress", hairpin). Two
// clients both relayed by this server talk through each other's relayed
// addresses: channel X of client A has as its peer B's relayed address,
// and B's client has channel Y bound to A's relayed address. XDP cannot
// deliver X's data to the host itself, so the program turns A's
// ChannelData straight into B's (HR_F_HAIRPIN): Y's p2c entry already says
// where B's ChannelData goes, with which channel number, usage slot and
// egress. The index derives this from the installed channels alone: X's
// entry is written hairpinned exactly while a channel with Y's peer key
// (peer = X's relay, relay = X's peer) is installed, with the earlier of
// the two expiries (each already the earliest of its channel's,
// permission's and allocation's). Without Y (B would get a Data
// indication, or B's channel is not in the kernel), X's entry is the plain
// one and the program passes it (pass_local): userspace relays it.

// hairpinProbe is the p2c key that a channel Y targeted by c's hairpin
// has: its peer is c's relayed address, its relayed address c's peer.
func hairpinProbe(cv relayC2pVal, pk relayP2cKey) relayP2cKey {
	return relayP2cKey{PeerAddr: cv.RelayAddr, RelayAddr: cv.PeerAddr, PeerPort: cv.RelayPort, RelayPort: cv.PeerPort, Family: pk.Family}
}

// plainValue is own with any hairpin rewrite removed (re-adopted values).
func plainValue(v relayC2pVal) relayC2pVal {
	v.Flags &^= flagHairpin
	v.HpClientAddr, v.HpListenerAddr = [16]byte{}, [16]byte{}
	v.HpClientPort, v.HpListenerPort, v.HpChannel, v.HpSlot, v.HpEgress = 0, 0, 0, 0, 0
	return v
}

// c2pValue is what the kernel's c2p entry of (ck, own, probe) must hold:
// own, or own hairpinned to the installed channel with key probe. x.mu is
// held.
func (x *XDP) c2pValue(ck relayC2pKey, own relayC2pVal, probe relayP2cKey) relayC2pVal {
	yck, ok := x.byP2c[probe]
	if !ok || yck == ck {
		return own
	}
	y := x.index[yck]
	// A relay-to-relay packet counts against both allocations' limits;
	// the program meters one allocation per packet, so a limited one on
	// either side relays through userspace (pass_local).
	if y == nil || own.Meter != 0 || y.pv.Meter != 0 {
		return own
	}
	v := own
	v.Flags |= flagHairpin
	v.HpClientAddr, v.HpListenerAddr = y.pv.ClientAddr, y.pv.ListenerAddr
	v.HpClientPort, v.HpListenerPort = y.pv.ClientPort, y.pv.ListenerPort
	v.HpChannel, v.HpSlot, v.HpEgress = y.pv.Channel, y.pv.Slot, y.pv.Egress
	v.ExpiresNs = min(own.ExpiresNs, y.pv.ExpiresNs)
	v.ExpiresJiffies = min(own.ExpiresJiffies, y.pv.ExpiresJiffies)
	return v
}

// linkLocked registers an installed channel for hairpin lookups both ways.
func (x *XDP) linkLocked(ck relayC2pKey, e *entry) {
	x.byP2c[e.pk] = ck
	d := x.deps[e.probe]
	if d == nil {
		d = map[relayC2pKey]bool{}
		x.deps[e.probe] = d
	}
	d[ck] = true
}

// unlinkLocked undoes linkLocked (only what still points at ck).
func (x *XDP) unlinkLocked(ck relayC2pKey, pk, probe relayP2cKey) {
	if x.byP2c[pk] == ck {
		delete(x.byP2c, pk)
	}
	if d := x.deps[probe]; d != nil {
		delete(d, ck)
		if len(d) == 0 {
			delete(x.deps, probe)
		}
	}
}

// rewriteDependentsLocked brings the c2p entries whose hairpin target has
// the p2c key pk in line with the channel now installed there (or with
// none). Called after the target changed, and before it is deleted.
func (x *XDP) rewriteDependentsLocked(pk relayP2cKey) error {
	var first error
	for ck := range x.deps[pk] {
		e := x.index[ck]
		if e == nil {
			continue
		}
		v := x.c2pValue(ck, e.cv, e.probe)
		if v == e.written {
			continue
		}
		if err := x.putC2p(ck, v, ebpf.UpdateExist); err != nil {
			if first == nil {
				first = fmt.Errorf("rewrite relay-to-relay entry of channel %#x: %w", host16(ck.Channel), err)
			}
			continue
		}
		e.written = v
	}
	return first
}

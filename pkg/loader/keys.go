package loader

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// The program's constants (bpf/consts.h), as bpf2go generated them from
// the object's BTF.
const (
	// Family tags of the map keys.
	familyV4 = uint8(relayHrFamilyHR_FAMILY_V4)
	familyV6 = uint8(relayHrFamilyHR_FAMILY_V6)
	// c2p_val.flags.
	flagDontFragment = uint32(relayHrChanFlagHR_F_DONT_FRAGMENT)
	flagHairpin      = uint32(relayHrChanFlagHR_F_HAIRPIN)
	// The channel numbers the program treats as ChannelData: the whole
	// 01 range, RFC 8656 section 12 and RFC 5766 section 11.
	channelMin = uint16(relayHrChandataLimitHR_CHANNEL_MIN)
	channelMax = uint16(relayHrChandataLimitHR_CHANNEL_MAX)
	// maxRedirectIfaces is the size of the tx_ports devmap.
	maxRedirectIfaces = int(relayHrMapSizeHR_MAX_IFACES)
)

// wire16 returns the uint16 whose in-memory bytes are v in network order,
// i.e. how the program sees a port or channel number in the packet.
func wire16(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// host16 undoes wire16.
func host16(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}

// addrBytes stores a in the 16-byte key layout: IPv4 in the first four
// bytes, the rest zero; IPv4-mapped IPv6 counts as IPv4 (that is what the
// packet carries).
func addrBytes(a netip.Addr) (out [16]byte, family uint8) {
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		copy(out[:4], b[:])
		return out, familyV4
	}
	return a.As16(), familyV6
}

func addrFrom(b [16]byte, family uint8) netip.Addr {
	if family == familyV4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

// keys builds both directions' keys and values of c. This is the only place
// map keys are made.
func (c Channel) keys(slot uint32, expires uint64) (ck relayC2pKey, cv relayC2pVal, pk relayP2cKey, pv relayP2cVal, err error) {
	// RFC 8656 section 12 (0x4000-0x4FFF) and RFC 5766 section 11
	// (0x4000-0x7FFF): whatever the control plane bound.
	if c.Number < channelMin || c.Number > channelMax {
		return ck, cv, pk, pv, fmt.Errorf("channel %#x outside %#x-%#x: %w", c.Number, channelMin, channelMax, ErrUnsupported)
	}
	if !c.Client.IsValid() || !c.Listener.IsValid() || !c.Relay.IsValid() || !c.Peer.IsValid() {
		return ck, cv, pk, pv, fmt.Errorf("channel %#x: missing address: %w", c.Number, ErrUnsupported)
	}
	client, f1 := addrBytes(c.Client.Addr())
	listener, f2 := addrBytes(c.Listener.Addr())
	relay, f3 := addrBytes(c.Relay.Addr())
	peer, f4 := addrBytes(c.Peer.Addr())
	// The program rewrites headers in place: it cannot translate between
	// IPv4 and IPv6 (an IPv6 client with an IPv4 allocation stays in
	// userspace).
	if f1 != f2 || f1 != f3 || f1 != f4 {
		return ck, cv, pk, pv, fmt.Errorf("channel %#x mixes address families: %w", c.Number, ErrUnsupported)
	}
	ck = relayC2pKey{
		ClientAddr:   client,
		ListenerAddr: listener,
		ClientPort:   wire16(c.Client.Port()),
		ListenerPort: wire16(c.Listener.Port()),
		Channel:      wire16(c.Number),
		Family:       f1,
	}
	cv = relayC2pVal{
		ExpiresNs: expires,
		PeerAddr:  peer,
		RelayAddr: relay,
		PeerPort:  wire16(c.Peer.Port()),
		RelayPort: wire16(c.Relay.Port()),
		Slot:      slot,
		Meter:     c.Meter,
	}
	if c.DontFragment {
		cv.Flags |= flagDontFragment
	}
	pk = relayP2cKey{
		PeerAddr:  peer,
		RelayAddr: relay,
		PeerPort:  wire16(c.Peer.Port()),
		RelayPort: wire16(c.Relay.Port()),
		Family:    f1,
	}
	pv = relayP2cVal{
		ExpiresNs:    expires,
		ClientAddr:   client,
		ListenerAddr: listener,
		ClientPort:   wire16(c.Client.Port()),
		ListenerPort: wire16(c.Listener.Port()),
		Channel:      wire16(c.Number),
		Slot:         slot,
		Meter:        c.Meter,
	}
	return ck, cv, pk, pv, nil
}

// channelFrom rebuilds a Channel from a stored c2p entry.
func channelFrom(k relayC2pKey, v relayC2pVal) Channel {
	return Channel{
		Client:       netip.AddrPortFrom(addrFrom(k.ClientAddr, k.Family), host16(k.ClientPort)),
		Listener:     netip.AddrPortFrom(addrFrom(k.ListenerAddr, k.Family), host16(k.ListenerPort)),
		Relay:        netip.AddrPortFrom(addrFrom(v.RelayAddr, k.Family), host16(v.RelayPort)),
		Peer:         netip.AddrPortFrom(addrFrom(v.PeerAddr, k.Family), host16(v.PeerPort)),
		Number:       host16(k.Channel),
		Expires:      TimeFromMonotonic(expiryFromKernel(v.ExpiresNs)),
		DontFragment: v.Flags&flagDontFragment != 0,
		Meter:        v.Meter,
	}
}

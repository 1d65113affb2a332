package loader

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// Counter indexes the program's per-CPU counters (enum hr_counter of
// bpf/consts.h, generated into relay_bpfel.go).
type Counter int

// The counters. Forwarded bytes are data bytes (ChannelData payload to the
// peer, peer datagram payload to the client). Hairpin counts relay-to-relay
// ChannelData the program turned into another client's ChannelData. Every XDP_PASS counts exactly
// one reason, every pre-filter XDP_DROP one drop_prefilter_* reason;
// PassMapFull is counted by userspace (a channel the table had no room
// for), never by the program.
const (
	FwdToPeerPackets   = Counter(relayHrCounterHR_CNT_FWD_TO_PEER_PACKETS)
	FwdToPeerBytes     = Counter(relayHrCounterHR_CNT_FWD_TO_PEER_BYTES)
	FwdToClientPackets = Counter(relayHrCounterHR_CNT_FWD_TO_CLIENT_PACKETS)
	FwdToClientBytes   = Counter(relayHrCounterHR_CNT_FWD_TO_CLIENT_BYTES)
	FwdHairpinPackets  = Counter(relayHrCounterHR_CNT_FWD_HAIRPIN_PACKETS)
	FwdHairpinBytes    = Counter(relayHrCounterHR_CNT_FWD_HAIRPIN_BYTES)
	PassNoEntry        = Counter(relayHrCounterHR_CNT_PASS_NO_ENTRY)
	PassExpired        = Counter(relayHrCounterHR_CNT_PASS_EXPIRED)
	PassTooBig         = Counter(relayHrCounterHR_CNT_PASS_TOO_BIG)
	PassNoNeigh        = Counter(relayHrCounterHR_CNT_PASS_NO_NEIGH)
	PassNoRoute        = Counter(relayHrCounterHR_CNT_PASS_NO_ROUTE)
	PassLocal          = Counter(relayHrCounterHR_CNT_PASS_LOCAL)
	PassLinkDown       = Counter(relayHrCounterHR_CNT_PASS_LINK_DOWN)
	PassNoNextHop      = Counter(relayHrCounterHR_CNT_PASS_NO_NEXTHOP)
	PassNoEgress       = Counter(relayHrCounterHR_CNT_PASS_NO_EGRESS)
	PassNotChannelData = Counter(relayHrCounterHR_CNT_PASS_NOT_CHANNELDATA)
	PassMalformed      = Counter(relayHrCounterHR_CNT_PASS_MALFORMED)
	PassHeadroom       = Counter(relayHrCounterHR_CNT_PASS_HEADROOM)
	PassMapFull        = Counter(relayHrCounterHR_CNT_PASS_MAP_FULL)
	PassTTL            = Counter(relayHrCounterHR_CNT_PASS_TTL)
	PassOther          = Counter(relayHrCounterHR_CNT_PASS_OTHER)
	// The listener pre-filter's drops (SetListeners), by the framing that
	// makes the server discard the datagram.
	DropPrefilterShort             = Counter(relayHrCounterHR_CNT_DROP_PREFILTER_SHORT)
	DropPrefilterNotTURN           = Counter(relayHrCounterHR_CNT_DROP_PREFILTER_NOT_TURN)
	DropPrefilterSTUNLength        = Counter(relayHrCounterHR_CNT_DROP_PREFILTER_STUN_LENGTH)
	DropPrefilterChannelDataLength = Counter(relayHrCounterHR_CNT_DROP_PREFILTER_CHANNELDATA_LENGTH)
	// Over an allocation's bandwidth-limit (meter.h), dropped; a meter
	// too contended to decide passes (userspace meters the packet).
	DropBandwidthPackets = Counter(relayHrCounterHR_CNT_DROP_BANDWIDTH_PACKETS)
	DropBandwidthBytes   = Counter(relayHrCounterHR_CNT_DROP_BANDWIDTH_BYTES)
	PassMeterBusy        = Counter(relayHrCounterHR_CNT_PASS_METER_BUSY)
	NumCounters          = int(relayHrCounterHR_CNT_MAX)
)

var counterNames = [NumCounters]string{
	FwdToPeerPackets:   "fwd_to_peer_packets",
	FwdToPeerBytes:     "fwd_to_peer_bytes",
	FwdToClientPackets: "fwd_to_client_packets",
	FwdToClientBytes:   "fwd_to_client_bytes",
	FwdHairpinPackets:  "fwd_hairpin_packets",
	FwdHairpinBytes:    "fwd_hairpin_bytes",
	PassNoEntry:        "pass_no_entry",
	PassExpired:        "pass_expired",
	PassTooBig:         "pass_too_big",
	PassNoNeigh:        "pass_no_neigh",
	PassNoRoute:        "pass_no_route",
	PassLocal:          "pass_local",
	PassLinkDown:       "pass_link_down",
	PassNoNextHop:      "pass_no_nexthop",
	PassNoEgress:       "pass_no_egress",
	PassNotChannelData: "pass_not_channeldata",
	PassMalformed:      "pass_malformed",
	PassHeadroom:       "pass_headroom",
	PassMapFull:        "pass_map_full",
	PassTTL:            "pass_ttl",
	PassOther:          "pass_other",

	DropPrefilterShort:             "drop_prefilter_short",
	DropPrefilterNotTURN:           "drop_prefilter_not_turn",
	DropPrefilterSTUNLength:        "drop_prefilter_stun_length",
	DropPrefilterChannelDataLength: "drop_prefilter_channeldata_length",

	DropBandwidthPackets: "drop_bandwidth_packets",
	DropBandwidthBytes:   "drop_bandwidth_bytes",
	PassMeterBusy:        "pass_meter_busy",
}

// String is the counter's name: fwd_to_peer_packets, pass_no_entry, ...
func (c Counter) String() string {
	if c < 0 || int(c) >= NumCounters {
		return fmt.Sprintf("counter(%d)", int(c))
	}
	return counterNames[c]
}

// Counters is a snapshot of the program's counters.
type Counters struct {
	// Total sums the CPUs.
	Total [NumCounters]uint64
	// PerCPU[cpu][counter].
	PerCPU [][NumCounters]uint64
}

// Get returns the summed value of c.
func (s Counters) Get(c Counter) uint64 { return s.Total[c] }

// Map returns the summed counters by name.
func (s Counters) Map() map[string]uint64 {
	m := make(map[string]uint64, NumCounters)
	for i, v := range s.Total {
		m[Counter(i).String()] = v
	}
	return m
}

// Counters reads every counter of every CPU.
func (x *XDP) Counters() (Counters, error) {
	var s Counters
	for i := 0; i < NumCounters; i++ {
		var per []uint64
		if err := x.objs.Counters.Lookup(uint32(i), &per); err != nil {
			return s, fmt.Errorf("read counter %s: %w", Counter(i), err)
		}
		if s.PerCPU == nil {
			s.PerCPU = make([][NumCounters]uint64, len(per))
		}
		for cpu, v := range per {
			if cpu < len(s.PerCPU) {
				s.PerCPU[cpu][i] = v
			}
			s.Total[i] += v
		}
	}
	return s, nil
}

// countMapFull adds one to PassMapFull (CPU 0's slot; the program never
// writes this index, so the read-modify-write has one writer: x.mu is
// held by the callers).
func (x *XDP) countMapFull() {
	var per []uint64
	idx := uint32(PassMapFull)
	if err := x.objs.Counters.Lookup(idx, &per); err != nil || len(per) == 0 {
		x.log.Warn("xdp: count map full", "err", err)
		return
	}
	per[0]++
	if err := x.objs.Counters.Put(idx, per); err != nil {
		x.log.Warn("xdp: count map full", "err", err)
	}
}

// SetRedirectIfaces makes ifindexes the set of interfaces the program may
// redirect to (devmap). Egress on the ingress interface (XDP_TX) needs no
// entry; a destination reached through any other device is passed to the
// stack (pass_no_egress).
func (x *XDP) SetRedirectIfaces(ifindexes []int) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	want := map[uint32]bool{}
	for _, i := range ifindexes {
		if i <= 0 {
			return fmt.Errorf("set redirect interfaces: bad ifindex %d", i)
		}
		if x.res != nil && x.res.isVLAN(i) {
			// The program transmits tagged frames on the VLAN's
			// parent only (the egress entry names the parent and the
			// tag); the device itself is never a target.
			return fmt.Errorf("set redirect interfaces: ifindex %d is a VLAN device", i)
		}
		want[uint32(i)] = true
	}
	if len(want) > maxRedirectIfaces {
		return fmt.Errorf("set redirect interfaces: %d interfaces, the devmap holds %d", len(want), maxRedirectIfaces)
	}
	var stale []uint32
	var keep []int
	var k, v uint32
	it := x.objs.TxPorts.Iterate()
	for it.Next(&k, &v) {
		if !want[k] {
			stale = append(stale, k)
		} else {
			keep = append(keep, int(k))
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("set redirect interfaces: read devmap: %w", err)
	}
	// The program redirects without looking at the devmap first: no
	// usable egress slot may name a device while it leaves the devmap.
	if len(stale) > 0 {
		x.updateTransmit(keep)
	}
	for _, k := range stale {
		if err := x.objs.TxPorts.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("set redirect interfaces: remove ifindex %d: %w", k, err)
		}
	}
	for i := range want {
		if err := x.objs.TxPorts.Put(i, i); err != nil {
			return fmt.Errorf("set redirect interfaces: add ifindex %d (does it support XDP redirect?): %w", i, err)
		}
	}
	x.redirect = append(x.redirect[:0], ifindexes...)
	x.updateTransmit(x.redirect)
	return nil
}

// SetVLANDevice says that device ifindex is VLAN vid on parent, for
// stand-ins the kernel cannot describe (real 802.1Q devices are read from
// their link info): tagged frames for destinations behind it are sent back
// out of parent with that tag. vid 0 removes the override.
func (x *XDP) SetVLANDevice(ifindex, parent int, vid uint16) error {
	if vid != 0 && (ifindex <= 0 || parent <= 0 || vid > 4094) {
		return fmt.Errorf("set vlan device %d on %d vid %d: bad argument", ifindex, parent, vid)
	}
	if x.egress == nil {
		return fmt.Errorf("set vlan device %d: %w", ifindex, errReadOnly)
	}
	var port uint32
	if vid != 0 && x.objs.TxPorts.Lookup(uint32(ifindex), &port) == nil {
		return fmt.Errorf("set vlan device %d: it is a redirect interface", ifindex)
	}
	x.res.setVLAN(ifindex, parent, vid)
	if err := x.egress.refreshRoutes(); err != nil {
		return fmt.Errorf("set vlan device %d: %w", ifindex, err)
	}
	return nil
}

package admin

import (
	"maps"
	"slices"
	"strings"
)

// The groups of the XDP program's pass reasons (counters named pass_*):
// whether a packet the program handed to the kernel stack is the design
// working, or a sign that the host is set up so the kernel path cannot
// forward.
const (
	// PassNormal: traffic that belongs to userspace by design.
	PassNormal = "normal"
	// PassMisconfig: the kernel path could forward this traffic but the
	// host's interfaces, routes or neighbours keep it from doing so.
	PassMisconfig = "misconfiguration"
	// PassOther: transient states, capacity limits and packets the
	// program does not handle.
	PassOther = "other"
)

// PassGroups lists the groups in display order.
var PassGroups = []string{PassNormal, PassMisconfig, PassOther}

// PassReason describes one pass reason.
type PassReason struct {
	// Name is the counter name without "pass_" (the Prometheus label).
	Name  string `json:"reason"`
	Group string `json:"group"`
	// Meaning is one line for operators.
	Meaning string `json:"meaning"`
}

// PassReasons are the reasons the XDP program (and, for map_full, the
// loader) counts, by group. A counter name this table lacks is shown in
// the PassOther group with no explanation, so a newer program's reasons are
// never hidden.
var PassReasons = []PassReason{
	{"no_entry", PassNormal, "not a bound channel (STUN, Send indications, unbound peers): userspace handles it"},
	{"not_channeldata", PassNormal, "datagram to a listener port that is not ChannelData (STUN/TURN requests): userspace handles it"},
	{"expired", PassNormal, "channel lifetime ended; the client refreshes it or goes away"},
	{"local", PassNormal, "destination is an address of this host (relay-to-relay hairpin): userspace handles it"},

	{"no_egress", PassMisconfig, "egress device is not one the program can transmit on (not an XDP interface, or VLAN tagging mismatch): add it with xdp-iface"},
	{"no_route", PassMisconfig, "no route to the destination (unreachable, blackhole or prohibit): check `ip route get DST`"},
	{"link_down", PassMisconfig, "egress link is down"},
	{"too_big", PassMisconfig, "datagram would exceed the egress MTU: userspace fragments it"},
	{"no_neigh", PassMisconfig, "next hop's link-layer address unresolved (ARP/ND incomplete or failed); expected for a new next hop's first packets, a problem when it persists"},

	{"no_nexthop", PassOther, "egress of a new destination not resolved yet: its first packets go through userspace"},
	{"map_full", PassOther, "a channel did not fit the kernel table: raise xdp-max-channels"},
	{"headroom", PassOther, "the driver leaves too little headroom to add the ChannelData header"},
	{"ttl", PassOther, "TTL or hop limit would expire: the stack answers with ICMP"},
	{"malformed", PassOther, "not a packet the program parses (fragments, IP options, bad lengths)"},
	{"meter_busy", PassOther, "the allocation's bandwidth meter was contended by several CPUs at once: userspace meters the packet"},
	{"other", PassOther, "anything else the program does not fully understand"},
}

// LookupPassReason returns the description of reason (with or without the
// "pass_" prefix); unknown reasons get group PassOther and no meaning.
func LookupPassReason(reason string) PassReason {
	reason = strings.TrimPrefix(reason, "pass_")
	for _, r := range PassReasons {
		if r.Name == reason {
			return r
		}
	}
	return PassReason{Name: reason, Group: PassOther}
}

// PassCount is one pass reason with its counter value.
type PassCount struct {
	PassReason
	Packets uint64 `json:"packets"`
}

// PassCounts picks the pass_* counters out of the program's counters, in
// group order, then by name.
func PassCounts(counters map[string]uint64) []PassCount {
	var out []PassCount
	for _, g := range PassGroups {
		for _, n := range slices.Sorted(maps.Keys(counters)) {
			name, ok := strings.CutPrefix(n, "pass_")
			if !ok {
				continue
			}
			if r := LookupPassReason(name); r.Group == g {
				out = append(out, PassCount{PassReason: r, Packets: counters[n]})
			}
		}
	}
	return out
}

package admin

import (
	"maps"
	"slices"
	"strings"
)

// DropReason describes one reason of the XDP listener pre-filter (counters
// named drop_prefilter_*): a datagram to a UDP listener that the server
// would discard by its framing alone, dropped in the kernel instead.
type DropReason struct {
	// Name is the counter name without "drop_prefilter_" (the
	// Prometheus label).
	Name string `json:"reason"`
	// Meaning is one line for operators.
	Meaning string `json:"meaning"`
}

// PrefilterReasons are the pre-filter's reasons, in display order.
var PrefilterReasons = []DropReason{
	{"not_turn", "neither STUN nor ChannelData: first bits 10/11, or no STUN magic cookie (scans, floods, other protocols)"},
	{"short", "shorter than a ChannelData header (4 bytes) or a STUN header (20 bytes)"},
	{"stun_length", "STUN message length not a multiple of 4 or not the datagram's (truncated or corrupt requests)"},
	{"channeldata_length", "ChannelData length beyond the datagram, or more than 3 padding bytes after the data (broken clients)"},
}

// PrefilterCount is one pre-filter reason with its counter value.
type PrefilterCount struct {
	DropReason
	Packets uint64 `json:"packets"`
}

// PrefilterCounts picks the drop_prefilter_* counters out of the program's
// counters: the known reasons in display order, then any reason this build
// does not know (a newer program's), by name, with no meaning.
func PrefilterCounts(counters map[string]uint64) []PrefilterCount {
	var out []PrefilterCount
	known := map[string]bool{}
	for _, r := range PrefilterReasons {
		known[r.Name] = true
		if v, ok := counters["drop_prefilter_"+r.Name]; ok {
			out = append(out, PrefilterCount{DropReason: r, Packets: v})
		}
	}
	for _, n := range slices.Sorted(maps.Keys(counters)) {
		name, ok := strings.CutPrefix(n, "drop_prefilter_")
		if ok && !known[name] {
			out = append(out, PrefilterCount{DropReason: DropReason{Name: name}, Packets: counters[n]})
		}
	}
	return out
}

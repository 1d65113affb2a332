package admin

import (
	"net/netip"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/kchan"
	"github.com/hybridrelay/hybridrelay/pkg/control"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
	"github.com/hybridrelay/hybridrelay/pkg/loader"
)

// Snapshot is everything `hybridrelay stats` shows.
type Snapshot struct {
	Time      time.Time `json:"time"`
	StartedAt time.Time `json:"started_at,omitempty"`
	PID       int       `json:"pid,omitempty"`
	// Datapath is what serve runs (xdp, gso, plain) and why.
	Datapath       string `json:"datapath,omitempty"`
	DatapathReason string `json:"datapath_reason,omitempty"`

	// Server is nil when the daemon is down (kernel counters only).
	Server *control.ServerStats `json:"server,omitempty"`
	// Dataplane sums the userspace datapath's loops; Loops has one entry
	// per loop when the datapath keeps them.
	Dataplane *dataplane.Stats  `json:"dataplane,omitempty"`
	Loops     []dataplane.Stats `json:"loops,omitempty"`
	// Kernel is nil without the xdp datapath and without pinned maps.
	Kernel *Kernel `json:"kernel,omitempty"`
}

// DrainStatus answers drain and undrain.
type DrainStatus struct {
	Draining bool       `json:"draining"`
	Since    *time.Time `json:"since,omitempty"`
	// Changed is false when the daemon already was in the asked state.
	Changed bool `json:"changed"`
	// Allocations are the allocations left (they run to their end).
	Allocations      int              `json:"allocations"`
	AlternateServers []netip.AddrPort `json:"alternate_servers,omitempty"`
}

// Kernel is the XDP program's state.
type Kernel struct {
	// Source is "daemon" (read by the running serve) or "pinned maps"
	// (read by the CLI from bpffs while the daemon is down).
	Source string `json:"source"`
	PinDir string `json:"pin_dir,omitempty"`
	// Counters are the per-CPU counters summed, by name
	// (fwd_to_peer_packets, pass_no_entry, ...).
	Counters map[string]uint64 `json:"counters"`
	// Pass is the pass_* counters again, each with its group (normal,
	// misconfiguration, other) and what it means, in display order.
	Pass []PassCount `json:"pass"`
	// Prefilter is the drop_prefilter_* counters again, with what each
	// means; PrefilterAddrs the listener addresses the pre-filter guards
	// (none: it is off).
	Prefilter      []PrefilterCount `json:"prefilter"`
	PrefilterAddrs []string         `json:"prefilter_addrs,omitempty"`
	Channels       int              `json:"channels"`
	MaxChannels    int              `json:"max_channels"`
	Ifaces         []string         `json:"ifaces,omitempty"`
	// ProgramID is the kernel's id of the relay program (bpftool prog
	// show id N); ids are global, so a CLI in another namespace can
	// measure it (stats --prog-cost).
	ProgramID uint32 `json:"program_id,omitempty"`
}

// Channel is one entry of the kernel channel table, both directions.
type Channel struct {
	Client   netip.AddrPort `json:"client"`
	Listener netip.AddrPort `json:"listener"`
	Relay    netip.AddrPort `json:"relay"`
	Peer     netip.AddrPort `json:"peer"`
	Number   uint16         `json:"channel"`
	// ExpiresIn is the remaining lifetime in seconds (negative: expired,
	// the program passes its packets to userspace until it is deleted).
	ExpiresIn    float64 `json:"expires_in_seconds"`
	DontFragment bool    `json:"dont_fragment"`
	Slot         uint32  `json:"slot"`
	// PeerEntry: the peer->client direction is installed too.
	PeerEntry bool `json:"peer_entry"`
	// The kernel's counters for the channel (flattened into the JSON
	// object: to_peer_packets, ...).
	kchan.Usage
}

// ChannelFromEntry converts a loader entry, computing the remaining
// lifetime at now.
func ChannelFromEntry(e loader.ChannelEntry, now time.Time) Channel {
	return Channel{
		Client: e.Client, Listener: e.Listener, Relay: e.Relay, Peer: e.Peer, Number: e.Number,
		ExpiresIn:    e.Expires.Sub(now).Seconds(),
		DontFragment: e.DontFragment, Slot: e.Slot, PeerEntry: e.PeerEntry,
		Usage: e.Usage,
	}
}

// KernelFromLoader reads the counters and table size of a loaded program.
func KernelFromLoader(x *loader.XDP, source string, ifaces []string) (*Kernel, error) {
	c, err := x.Counters()
	if err != nil {
		return nil, err
	}
	// Len is the loader's index, rebuilt from the maps at Load and kept by
	// every install and delete: no walk over the table per scrape.
	m := c.Map()
	k := &Kernel{Source: source, PinDir: x.PinDir(), Counters: m, Pass: PassCounts(m), Prefilter: PrefilterCounts(m),
		Channels: x.Len(), MaxChannels: x.MaxChannels(), Ifaces: ifaces}
	if ls, err := x.Listeners(); err == nil {
		for _, l := range ls {
			if l.Prefilter {
				k.PrefilterAddrs = append(k.PrefilterAddrs, l.Addr.String())
			}
		}
	}
	if info, err := x.Program().Info(); err == nil {
		if id, ok := info.ID(); ok {
			k.ProgramID = uint32(id)
		}
	}
	return k, nil
}

// ChannelsFromLoader lists the kernel channel table.
func ChannelsFromLoader(x *loader.XDP, now time.Time) ([]Channel, error) {
	var out []Channel
	err := x.IterateChannels(func(e loader.ChannelEntry) bool {
		out = append(out, ChannelFromEntry(e, now))
		return true
	})
	return out, err
}

package netns

import (
	"fmt"

	ebpflink "github.com/cilium/ebpf/link"

	"github.com/hybridrelay/hybridrelay/internal/xdppass"
)

// AttachXDPPass attaches a two-instruction XDP_PASS program to the client's
// and the peer's veth ends (and to both ends of the direct link, when the
// topology has one, so every path runs the same veth mode): XDP_TX or a
// redirect into a veth delivers nothing unless the receiving end runs an
// XDP program (docs/design.md, veth facts). All ends share one program, so
// its run_cnt/run_time_ns (XDPProgramIDs, kernel bpf_stats) count every
// packet the client and the peer receive. Closing the returned links
// detaches it; on error nothing stays attached.
func (t *Topology) AttachXDPPass() ([]ebpflink.Link, error) {
	prog, err := xdppass.Load("hr_veth_pass")
	if err != nil {
		return nil, err
	}
	defer prog.Close() // the links hold their own reference
	var links []ebpflink.Link
	for _, end := range []struct {
		ns *NS
		If string
	}{{t.Client, t.ClientIf}, {t.Peer, t.PeerIf}, {t.Client, t.DirectClientIf}, {t.Peer, t.DirectPeerIf}} {
		if end.If == "" {
			continue // no direct link
		}
		idx, err := end.ns.Ifindex(end.If)
		var l ebpflink.Link
		if err == nil {
			// The ifindex is the namespace's: attach from inside it.
			err = end.ns.Do(func() (err error) {
				l, err = ebpflink.AttachXDP(ebpflink.XDPOptions{Program: prog, Interface: idx})
				return err
			})
		}
		if err != nil {
			for _, l := range links {
				l.Close()
			}
			return nil, fmt.Errorf("attach xdp_pass to %s in %s: %w", end.If, end.ns.Name, err)
		}
		links = append(links, l)
	}
	return links, nil
}

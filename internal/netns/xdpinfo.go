package netns

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"
)

// XDPProgramIDs returns the ids of the XDP programs attached to interface
// name inside the namespace (none: an empty list), as netlink reports them
// (`ip -j link show`). With the ids, ebpf.NewProgramFromID opens a program
// for its run-time statistics.
func (ns *NS) XDPProgramIDs(name string) ([]ebpf.ProgramID, error) {
	out, err := ns.IP("-j", "link", "show", "dev", name)
	if err != nil {
		return nil, fmt.Errorf("xdp programs on %s: %w", name, err)
	}
	ids, err := parseXDPProgIDs([]byte(out))
	if err != nil {
		return nil, fmt.Errorf("xdp programs on %s in %s: %w", name, ns.Name, err)
	}
	return ids, nil
}

// xdpProg is the "prog" object iproute2 prints for an attached program.
type xdpProg struct {
	ID uint32 `json:"id"`
}

// parseXDPProgIDs reads `ip -j link show dev X`: an array with one link
// whose "xdp" object holds "prog" (one attach mode) and/or "attached", a
// list of {mode, prog} (iproute2 prints the one program in both places;
// several modes only in "attached"). Each id is listed once.
func parseXDPProgIDs(b []byte) ([]ebpf.ProgramID, error) {
	var links []struct {
		XDP *struct {
			Prog     *xdpProg `json:"prog"`
			Attached []struct {
				Prog *xdpProg `json:"prog"`
			} `json:"attached"`
		} `json:"xdp"`
	}
	if err := json.Unmarshal(b, &links); err != nil {
		return nil, fmt.Errorf("parse ip -j link: %w", err)
	}
	if len(links) != 1 {
		return nil, fmt.Errorf("parse ip -j link: %d links, want 1", len(links))
	}
	x := links[0].XDP
	if x == nil {
		return nil, nil
	}
	var ids []ebpf.ProgramID
	add := func(p *xdpProg) {
		if p == nil || p.ID == 0 || slices.Contains(ids, ebpf.ProgramID(p.ID)) {
			return
		}
		ids = append(ids, ebpf.ProgramID(p.ID))
	}
	add(x.Prog)
	for _, a := range x.Attached {
		add(a.Prog)
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("parse ip -j link: an xdp object without a program id")
	}
	return ids, nil
}

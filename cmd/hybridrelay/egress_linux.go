//go:build linux

package main

import (
	"errors"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/hybridrelay/hybridrelay/pkg/loader"
)

// maxEgressLookups bounds the rtnetlink lookups of one hostEgress.Egress.
const maxEgressLookups = 64

// hostEgress resolves the egress of the kernel channel table's
// destinations (clients and peers) from the host's route, neighbour and
// link tables over rtnetlink, with the verdicts of the next-hop table
// (see classifyEgress).
type hostEgress struct {
	x   *loader.XDP
	xdp map[int]bool // ifindexes the program is attached to
}

func (h hostEgress) Egress() []egressInfo {
	var dsts []netip.Addr
	seen := map[netip.Addr]bool{}
	add := func(a netip.Addr) bool {
		a = a.Unmap()
		if !seen[a] {
			seen[a] = true
			dsts = append(dsts, a)
		}
		return len(dsts) < maxEgressLookups
	}
	_ = h.x.IterateChannels(func(e loader.ChannelEntry) bool {
		return add(e.Client.Addr()) && add(e.Peer.Addr())
	})
	links, err := nlLinks()
	if err != nil {
		return nil
	}
	byIndex := map[int]nlLink{}
	for _, l := range links {
		byIndex[l.Index] = l
	}
	neighs := map[int][]nlNeigh{}
	var out []egressInfo
	for _, d := range dsts {
		fam := familyOf(d)
		if _, ok := neighs[fam]; !ok {
			neighs[fam], _ = nlNeighs(fam)
		}
		r, err := nlRouteGet(d)
		if e, ok := classifyEgress(d, r, err, byIndex, neighs[fam], h.xdp); ok {
			out = append(out, e)
		}
	}
	return out
}

// classifyEgress turns the lookups for dst into an egress entry and its
// verdict, in the order the kernel path checks them: a route (none:
// no_route), not to this host (local), a link that is up (link_down), one
// the program transmits on - an XDP interface carrying Ethernet
// (no_egress) - and the next hop's link-layer address (absent from the
// neighbour table: no_nexthop, not resolved yet; INCOMPLETE or FAILED:
// no_neigh). ok is false when the route lookup itself failed.
func classifyEgress(dst netip.Addr, r nlRoute, routeErr error, links map[int]nlLink, neighs []nlNeigh, xdp map[int]bool) (egressInfo, bool) {
	e := egressInfo{Dst: dst}
	if errors.Is(routeErr, errNoRoute) {
		e.Reason = "pass_no_route"
		return e, true
	}
	if routeErr != nil {
		return e, false
	}
	e.Src, e.Gateway = r.PrefSrc, r.Gateway
	if len(r.Oifs) > 0 {
		e.Ifindex = r.Oifs[0]
	}
	l := links[e.Ifindex]
	e.Ifname, e.MTU = l.Name, l.MTU
	if l.Type == unix.ARPHRD_ETHER {
		e.SrcMAC = l.MAC
	}
	switch {
	case r.Type == unix.RTN_LOCAL:
		e.Reason = "pass_local"
	case !l.Up():
		e.Reason = "pass_link_down"
	case !xdp[e.Ifindex] || !l.Ethernet():
		e.Reason = "pass_no_egress"
	default:
		hop := e.Gateway
		if !hop.IsValid() {
			hop = dst
		}
		e.Reason = "pass_no_nexthop"
		for _, n := range neighs {
			if n.Ifindex == e.Ifindex && n.Dst == hop {
				if neighResolved(n.State) {
					e.Reason, e.DstMAC = "", n.MAC
				} else {
					e.Reason = "pass_no_neigh"
				}
				break
			}
		}
	}
	return e, true
}

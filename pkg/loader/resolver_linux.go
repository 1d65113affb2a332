package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netlinkResolver resolves egress from the routing, neighbour and link
// tables of one network namespace (RTM_GETROUTE, RTM_GETNEIGH,
// RTM_GETLINK), and follows their changes (RTNLGRP_NEIGH, _IPV4_ROUTE,
// _IPV6_ROUTE, _LINK, _IPV4_IFADDR, _IPV6_IFADDR) into the egress table.
// Route lookups are output lookups from the relay's own address: they
// answer whatever the forwarding sysctls say.
type netlinkResolver struct {
	ns  netns.NsHandle
	h   *netlink.Handle
	log *slog.Logger
	// transmittable reports whether the program can send on a device
	// (it is attached there, or it is in the redirect devmap).
	transmittable func(ifindex int) bool

	mu sync.Mutex
	// vlanOverride: device -> (parent, vid) for stand-ins of VLAN
	// devices (kernels without 8021q); real VLAN devices are read from
	// their link info.
	vlanOverride map[int]vlanDev
	// neighCache holds one neighbour dump per (device, family), valid
	// for neighCacheTTL, so a refresh of many slots dumps once.
	neighCache map[neighCacheKey]neighDump
	// solicited limits how often one next hop is asked for (NTF_USE).
	solicited map[nextHop]time.Time
}

type vlanDev struct {
	parent int
	vid    uint16
}

type neighCacheKey struct{ ifindex, family int }

type neighDump struct {
	at    time.Time
	neigh map[netip.Addr]netlink.Neigh
}

const (
	neighCacheTTL = 100 * time.Millisecond
	// solicitEvery bounds the NTF_USE requests per next hop.
	solicitEvery = time.Second
	// keepaliveEvery is how often the next hops in use are checked: a
	// STALE neighbour is asked to be confirmed (the stack never sees the
	// traffic the program forwards, so it would never probe on its own).
	keepaliveEvery = time.Second
	// resyncEvery re-resolves every slot even without events (a lost
	// netlink message must not leave a slot wrong for long).
	resyncEvery = 30 * time.Second
	// debounce gathers a burst of route/link/address events into one
	// refresh, which runs this long after the burst's first event.
	debounce = 20 * time.Millisecond
)

// newNetlinkResolver opens netlink in the namespace at nsPath ("" means
// the calling thread's).
func newNetlinkResolver(nsPath string, log *slog.Logger, transmittable func(int) bool) (*netlinkResolver, error) {
	var ns netns.NsHandle
	var err error
	if nsPath == "" {
		ns, err = netns.Get()
	} else {
		ns, err = netns.GetFromPath(nsPath)
	}
	if err != nil {
		return nil, fmt.Errorf("egress resolver: open network namespace %q: %w", nsPath, err)
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("egress resolver: open rtnetlink: %w", err)
	}
	return &netlinkResolver{
		ns: ns, h: h, log: log, transmittable: transmittable,
		vlanOverride: map[int]vlanDev{}, neighCache: map[neighCacheKey]neighDump{}, solicited: map[nextHop]time.Time{},
	}, nil
}

func (r *netlinkResolver) close() {
	r.h.Close()
	r.ns.Close()
}

func (r *netlinkResolver) setVLAN(ifindex, parent int, vid uint16) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if vid == 0 {
		delete(r.vlanOverride, ifindex)
		return
	}
	r.vlanOverride[ifindex] = vlanDev{parent, vid}
}

// isVLAN reports whether ifindex is an 802.1Q device (or stands in for
// one).
func (r *netlinkResolver) isVLAN(ifindex int) bool {
	r.mu.Lock()
	_, ov := r.vlanOverride[ifindex]
	r.mu.Unlock()
	if ov {
		return true
	}
	l, err := r.h.LinkByIndex(ifindex)
	if err != nil {
		return false
	}
	_, ok := l.(*netlink.Vlan)
	return ok
}

func ipOf(a netip.Addr) net.IP { return net.IP(a.AsSlice()) }

// route resolves the way from src to dst.
func (r *netlinkResolver) route(dst, src netip.Addr) route {
	routes, err := r.h.RouteGetWithOptions(ipOf(dst), &netlink.RouteGetOptions{SrcAddr: ipOf(src)})
	if err != nil && dst.Is4() {
		// An IPv4 output lookup refuses a source that is not an
		// address of this host (ip_route_output_key_hash: EINVAL or
		// ENETUNREACH), as a relay address behind a 1:1 NAT may be;
		// the route does not depend on it unless policy routing says
		// so. A real "no route" answers the same without the source.
		routes, err = r.h.RouteGetWithOptions(ipOf(dst), &netlink.RouteGetOptions{})
	}
	if err != nil {
		// ENETUNREACH (no route), EHOSTUNREACH (unreachable), EINVAL
		// (blackhole), EACCES (prohibit), EINVAL also when src is not
		// one of ours.
		return route{reason: PassNoRoute, detail: fmt.Sprintf("no route from %s to %s: %v", src, dst, err)}
	}
	if len(routes) == 0 {
		return route{reason: PassNoRoute, detail: fmt.Sprintf("no route from %s to %s", src, dst)}
	}
	rt := routes[0]
	switch rt.Type {
	case unix.RTN_UNICAST:
	case unix.RTN_LOCAL:
		return route{reason: PassLocal, detail: fmt.Sprintf("%s is an address of this host", dst)}
	default:
		return route{reason: PassNoRoute, detail: fmt.Sprintf("route to %s is of type %d (unreachable, blackhole, prohibit, ...)", dst, rt.Type)}
	}
	link, err := r.h.LinkByIndex(rt.LinkIndex)
	if err != nil {
		return route{reason: PassNoRoute, detail: fmt.Sprintf("egress device %d of %s: %v", rt.LinkIndex, dst, err)}
	}
	a := link.Attrs()
	out := route{ifindex: a.Index, devIdx: a.Index, ifname: a.Name, smac: a.HardwareAddr, mtu: a.MTU}
	if rt.MTU > 0 && rt.MTU < out.mtu {
		out.mtu = rt.MTU
	}
	if len(rt.Gw) > 0 {
		gw, _ := netip.AddrFromSlice(rt.Gw)
		out.gateway = gw.Unmap()
	}
	if rt.Via != nil {
		out.reason, out.detail = PassNoEgress, fmt.Sprintf("route to %s has a gateway of the other family (%s)", dst, rt.Via)
		return out
	}
	if a.OperState != netlink.OperUp && a.OperState != netlink.OperUnknown || a.Flags&net.FlagUp == 0 ||
		rt.Flags&unix.RTNH_F_LINKDOWN != 0 {
		out.reason, out.detail = PassLinkDown, fmt.Sprintf("egress device %s of %s is down (%s)", a.Name, dst, a.OperState)
		return out
	}
	if a.EncapType != "ether" || len(a.HardwareAddr) != 6 {
		out.reason, out.detail = PassNoEgress, fmt.Sprintf("egress device %s of %s is not Ethernet (%s): the program rewrites Ethernet frames", a.Name, dst, a.EncapType)
		return out
	}
	r.mu.Lock()
	ov, hasOv := r.vlanOverride[a.Index]
	r.mu.Unlock()
	if v, ok := link.(*netlink.Vlan); ok {
		ov, hasOv = vlanDev{parent: a.ParentIndex, vid: uint16(v.VlanId)}, true
	}
	if hasOv {
		out.ifindex, out.vlan = ov.parent, ov.vid
	}
	if !r.transmittable(out.ifindex) {
		out.reason, out.detail = PassNoEgress, fmt.Sprintf("%s leaves through %s, which the program does not transmit on (add it with --xdp-iface)", dst, a.Name)
		return out
	}
	return out
}

// neighbour looks up the link-layer address of rt's next hop, asking the
// kernel to resolve it when it is not known (the program passes until it
// is; the answer arrives as a neighbour event).
func (r *netlinkResolver) neighbour(rt route, dst netip.Addr) neighbour {
	if rt.reason != 0 {
		return neighbour{}
	}
	hop := nextHop{ifindex: rt.devIdx, addr: rt.nextHopAddr(dst)}
	n, found, err := r.lookupNeigh(hop)
	if err != nil {
		return neighbour{detail: fmt.Sprintf("neighbour %s on %s: %v", hop.addr, rt.ifname, err)}
	}
	if found && neighUsable(n) {
		return neighbour{mac: n.HardwareAddr}
	}
	r.solicit(hop, found, n.State)
	state := "none"
	if found {
		state = neighStateName(n.State)
	}
	return neighbour{detail: fmt.Sprintf("neighbour %s on %s unresolved (%s)", hop.addr, rt.ifname, state)}
}

func (r *netlinkResolver) lookupNeigh(hop nextHop) (netlink.Neigh, bool, error) {
	fam := unix.AF_INET
	if hop.addr.Is6() {
		fam = unix.AF_INET6
	}
	k := neighCacheKey{hop.ifindex, fam}
	r.mu.Lock()
	d, ok := r.neighCache[k]
	r.mu.Unlock()
	if !ok || time.Since(d.at) > neighCacheTTL {
		list, err := r.h.NeighList(hop.ifindex, fam)
		if err != nil {
			return netlink.Neigh{}, false, err
		}
		d = neighDump{at: time.Now(), neigh: make(map[netip.Addr]netlink.Neigh, len(list))}
		for _, n := range list {
			if a, ok := netip.AddrFromSlice(n.IP); ok {
				d.neigh[a.Unmap()] = n
			}
		}
		r.mu.Lock()
		r.neighCache[k] = d
		r.mu.Unlock()
	}
	n, found := d.neigh[hop.addr]
	return n, found, nil
}

// neighUsable: a state in which the kernel itself would send to the
// address (NUD_VALID), with an Ethernet address.
func neighUsable(n netlink.Neigh) bool {
	const valid = netlink.NUD_PERMANENT | netlink.NUD_NOARP | netlink.NUD_REACHABLE | netlink.NUD_PROBE |
		netlink.NUD_STALE | netlink.NUD_DELAY
	if n.State&valid == 0 || len(n.HardwareAddr) != 6 {
		return false
	}
	for _, b := range n.HardwareAddr {
		if b != 0 {
			return true
		}
	}
	return false
}

func neighStateName(s int) string {
	switch {
	case s&netlink.NUD_INCOMPLETE != 0:
		return "incomplete"
	case s&netlink.NUD_FAILED != 0:
		return "failed"
	case s&netlink.NUD_REACHABLE != 0:
		return "reachable"
	case s&netlink.NUD_STALE != 0:
		return "stale"
	case s&netlink.NUD_DELAY != 0:
		return "delay"
	case s&netlink.NUD_PROBE != 0:
		return "probe"
	case s&netlink.NUD_PERMANENT != 0:
		return "permanent"
	case s&netlink.NUD_NOARP != 0:
		return "noarp"
	}
	return fmt.Sprintf("state %#x", s)
}

// solicit asks the kernel to resolve (or, for a STALE entry, re-confirm)
// a next hop: RTM_NEWNEIGH with NTF_USE runs neigh_event_send() on the
// entry, creating it if needed, exactly as a packet sent by the stack
// would. Permanent and NOARP entries are never touched (NTF_USE would
// clear NUD_PERMANENT).
func (r *netlinkResolver) solicit(hop nextHop, exists bool, state int) {
	if exists && state&(netlink.NUD_PERMANENT|netlink.NUD_NOARP) != 0 {
		return
	}
	r.mu.Lock()
	if t, ok := r.solicited[hop]; ok && time.Since(t) < solicitEvery {
		r.mu.Unlock()
		return
	}
	r.solicited[hop] = time.Now()
	r.mu.Unlock()
	fam := unix.AF_INET
	if hop.addr.Is6() {
		fam = unix.AF_INET6
	}
	err := r.h.NeighSet(&netlink.Neigh{LinkIndex: hop.ifindex, Family: fam, IP: ipOf(hop.addr), Flags: netlink.NTF_USE})
	if err != nil && !errors.Is(err, syscall.EEXIST) {
		r.log.Debug("egress: ask the kernel to resolve a next hop", "addr", hop.addr, "ifindex", hop.ifindex, "err", err)
	}
}

// watch follows netlink events into t until done is closed. Subscriptions
// that end (a receive buffer overrun drops the socket) are made again,
// after a full refresh, since events may have been lost.
func (r *netlinkResolver) watch(t *egressTable, done <-chan struct{}) {
	for {
		neighCh := make(chan netlink.NeighUpdate, 256)
		routeCh := make(chan netlink.RouteUpdate, 256)
		linkCh := make(chan netlink.LinkUpdate, 64)
		addrCh := make(chan netlink.AddrUpdate, 64)
		stop := make(chan struct{})
		errCb := func(err error) { r.log.Debug("egress: netlink subscription", "err", err) }
		ns := r.ns
		err := errors.Join(
			netlink.NeighSubscribeWithOptions(neighCh, stop, netlink.NeighSubscribeOptions{Namespace: &ns, ErrorCallback: errCb}),
			netlink.RouteSubscribeWithOptions(routeCh, stop, netlink.RouteSubscribeOptions{Namespace: &ns, ErrorCallback: errCb}),
			netlink.LinkSubscribeWithOptions(linkCh, stop, netlink.LinkSubscribeOptions{Namespace: &ns, ErrorCallback: errCb}),
			netlink.AddrSubscribeWithOptions(addrCh, stop, netlink.AddrSubscribeOptions{Namespace: &ns, ErrorCallback: errCb}),
		)
		if err != nil {
			r.log.Warn("egress: subscribe to netlink events failed; re-resolving every second instead", "err", err)
		}
		lost := r.follow(t, done, neighCh, routeCh, linkCh, addrCh, err != nil)
		close(stop)
		if !lost {
			return
		}
		r.refresh(t)
		select {
		case <-done:
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// follow handles events until done (false) or a subscription ends (true).
func (r *netlinkResolver) follow(t *egressTable, done <-chan struct{}, neighCh chan netlink.NeighUpdate,
	routeCh chan netlink.RouteUpdate, linkCh chan netlink.LinkUpdate, addrCh chan netlink.AddrUpdate, poll bool) bool {
	keepalive := time.NewTicker(keepaliveEvery)
	defer keepalive.Stop()
	resync := time.NewTicker(resyncEvery)
	defer resync.Stop()
	pending := time.NewTimer(time.Hour)
	pending.Stop()
	defer pending.Stop()
	// The refresh runs debounce after the first event of a burst; later
	// events of the burst do not push it back (a steady stream of route
	// events, a busy routing daemon, would otherwise postpone it until the
	// resync). Events that arrive after the refresh began start a new
	// burst.
	armed := false
	schedule := func() {
		if !armed {
			armed = true
			pending.Reset(debounce)
		}
	}
	for {
		select {
		case <-done:
			return false
		case u, ok := <-neighCh:
			if !ok {
				return true
			}
			r.neighEvent(t, u)
		case _, ok := <-routeCh:
			if !ok {
				return true
			}
			schedule()
		case _, ok := <-linkCh:
			if !ok {
				return true
			}
			schedule()
		case _, ok := <-addrCh:
			if !ok {
				return true
			}
			schedule()
		case <-pending.C:
			armed = false
			r.refresh(t)
		case <-resync.C:
			r.refresh(t)
		case <-keepalive.C:
			if poll {
				r.refresh(t)
			}
			r.keepalive(t)
		}
	}
}

func (r *netlinkResolver) refresh(t *egressTable) {
	r.mu.Lock()
	clear(r.neighCache)
	r.mu.Unlock()
	if err := t.refreshRoutes(); err != nil {
		r.log.Warn("egress: refresh", "err", err)
	}
}

// neighEvent applies one neighbour change directly (no route lookups): a
// gateway's new MAC is in the program within one netlink round trip.
func (r *netlinkResolver) neighEvent(t *egressTable, u netlink.NeighUpdate) {
	ip, ok := netip.AddrFromSlice(u.IP)
	if !ok {
		return
	}
	r.mu.Lock()
	clear(r.neighCache)
	r.mu.Unlock()
	var mac net.HardwareAddr
	detail := ""
	if u.Type == unix.RTM_NEWNEIGH && neighUsable(u.Neigh) {
		mac = u.HardwareAddr
	} else {
		state := "deleted"
		if u.Type == unix.RTM_NEWNEIGH {
			state = neighStateName(u.State)
		}
		detail = fmt.Sprintf("neighbour %s unresolved (%s)", ip.Unmap(), state)
	}
	if err := t.neighbourChanged(u.LinkIndex, ip, mac, detail); err != nil {
		r.log.Warn("egress: neighbour change", "err", err)
	}
	if mac == nil && u.Type == unix.RTM_DELNEIGH {
		// A next hop in use lost its entry (flushed, garbage
		// collected): resolve it again.
		for _, h := range t.nextHops() {
			if h.ifindex == u.LinkIndex && h.addr == ip.Unmap() {
				r.solicit(h, false, 0)
			}
		}
	}
}

// keepalive asks the kernel to re-confirm next hops in use that went
// STALE, and to resolve ones that are unresolved: traffic the program
// forwards never passes the neighbour layer, so without this a dead
// gateway would stay "valid" forever.
//
// It also brings the slots in line with the neighbour table. A slot can
// miss the event that resolves its next hop: acquire (another goroutine)
// asks the kernel to resolve it before it stores the slot's route, and
// an answer applied in between matches no slot. Such a slot would pass
// until the next resync (30 s) although the kernel knows the MAC; with
// this, a missed or lost neighbour event costs at most one keepalive
// period. The table is read after the last event was applied (events run
// on this goroutine and empty the dump cache), so this never undoes a
// newer event.
func (r *netlinkResolver) keepalive(t *egressTable) {
	for _, h := range t.nextHops() {
		n, found, err := r.lookupNeigh(h)
		if err != nil {
			continue
		}
		if found && neighUsable(n) {
			if err := t.neighbourChanged(h.ifindex, h.addr, n.HardwareAddr, ""); err != nil {
				r.log.Warn("egress: neighbour keepalive", "err", err)
			}
		} else if found && n.State&(netlink.NUD_FAILED|netlink.NUD_INCOMPLETE) != 0 {
			detail := fmt.Sprintf("neighbour %s unresolved (%s)", h.addr, neighStateName(n.State))
			if err := t.neighbourChanged(h.ifindex, h.addr, nil, detail); err != nil {
				r.log.Warn("egress: neighbour keepalive", "err", err)
			}
		}
		if !found || n.State&(netlink.NUD_STALE|netlink.NUD_FAILED|netlink.NUD_INCOMPLETE) != 0 {
			r.solicit(h, found, n.State)
		}
	}
}

func newHostResolver(nsPath string, log *slog.Logger, transmittable func(int) bool) (hostResolver, error) {
	return newNetlinkResolver(nsPath, log, transmittable)
}

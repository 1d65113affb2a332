package loader

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"sync"
)

// The egress table (bpf/maps.h `egress`) tells the program how to reach
// each destination a channel entry sends to: the egress device, both MAC
// addresses, the VLAN tag and the MTU, or the reason it cannot be reached
// (docs/design.md "Egress"). The program never asks the kernel's FIB:
// bpf_fib_lookup refuses every lookup on a host that does not forward IP
// (net.ipv4.conf.*.forwarding=0, the default), so the control plane
// resolves egress itself from the host's routes, neighbours and links and
// follows their changes (resolver.go).
//
// One slot per destination in use, keyed by (destination, source): the
// source is the relay or listener address the rewritten packet leaves
// from, which the route lookup needs. Channel entries carry the slot
// index; a failover rewrites only the slot. Slot 0 is never handed out: a
// zero index (an entry written by hand, or by a program version without
// the table) always passes with pass_no_nexthop.

// EgressEntry is one slot of the egress table as the control plane
// resolved it.
type EgressEntry struct {
	Slot     uint32
	Dst, Src netip.Addr
	// Ifindex is the device the program transmits on (a VLAN's parent);
	// Ifname names the resolved egress device itself (the VLAN device,
	// for VLAN egress).
	Ifindex int
	Ifname  string
	// Gateway is the route's next hop; invalid for on-link destinations.
	Gateway        netip.Addr
	DstMAC, SrcMAC net.HardwareAddr
	VLAN           uint16
	MTU            int
	// Reason is 0 when the program may forward to Dst, else the counter
	// it counts when it passes such a packet (PassNoNeigh, PassNoRoute,
	// PassLocal, PassLinkDown, PassNoEgress, PassNoNextHop).
	Reason Counter
	// Detail says why in words, for logs and `maps dump`.
	Detail string
	// Refs is how many channel directions use the slot.
	Refs int
}

// Usable reports whether the program forwards to the entry's destination.
func (e EgressEntry) Usable() bool { return e.Reason == 0 }

// egressKey identifies a destination: where the packet goes and the
// address it leaves from (both unmapped, one family).
type egressKey struct {
	dst, src netip.Addr
}

// route is what a route lookup says about a destination.
type route struct {
	reason  Counter // 0, PassNoRoute, PassLocal, PassLinkDown, PassNoEgress
	detail  string
	ifindex int    // transmitting device (VLAN parent)
	devIdx  int    // resolved egress device (the VLAN device itself)
	ifname  string // of devIdx
	gateway netip.Addr
	smac    net.HardwareAddr
	vlan    uint16
	mtu     int
}

// neighbour is what the neighbour table says about a route's next hop.
type neighbour struct {
	mac    net.HardwareAddr // nil: unresolved
	detail string
}

// nextHopAddr is the address whose link-layer address the frame needs.
func (r route) nextHopAddr(dst netip.Addr) netip.Addr {
	if r.gateway.IsValid() {
		return r.gateway
	}
	return dst
}

// egressSlot is one slot of the table.
type egressSlot struct {
	key   egressKey
	refs  int
	route route
	neigh neighbour
	val   relayEgressEntry // as written to the map
}

// value is the map value for a slot's route and neighbour.
func (s *egressSlot) value() relayEgressEntry {
	r := s.route
	if r.reason != 0 {
		return relayEgressEntry{Pass: uint32(r.reason)}
	}
	if s.neigh.mac == nil {
		return relayEgressEntry{Pass: uint32(PassNoNeigh)}
	}
	v := relayEgressEntry{Ifindex: uint32(r.ifindex), VlanId: r.vlan, Mtu: uint16(min(r.mtu, 0xFFFF))}
	copy(v.Dmac[:], s.neigh.mac)
	copy(v.Smac[:], r.smac)
	return v
}

// egressTable owns the slots of the egress map and their refcounts. Its
// lock is taken after XDP.mu (PutChannel holds XDP.mu and acquires slots),
// never before it.
type egressTable struct {
	res   resolver
	write func(slot uint32, v relayEgressEntry) error

	mu     sync.Mutex
	slots  map[uint32]*egressSlot
	byKey  map[egressKey]uint32
	free   []uint32
	closed bool
}

func newEgressTable(size int, res resolver, write func(uint32, relayEgressEntry) error) *egressTable {
	t := &egressTable{res: res, write: write, slots: map[uint32]*egressSlot{}, byKey: map[egressKey]uint32{}}
	for i := size - 1; i >= 1; i-- {
		t.free = append(t.free, uint32(i))
	}
	return t
}

// acquire returns the slot for (dst, src), resolving and writing it if it
// is new. The slot is usable by the program when acquire returns.
func (t *egressTable) acquire(dst, src netip.Addr) (uint32, error) {
	k := egressKey{dst.Unmap(), src.Unmap()}
	t.mu.Lock()
	if slot, ok := t.byKey[k]; ok {
		t.slots[slot].refs++
		t.mu.Unlock()
		return slot, nil
	}
	if len(t.free) == 0 {
		t.mu.Unlock()
		return 0, fmt.Errorf("egress table: %w", ErrFull)
	}
	slot := t.free[len(t.free)-1]
	t.free = t.free[:len(t.free)-1]
	s := &egressSlot{key: k, refs: 1}
	t.slots[slot] = s
	t.byKey[k] = slot
	t.mu.Unlock()

	// Resolve outside the lock (netlink round trips); the slot is
	// already ours, so nothing else can hand it out meanwhile.
	r := t.res.route(k.dst, k.src)
	n := t.res.neighbour(r, k.dst)
	t.mu.Lock()
	defer t.mu.Unlock()
	s.route, s.neigh = r, n
	if err := t.store(slot, s); err != nil {
		s.refs--
		t.dropLocked(slot, s)
		return 0, err
	}
	return slot, nil
}

// adopt registers a slot found in re-adopted channel entries (a restart):
// its value is resolved again by the next refresh.
func (t *egressTable) adopt(slot uint32, dst, src netip.Addr) {
	k := egressKey{dst.Unmap(), src.Unmap()}
	t.mu.Lock()
	defer t.mu.Unlock()
	if s, ok := t.slots[slot]; ok {
		if s.key == k {
			s.refs++
		}
		// A slot shared by two destinations is corrupt: keep it for the
		// first, the second keeps forwarding with it until the entry
		// is installed again (which acquires its own slot).
		return
	}
	for i, f := range t.free {
		if f == slot {
			t.free = append(t.free[:i], t.free[i+1:]...)
			break
		}
	}
	t.slots[slot] = &egressSlot{key: k, refs: 1, route: route{reason: PassNoNextHop, detail: "re-adopted, not yet resolved"}}
	if _, ok := t.byKey[k]; !ok {
		t.byKey[k] = slot
	}
}

// release drops one reference; the last one passes the slot (so a stale
// index never forwards) and frees it.
func (t *egressTable) release(slot uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.slots[slot]
	if !ok {
		return
	}
	s.refs--
	if s.refs <= 0 {
		t.dropLocked(slot, s)
	}
}

func (t *egressTable) dropLocked(slot uint32, s *egressSlot) {
	_ = t.write(slot, relayEgressEntry{Pass: uint32(PassNoNextHop)})
	delete(t.slots, slot)
	if t.byKey[s.key] == slot {
		delete(t.byKey, s.key)
	}
	t.free = append(t.free, slot)
}

// store writes a slot's value if it changed.
func (t *egressTable) store(slot uint32, s *egressSlot) error {
	v := s.value()
	if v == s.val { // a fresh slot's zero val never equals a value: pass or MTU is set
		return nil
	}
	if err := t.write(slot, v); err != nil {
		return fmt.Errorf("write egress slot %d: %w", slot, err)
	}
	s.val = v
	return nil
}

// refreshRoutes resolves every slot again (a route, address or link
// changed, or the periodic resync).
func (t *egressTable) refreshRoutes() error {
	type job struct {
		slot uint32
		key  egressKey
		r    route
		n    neighbour
	}
	t.mu.Lock()
	jobs := make([]job, 0, len(t.slots))
	for slot, s := range t.slots {
		jobs = append(jobs, job{slot: slot, key: s.key})
	}
	t.mu.Unlock()
	for i := range jobs {
		jobs[i].r = t.res.route(jobs[i].key.dst, jobs[i].key.src)
		jobs[i].n = t.res.neighbour(jobs[i].r, jobs[i].key.dst)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var first error
	for _, j := range jobs {
		s, ok := t.slots[j.slot]
		if !ok || s.key != j.key {
			continue // released (and maybe reused) meanwhile
		}
		s.route, s.neigh = j.r, j.n
		if err := t.store(j.slot, s); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// neighbourChanged applies a neighbour table change (an ARP/ND answer, a
// gratuitous ARP or unsolicited NA with a new address, an entry that
// failed or was deleted) to the slots whose next hop it is. mac nil means
// unresolved.
func (t *egressTable) neighbourChanged(ifindex int, ip netip.Addr, mac net.HardwareAddr, detail string) error {
	ip = ip.Unmap()
	t.mu.Lock()
	defer t.mu.Unlock()
	var first error
	for slot, s := range t.slots {
		if s.route.reason != 0 || s.route.devIdx != ifindex || s.route.nextHopAddr(s.key.dst) != ip {
			continue
		}
		if bytes.Equal(s.neigh.mac, mac) && s.neigh.detail == detail {
			continue
		}
		s.neigh = neighbour{mac: mac, detail: detail}
		if err := t.store(slot, s); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// nextHops lists the distinct (device, next hop) pairs the usable slots
// depend on, for the resolver's neighbour upkeep.
func (t *egressTable) nextHops() []nextHop {
	t.mu.Lock()
	defer t.mu.Unlock()
	seen := map[nextHop]bool{}
	var out []nextHop
	for _, s := range t.slots {
		if s.route.reason != 0 {
			continue
		}
		h := nextHop{ifindex: s.route.devIdx, addr: s.route.nextHopAddr(s.key.dst)}
		if !seen[h] {
			seen[h] = true
			out = append(out, h)
		}
	}
	return out
}

// nextHop is a neighbour the table depends on.
type nextHop struct {
	ifindex int
	addr    netip.Addr
}

// entries lists the slots in use, by slot.
func (t *egressTable) entries() []EgressEntry {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]EgressEntry, 0, len(t.slots))
	for slot, s := range t.slots {
		e := EgressEntry{
			Slot: slot, Dst: s.key.dst, Src: s.key.src, Ifindex: s.route.ifindex, Ifname: s.route.ifname,
			Gateway: s.route.gateway, SrcMAC: s.route.smac, DstMAC: s.neigh.mac, VLAN: s.route.vlan,
			MTU: s.route.mtu, Reason: Counter(s.val.Pass), Detail: s.route.detail, Refs: s.refs,
		}
		if e.Detail == "" {
			e.Detail = s.neigh.detail
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Slot < out[j].Slot })
	return out
}

// resolver answers route and neighbour questions about the host the
// program runs on (resolver_linux.go: netlink).
type resolver interface {
	route(dst, src netip.Addr) route
	neighbour(r route, dst netip.Addr) neighbour
}

// hostResolver is a resolver that also follows the host's changes into a
// table (watch returns when done is closed).
type hostResolver interface {
	resolver
	watch(t *egressTable, done <-chan struct{})
	setVLAN(ifindex, parent int, vid uint16)
	isVLAN(ifindex int) bool
	close()
}

// closeResolver stops following the host's tables and closes netlink.
func (x *XDP) closeResolver() {
	if x.stopRes != nil {
		close(x.stopRes)
		<-x.resDone
		x.stopRes = nil
	}
	if x.res != nil {
		x.res.close()
		x.res = nil
	}
}

// canTransmit reports whether the program can send on ifindex: the device
// is in the redirect devmap (serve puts every XDP interface there, so
// XDP_TX back out of the ingress device is covered too).
func (x *XDP) canTransmit(ifindex int) bool {
	x.txMu.Lock()
	defer x.txMu.Unlock()
	return x.transmit[ifindex]
}

// updateTransmit makes redirect the transmittable devices and re-resolves
// egress if that changed; when it returns, no usable egress slot names a
// device outside redirect. x.mu is held.
func (x *XDP) updateTransmit(redirect []int) {
	want := map[int]bool{}
	for _, idx := range redirect {
		want[idx] = true
	}
	x.txMu.Lock()
	same := len(want) == len(x.transmit)
	for idx := range want {
		same = same && x.transmit[idx]
	}
	x.transmit = want
	x.txMu.Unlock()
	if !same && x.egress != nil {
		if err := x.egress.refreshRoutes(); err != nil {
			x.log.Warn("xdp: resolve egress", "err", err)
		}
	}
}

// Egress lists the egress table: every destination in use, how the
// program reaches it, or why it does not. Opened ReadOnly, it lists the
// map's slots as stored (without destinations and names: those live in
// the writing process).
func (x *XDP) Egress() []EgressEntry {
	if x.egress != nil {
		return x.egress.entries()
	}
	var out []EgressEntry
	var k uint32
	var v relayEgressEntry
	it := x.objs.Egress.Iterate()
	for it.Next(&k, &v) {
		if k == 0 || v == (relayEgressEntry{}) || Counter(v.Pass) == PassNoNextHop {
			continue
		}
		out = append(out, EgressEntry{Slot: k, Ifindex: int(v.Ifindex), DstMAC: net.HardwareAddr(v.Dmac[:]),
			SrcMAC: net.HardwareAddr(v.Smac[:]), VLAN: v.VlanId, MTU: int(v.Mtu), Reason: Counter(v.Pass)})
	}
	return out
}

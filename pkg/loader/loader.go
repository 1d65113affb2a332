package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
)

// DefaultPinDir is where maps and links are pinned unless Options say
// otherwise.
const DefaultPinDir = "/sys/fs/bpf/hybridrelay"

// DefaultMaxChannels sizes the channel maps when Options.MaxChannels is 0.
const DefaultMaxChannels = 1024

var (
	// ErrFull means the channel maps have no room; the channel stays on
	// the userspace path (and the map-full counter counts it).
	ErrFull = errors.New("xdp channel table full")
	// ErrUnsupported means the channel cannot be forwarded by the program
	// (mixed address families, ...); it stays on the userspace path.
	ErrUnsupported = errors.New("channel not supported by the xdp path")
	// ErrNotFound is returned for operations on a channel not installed.
	ErrNotFound = errors.New("xdp channel not installed")
)

// Options configure Load.
type Options struct {
	// MaxChannels is the number of channels the kernel can forward (each
	// direction's hash map and the usage array get this many entries).
	// 0 means DefaultMaxChannels. Re-adopting maps pinned with another
	// size fails: keep the size, or stop the daemon and remove the pins.
	MaxChannels int
	// PinDir is the bpffs directory for maps and links; "" means
	// DefaultPinDir. Maps already pinned there are re-adopted.
	PinDir string
	// DisablePin loads private maps and unpinned links (benchmarks,
	// BPF_PROG_RUN tests): everything goes away on Close.
	DisablePin bool
	// Logger receives warnings (generic-mode fallback); nil means
	// slog.Default().
	Logger *slog.Logger
	// NetNS is the path of the network namespace whose routes,
	// neighbours and links egress is resolved from (the namespace the
	// program is attached in, e.g. /run/netns/NAME); "" means the
	// namespace of the thread calling Load.
	NetNS string
	// ReadOnly opens (pinned) maps for reading only, as the CLI does
	// beside a running daemon, the maps' one writer: no egress
	// resolution, no writes; PutChannel and friends fail.
	ReadOnly bool
}

// Channel is one bound channel as the kernel forwards it, in both
// directions:
//
//	Client -> Listener  ChannelData(Number)  ==>  Relay -> Peer          data
//	Peer   -> Relay     data                 ==>  Listener -> Client     ChannelData(Number)
//
// All four addresses must be of one family.
type Channel struct {
	Client, Listener, Relay, Peer netip.AddrPort
	Number                        uint16 // 0x4000-0x7FFF (RFC 8656 / RFC 5766)
	// Expires is when the kernel stops forwarding (it then passes the
	// packets to userspace). The zero Time means already expired.
	Expires time.Time
	// DontFragment sets DF on relayed IPv4 packets to the peer.
	DontFragment bool
}

// ChannelStats are the kernel's per-channel usage counters (data bytes,
// i.e. ChannelData payload / peer datagram payload).
type ChannelStats struct {
	ToPeerPackets, ToPeerBytes     uint64
	ToClientPackets, ToClientBytes uint64
}

// ChannelEntry is one installed channel as read back from the maps.
type ChannelEntry struct {
	Channel
	// ExpiresNs is the channel's CLOCK_MONOTONIC expiry (the map holds it
	// early by the coarse clock's lag, see kernelExpiry).
	ExpiresNs uint64
	Slot      uint32
	Stats     ChannelStats
	// PeerEntry reports whether the peer->client direction is present.
	PeerEntry bool
	// Hairpin: the entry is written relay-to-relay (hairpin.go); ExpiresNs
	// is then the earlier of the two channels'.
	Hairpin bool
}

// entry is what the index remembers about an installed channel: enough to
// rewrite both values and delete both keys without reading the maps.
type entry struct {
	cv relayC2pVal // the channel's own c2p value, never hairpinned
	pk relayP2cKey
	pv relayP2cVal
	// probe is the p2c key a relay-to-relay target would have
	// (hairpin.go); written is the c2p value in the map (cv, or cv
	// hairpinned to the channel installed under probe).
	probe   relayP2cKey
	written relayC2pVal
}

// XDP is the loaded program with its maps. Its methods are safe for
// concurrent use; the process holding it is the only writer of the maps.
type XDP struct {
	objs   relayObjects
	opts   Options
	max    int
	pinDir string // "" when pinning is disabled
	log    *slog.Logger

	// egress owns the egress map's slots; res fills them and follows
	// the host's changes until stopRes is closed.
	egress  *egressTable
	res     hostResolver
	stopRes chan struct{}
	resDone chan struct{}

	mu    sync.Mutex
	index map[relayC2pKey]*entry
	// byP2c finds an installed channel by its p2c key, deps the channels
	// whose relay-to-relay target would have a p2c key (hairpin.go).
	byP2c   map[relayP2cKey]relayC2pKey
	deps    map[relayP2cKey]map[relayC2pKey]bool
	free    []uint32 // free slots of chan_usage
	adopted map[relayC2pKey]bool
	links   map[int]xdpLink // by ifindex, the relay program's links
	// redirect is the devmap's set (SetRedirectIfaces).
	redirect []int
	closed   bool

	// txMu guards transmit: the devices the program can send on, the
	// devmap's (the program redirects without checking the devmap
	// first, so nothing else may be marked usable). The resolver reads
	// it while XDP.mu may be held, so it has a lock of its own.
	txMu     sync.Mutex
	transmit map[int]bool
}

// Load loads the program with maps sized from opts, pinned under
// opts.PinDir (re-adopting maps already pinned there). It does not attach.
func Load(opts Options) (*XDP, error) {
	if opts.MaxChannels < 0 {
		return nil, fmt.Errorf("load xdp: max channels %d is negative", opts.MaxChannels)
	}
	if opts.MaxChannels == 0 {
		opts.MaxChannels = DefaultMaxChannels
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	spec, err := loadRelay()
	if err != nil {
		return nil, fmt.Errorf("load xdp: read embedded object: %w", err)
	}
	for _, name := range []string{relayMapC2pChannels, relayMapP2cChannels, relayMapChanUsage} {
		spec.Maps[name].MaxEntries = uint32(opts.MaxChannels)
	}
	// Two destinations per channel (peer, client), plus the reserved
	// slot 0.
	egressSize := 2*opts.MaxChannels + 1
	spec.Maps[relayMapEgress].MaxEntries = uint32(egressSize)
	x := &XDP{
		opts:     opts,
		max:      opts.MaxChannels,
		log:      log,
		index:    map[relayC2pKey]*entry{},
		byP2c:    map[relayP2cKey]relayC2pKey{},
		deps:     map[relayP2cKey]map[relayC2pKey]bool{},
		adopted:  map[relayC2pKey]bool{},
		links:    map[int]xdpLink{},
		transmit: map[int]bool{},
	}
	var copts ebpf.CollectionOptions
	if !opts.DisablePin {
		x.pinDir = opts.PinDir
		if x.pinDir == "" {
			x.pinDir = DefaultPinDir
		}
		if err := ensureBPFFS(x.pinDir); err != nil {
			return nil, fmt.Errorf("load xdp: pin directory: %w", err)
		}
		if err := os.MkdirAll(x.pinDir, 0o700); err != nil {
			return nil, fmt.Errorf("load xdp: create pin directory (is bpffs mounted?): %w", err)
		}
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinByName
		}
		copts.Maps.PinPath = x.pinDir
	}
	if err := spec.LoadAndAssign(&x.objs, &copts); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load xdp: verifier: %+v", verr)
		}
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("load xdp: maps pinned in %s have another layout or size (an older version or another --xdp-max-channels); stop the old daemon and run `hybridrelay maps unpin`: %w", x.pinDir, err)
		}
		return nil, fmt.Errorf("load xdp: %w", err)
	}
	if opts.ReadOnly {
		if err := x.rebuildIndex(); err != nil {
			x.objs.Close()
			return nil, err
		}
		return x, nil
	}
	res, err := newHostResolver(opts.NetNS, log, x.canTransmit)
	if err != nil {
		x.objs.Close()
		return nil, fmt.Errorf("load xdp: %w", err)
	}
	x.res = res
	x.egress = newEgressTable(egressSize, res, func(slot uint32, v relayEgressEntry) error {
		return x.objs.Egress.Put(slot, v)
	})
	// Slot 0 is never handed out: a zero index passes.
	if err := x.objs.Egress.Put(uint32(0), relayEgressEntry{Pass: uint32(PassNoNextHop)}); err != nil {
		x.closeResolver()
		x.objs.Close()
		return nil, fmt.Errorf("load xdp: reserve egress slot 0: %w", err)
	}
	if err := x.rebuildIndex(); err != nil {
		x.closeResolver()
		x.objs.Close()
		return nil, err
	}
	// A re-adopted devmap keeps redirecting: its devices stay
	// transmittable until SetRedirectIfaces says otherwise.
	var k, v uint32
	it := x.objs.TxPorts.Iterate()
	for it.Next(&k, &v) {
		x.redirect = append(x.redirect, int(k))
	}
	x.txMu.Lock()
	for _, idx := range x.redirect {
		x.transmit[idx] = true
	}
	x.txMu.Unlock()
	if err := x.egress.refreshRoutes(); err != nil {
		x.log.Warn("xdp: resolve egress of re-adopted channels", "err", err)
	}
	x.stopRes, x.resDone = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(x.resDone)
		x.res.watch(x.egress, x.stopRes)
	}()
	return x, nil
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

// errReadOnly is returned by writes to maps opened ReadOnly.
var errReadOnly = errors.New("xdp maps opened read-only")

// rebuildIndex reads the (possibly re-adopted) maps back into the index and
// the free slot list. Entries found here count as "adopted" until the
// control plane installs them again (see Reconcile).
func (x *XDP) rebuildIndex() error {
	used := make([]bool, x.max)
	var k relayC2pKey
	var v relayC2pVal
	it := x.objs.C2pChannels.Iterate()
	for it.Next(&k, &v) {
		if int(v.Slot) >= x.max || used[v.Slot] {
			// A corrupt or foreign entry: forget it, Reconcile or the
			// next Install replaces it.
			continue
		}
		used[v.Slot] = true
		stored := v
		v = plainValue(v)
		c := channelFrom(k, v)
		_, _, pk, pv, err := c.keys(v.Slot, v.ExpiresNs)
		if err != nil {
			continue
		}
		var storedP relayP2cVal
		if x.objs.P2cChannels.Lookup(pk, &storedP) == nil {
			pv.Egress = storedP.Egress
		}
		if x.egress != nil {
			x.egress.adopt(v.Egress, c.Peer.Addr(), c.Relay.Addr())
			x.egress.adopt(pv.Egress, c.Client.Addr(), c.Listener.Addr())
		}
		e := &entry{cv: v, pk: pk, pv: pv, probe: hairpinProbe(v, pk), written: stored}
		x.index[k] = e
		x.linkLocked(k, e)
		x.adopted[k] = true
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("load xdp: read pinned channels: %w", err)
	}
	if x.egress != nil {
		// Relay-to-relay entries follow the channels found (a target
		// that vanished with the old process must not stay in use).
		for _, e := range x.index {
			if err := x.rewriteDependentsLocked(e.pk); err != nil {
				return fmt.Errorf("load xdp: %w", err)
			}
		}
		for ck, e := range x.index {
			if _, ok := x.byP2c[e.probe]; !ok && e.written != e.cv {
				if err := x.objs.C2pChannels.Update(ck, e.cv, ebpf.UpdateExist); err != nil {
					return fmt.Errorf("load xdp: rewrite re-adopted channel: %w", err)
				}
				e.written = e.cv
			}
		}
	}
	for i := x.max - 1; i >= 0; i-- {
		if !used[i] {
			x.free = append(x.free, uint32(i))
		}
	}
	return nil
}

// PinDir is the directory maps and links are pinned in ("" if disabled).
func (x *XDP) PinDir() string { return x.pinDir }

// MaxChannels is the size of the channel maps.
func (x *XDP) MaxChannels() int { return x.max }

// Program is the relay program (for BPF_PROG_RUN tests and benchmarks).
func (x *XDP) Program() *ebpf.Program { return x.objs.Hybridrelay }

// PassProgram is the XDP_PASS-only program of the same object.
func (x *XDP) PassProgram() *ebpf.Program { return x.objs.PassAll }

// PutChannel installs or replaces both directions of c. Re-installing a
// channel keeps its slot and usage counters. A full table returns ErrFull
// (and counts it); a channel the program cannot forward ErrUnsupported.
func (x *XDP) PutChannel(c Channel) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed {
		return fmt.Errorf("put channel: %w", os.ErrClosed)
	}
	if x.egress == nil {
		return fmt.Errorf("put channel: %w", errReadOnly)
	}
	probe, _, _, _, err := c.keys(0, 0)
	if err != nil {
		return fmt.Errorf("put channel: %w", err)
	}
	old := x.index[probe]
	var slot uint32
	switch {
	case old != nil:
		slot = old.cv.Slot
	case len(x.free) == 0:
		x.countMapFull()
		return fmt.Errorf("put channel %#x: %w", c.Number, ErrFull)
	default:
		slot = x.free[len(x.free)-1]
	}
	ck, cv, pk, pv, err := c.keys(slot, kernelExpiry(c.Expires))
	if err != nil {
		return fmt.Errorf("put channel: %w", err)
	}
	// The way to each destination, resolved before the entries exist.
	if cv.Egress, err = x.egress.acquire(c.Peer.Addr(), c.Relay.Addr()); err != nil {
		x.countMapFull()
		return fmt.Errorf("put channel %#x: egress to the peer: %w", c.Number, err)
	}
	if pv.Egress, err = x.egress.acquire(c.Client.Addr(), c.Listener.Addr()); err != nil {
		x.egress.release(cv.Egress)
		x.countMapFull()
		return fmt.Errorf("put channel %#x: egress to the client: %w", c.Number, err)
	}
	fail := func(err error) error {
		x.egress.release(cv.Egress)
		x.egress.release(pv.Egress)
		return err
	}
	if old == nil {
		// A new owner of the slot starts from zero, on every CPU.
		zero := make([]relayChanStats, x.possibleCPUs())
		if err := x.objs.ChanUsage.Put(slot, zero); err != nil {
			return fail(fmt.Errorf("put channel %#x: reset usage: %w", c.Number, err))
		}
	}
	// Peer direction first: a client packet forwarded before the peer
	// entry exists would only mean the answer takes userspace.
	if err := x.objs.P2cChannels.Put(pk, pv); err != nil {
		if isFull(err) {
			x.countMapFull()
			return fail(fmt.Errorf("put channel %#x: peer entry: %w", c.Number, ErrFull))
		}
		return fail(fmt.Errorf("put channel %#x: peer entry: %w", c.Number, err))
	}
	hpProbe := hairpinProbe(cv, pk)
	written := x.c2pValue(ck, cv, hpProbe)
	if err := x.objs.C2pChannels.Put(ck, written); err != nil {
		if old != nil && old.pk == pk {
			_ = x.objs.P2cChannels.Put(pk, old.pv)
		} else {
			_ = x.objs.P2cChannels.Delete(pk)
		}
		if isFull(err) {
			x.countMapFull()
			return fail(fmt.Errorf("put channel %#x: client entry: %w", c.Number, ErrFull))
		}
		return fail(fmt.Errorf("put channel %#x: client entry: %w", c.Number, err))
	}
	if old != nil {
		x.unlinkLocked(ck, old.pk, old.probe)
		if old.pk != pk {
			// Same channel, other peer: relay-to-relay entries that
			// targeted the old peer key fall back, then the old
			// reverse entry goes.
			_ = x.rewriteDependentsLocked(old.pk)
			_ = x.objs.P2cChannels.Delete(old.pk)
		}
		x.egress.release(old.cv.Egress)
		x.egress.release(old.pv.Egress)
	}
	if old == nil {
		x.free = x.free[:len(x.free)-1]
	}
	e := &entry{cv: cv, pk: pk, pv: pv, probe: hpProbe, written: written}
	x.index[ck] = e
	x.linkLocked(ck, e)
	delete(x.adopted, ck)
	if err := x.rewriteDependentsLocked(pk); err != nil {
		return fmt.Errorf("put channel %#x: %w", c.Number, err)
	}
	return nil
}

// UpdateExpiry moves the expiry of an installed channel (both directions).
// Counters are not touched (they live outside the entries).
func (x *XDP) UpdateExpiry(c Channel) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed {
		return fmt.Errorf("update expiry: %w", os.ErrClosed)
	}
	if x.egress == nil {
		return fmt.Errorf("update expiry: %w", errReadOnly)
	}
	ck, _, _, _, err := c.keys(0, 0)
	if err != nil {
		return fmt.Errorf("update expiry: %w", err)
	}
	e := x.index[ck]
	if e == nil {
		return fmt.Errorf("update expiry of channel %#x: %w", c.Number, ErrNotFound)
	}
	ns := kernelExpiry(c.Expires)
	cv, pv := e.cv, e.pv
	cv.ExpiresNs, pv.ExpiresNs = ns, ns
	if err := x.objs.P2cChannels.Update(e.pk, pv, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("update expiry of channel %#x: peer entry: %w", c.Number, err)
	}
	written := x.c2pValue(ck, cv, e.probe)
	if err := x.objs.C2pChannels.Update(ck, written, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("update expiry of channel %#x: client entry: %w", c.Number, err)
	}
	e.cv, e.pv, e.written = cv, pv, written
	delete(x.adopted, ck)
	// A relay-to-relay entry that targets this channel takes the new
	// expiry if it is the earlier one.
	if err := x.rewriteDependentsLocked(e.pk); err != nil {
		return fmt.Errorf("update expiry of channel %#x: %w", c.Number, err)
	}
	return nil
}

// DeleteChannel removes both directions; an absent channel is not an error.
// Only Client, Listener and Number of c are used.
func (x *XDP) DeleteChannel(c Channel) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed {
		return fmt.Errorf("delete channel: %w", os.ErrClosed)
	}
	if x.egress == nil {
		return fmt.Errorf("delete channel: %w", errReadOnly)
	}
	ck, err := c.c2pKey()
	if err != nil {
		return nil // never installable, so not installed
	}
	return x.deleteLocked(ck)
}

func (x *XDP) deleteLocked(ck relayC2pKey) error {
	e := x.index[ck]
	if e == nil {
		return nil
	}
	var errs []error
	// Relay-to-relay entries that send to this channel's client stop
	// doing so before it goes.
	x.unlinkLocked(ck, e.pk, e.probe)
	if err := x.rewriteDependentsLocked(e.pk); err != nil {
		errs = append(errs, err)
	}
	if err := x.objs.C2pChannels.Delete(ck); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("client entry: %w", err))
	}
	if err := x.objs.P2cChannels.Delete(e.pk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("peer entry: %w", err))
	}
	if len(errs) > 0 {
		x.linkLocked(ck, e)
		return fmt.Errorf("delete channel %#x: %w", host16(ck.Channel), errors.Join(errs...))
	}
	delete(x.index, ck)
	delete(x.adopted, ck)
	x.free = append(x.free, e.cv.Slot)
	x.egress.release(e.cv.Egress)
	x.egress.release(e.pv.Egress)
	return nil
}

// c2pKey is the client->peer key of c (only Client, Listener, Number).
func (c Channel) c2pKey() (relayC2pKey, error) {
	full := c
	if !full.Relay.IsValid() {
		full.Relay = c.Listener
	}
	if !full.Peer.IsValid() {
		full.Peer = c.Client
	}
	if full.Relay.Addr().Unmap().Is4() != full.Client.Addr().Unmap().Is4() {
		full.Relay, full.Peer = c.Listener, c.Client
	}
	ck, _, _, _, err := full.keys(0, 0)
	return ck, err
}

// ChannelCounters reads the usage counters of an installed channel.
func (x *XDP) ChannelCounters(c Channel) (ChannelStats, error) {
	ck, err := c.c2pKey()
	if err != nil {
		return ChannelStats{}, fmt.Errorf("channel counters: %w", err)
	}
	x.mu.Lock()
	e := x.index[ck]
	x.mu.Unlock()
	if e == nil {
		return ChannelStats{}, fmt.Errorf("channel counters of %#x: %w", c.Number, ErrNotFound)
	}
	return x.slotStats(e.cv.Slot)
}

// slotStats sums a usage slot over the CPUs.
func (x *XDP) slotStats(slot uint32) (ChannelStats, error) {
	var per []relayChanStats
	if err := x.objs.ChanUsage.Lookup(slot, &per); err != nil {
		return ChannelStats{}, fmt.Errorf("read channel usage slot %d: %w", slot, err)
	}
	var st ChannelStats
	for _, s := range per {
		st.ToPeerPackets += s.ToPeerPackets
		st.ToPeerBytes += s.ToPeerBytes
		st.ToClientPackets += s.ToClientPackets
		st.ToClientBytes += s.ToClientBytes
	}
	return st, nil
}

// possibleCPUs is the number of values of a per-CPU map entry.
func (x *XDP) possibleCPUs() int {
	n, err := ebpf.PossibleCPU()
	if err != nil || n < 1 {
		return 1
	}
	return n
}

// IterateChannels calls fn for every channel in the kernel's client->peer
// map (what `hybridrelay maps dump` shows), read from the map itself, not
// from the index. fn returning false stops the iteration.
func (x *XDP) IterateChannels(fn func(ChannelEntry) bool) error {
	var k relayC2pKey
	var v relayC2pVal
	it := x.objs.C2pChannels.Iterate()
	for it.Next(&k, &v) {
		e := ChannelEntry{Channel: channelFrom(k, v), ExpiresNs: expiryFromKernel(v.ExpiresNs), Slot: v.Slot,
			Hairpin: v.Flags&flagHairpin != 0}
		if st, err := x.slotStats(v.Slot); err == nil {
			e.Stats = st
		}
		_, _, pk, _, err := e.Channel.keys(0, 0)
		if err == nil {
			var pv relayP2cVal
			e.PeerEntry = x.objs.P2cChannels.Lookup(pk, &pv) == nil
		}
		if !fn(e) {
			return nil
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate channels: %w", err)
	}
	return nil
}

// Len is the number of channels installed.
func (x *XDP) Len() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.index)
}

// Reconcile deletes the channels found in re-adopted maps that were not
// installed (PutChannel/UpdateExpiry) since Load: after a restart the
// control plane restores its state, re-installs what it still has, and then
// calls Reconcile so stale entries do not linger until they expire.
func (x *XDP) Reconcile() (removed int, err error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	var errs []error
	for ck := range x.adopted {
		if err := x.deleteLocked(ck); err != nil {
			errs = append(errs, err)
			continue
		}
		removed++
	}
	return removed, errors.Join(errs...)
}

func isFull(err error) bool {
	// A preallocated hash map with no free element returns E2BIG.
	return errors.Is(err, syscall.E2BIG)
}

// Close releases this process's handles. Pinned maps and links stay, and
// with them the attached program keeps forwarding: this is what a
// restarting daemon does. Unpinned links (DisablePin, AttachPass) detach.
func (x *XDP) Close() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed {
		return nil
	}
	x.closed = true
	var errs []error
	for idx, l := range x.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close link on ifindex %d: %w", idx, err))
		}
	}
	x.closeResolver()
	if err := x.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close xdp objects: %w", err))
	}
	return errors.Join(errs...)
}

// Unpin removes the pins of maps and links (the links detach when their
// last handle closes, at the latest on Close). Shutdown does Unpin then
// Close; a restart only Close.
func (x *XDP) Unpin() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.pinDir == "" {
		return nil
	}
	var errs []error
	for idx, l := range x.links {
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin link on ifindex %d: %w", idx, err))
		}
	}
	if !x.closed {
		for _, m := range []*ebpf.Map{x.objs.C2pChannels, x.objs.P2cChannels, x.objs.ChanUsage,
			x.objs.Counters, x.objs.TxPorts, x.objs.Egress} {
			if err := m.Unpin(); err != nil {
				errs = append(errs, fmt.Errorf("unpin map: %w", err))
			}
		}
	}
	// Pins of this program only (maps by name, links of earlier processes
	// on interfaces this one did not attach): the directory may be shared
	// or even be the bpffs root. The directory goes when it is empty.
	entries, err := os.ReadDir(x.pinDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("read pin directory: %w", err))
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, "link_") && !pinnedMapNames[name] {
			continue
		}
		if err := os.Remove(filepath.Join(x.pinDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpin %s: %w", name, err))
		}
	}
	if err := os.Remove(x.pinDir); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) {
		errs = append(errs, fmt.Errorf("remove pin directory: %w", err))
	}
	return errors.Join(errs...)
}

// pinnedMapNames are the maps Load pins by name (bpf/maps.h).
var pinnedMapNames = map[string]bool{
	relayMapC2pChannels: true, relayMapP2cChannels: true, relayMapChanUsage: true,
	relayMapCounters: true, relayMapTxPorts: true, relayMapEgress: true,
}

// linkPin is the pin path of the link on ifindex.
func (x *XDP) linkPin(ifindex int) string {
	return filepath.Join(x.pinDir, fmt.Sprintf("link_%d", ifindex))
}

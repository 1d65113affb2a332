package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/cilium/ebpf"

	"github.com/hybridrelay/hybridrelay/internal/kchan"
)

// DefaultPinDir is where maps and links are pinned unless Options say
// otherwise.
const DefaultPinDir = "/sys/fs/bpf/hybridrelay"

// DefaultMaxChannels sizes the channel maps when Options.MaxChannels is 0
// (the maps' size in bpf/maps.h).
const DefaultMaxChannels = int(relayHrMapSizeHR_DEFAULT_MAX_CHANNELS)

var (
	// ErrFull means the channel maps have no room; the channel stays on
	// the userspace path (and the map-full counter counts it).
	ErrFull = kchan.ErrFull
	// ErrUnsupported means the channel cannot be forwarded by the program
	// (mixed address families, ...); it stays on the userspace path.
	ErrUnsupported = kchan.ErrUnsupported
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
	// Prefilter lets the program drop datagrams to the listener
	// addresses given to SetListeners that the server would discard by
	// their framing alone (docs/design.md "Kernel-path invariants").
	Prefilter bool
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

	// clock converts expiries to the program's jiffies (jiffies.go).
	clock jiffyClock

	mu    sync.Mutex
	index map[relayC2pKey]*entry
	// byP2c finds an installed channel by its p2c key, deps the channels
	// whose relay-to-relay target would have a p2c key (hairpin.go).
	byP2c map[relayP2cKey]relayC2pKey
	deps  map[relayP2cKey]map[relayC2pKey]bool
	free  []uint32 // free slots of chan_usage
	// slotGen[slot] counts the slot's owners: a usage read made without
	// x.mu held is kept only for slots whose owner did not change (table.go).
	slotGen []uint32
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

	// meters are the bandwidth meters (meter.go), with a lock of their
	// own: Meter.Allow runs on the userspace packet path.
	meters meterTable

	// The fast tables (fast.go), guarded by mu: their set count and hash
	// seed (the program's hr_fast_mask + 1 and hr_fast_seed), and what
	// stops their settler. nil when read-only.
	fastSets         uint32
	fastSeed         uint64
	fastC2p, fastP2c *fastTable
	stopSettle       chan struct{}
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
	for _, name := range []string{relayMapC2pChannels, relayMapP2cChannels, relayMapChanUsage, relayMapMeters} {
		spec.Maps[name].MaxEntries = uint32(opts.MaxChannels)
	}
	// Two destinations per channel (peer, client), plus the reserved
	// slot 0.
	egressSize := 2*opts.MaxChannels + 1
	spec.Maps[relayMapEgress].MaxEntries = uint32(egressSize)
	fastSets := fastSets(opts.MaxChannels)
	fastSeed, err := newFastSeed()
	if err != nil {
		return nil, fmt.Errorf("load xdp: %w", err)
	}
	for _, name := range []string{relayMapFastC2p, relayMapFastP2c} {
		spec.Maps[name].MaxEntries = fastSets * uint32(fastWays)
	}
	if err := spec.Variables[relayVarHrFastMask].Set(fastSets - 1); err != nil {
		return nil, fmt.Errorf("load xdp: fast table mask: %w", err)
	}
	if err := spec.Variables[relayVarHrFastSeed].Set(fastSeed); err != nil {
		return nil, fmt.Errorf("load xdp: fast table seed: %w", err)
	}
	x := &XDP{
		opts:     opts,
		max:      opts.MaxChannels,
		log:      log,
		index:    map[relayC2pKey]*entry{},
		slotGen:  make([]uint32, opts.MaxChannels),
		byP2c:    map[relayP2cKey]relayC2pKey{},
		deps:     map[relayP2cKey]map[relayC2pKey]bool{},
		adopted:  map[relayC2pKey]bool{},
		links:    map[int]xdpLink{},
		transmit: map[int]bool{},
		fastSets: fastSets,
		fastSeed: fastSeed,
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
		for name, m := range spec.Maps {
			// Not the global data (.rodata): it holds this load's
			// fast table seed.
			if !strings.HasPrefix(name, ".") {
				m.Pinning = ebpf.PinByName
			}
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
	if x.clock, err = newJiffyClock(x.objs.HrClock); err != nil {
		x.objs.Close()
		return nil, fmt.Errorf("load xdp: %w", err)
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
	if err := x.mapMeters(); err != nil {
		x.closeResolver()
		x.objs.Close()
		return nil, fmt.Errorf("load xdp: %w", err)
	}
	if err := x.rebuildIndex(); err != nil {
		x.closeResolver()
		x.unmapMeters()
		x.objs.Close()
		return nil, err
	}
	if err := x.openFastTables(); err != nil {
		x.closeResolver()
		x.unmapMeters()
		x.objs.Close()
		return nil, fmt.Errorf("load xdp: %w", err)
	}
	if err := x.applyPrefilterSetting(); err != nil {
		x.closeResolver()
		x.unmapMeters()
		x.closeFastTables()
		x.objs.Close()
		return nil, fmt.Errorf("load xdp: %w", err)
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
		pv.ExpiresJiffies = v.ExpiresJiffies
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
				if err := x.putC2p(ck, e.cv, ebpf.UpdateExist); err != nil {
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
	x.unmapMeters()
	x.closeFastTables()
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
			x.objs.Counters, x.objs.TxPorts, x.objs.Egress, x.objs.Meters, x.objs.Listeners, x.objs.FastC2p,
			x.objs.FastP2c} {
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
	relayMapCounters: true, relayMapTxPorts: true, relayMapEgress: true, relayMapMeters: true, relayMapListeners: true,
	relayMapFastC2p: true, relayMapFastP2c: true,
}

// linkPin is the pin path of the link on ifindex.
func (x *XDP) linkPin(ifindex int) string {
	return filepath.Join(x.pinDir, fmt.Sprintf("link_%d", ifindex))
}

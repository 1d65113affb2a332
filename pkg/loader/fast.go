package loader

// The fast tables (bpf/maps.h fast_c2p, fast_p2c): every entry of the two
// entry hash maps again, in mappable arrays of fastWays-way sets that the
// program looks up without calling into the kernel (bpf/lookup.h). The
// hash maps stay the complete record (dumps, re-adoption, the program's
// fallback); a fast table holds what fits.
//
// A way is written only while no program can be reading it: it is
// unpublished (gen 0) and a grace period has passed since, or it was never
// published. The program runs under RCU (XDP runs in NAPI with bottom
// halves off), and updating an element of a map-in-map waits for an RCU
// grace period before the syscall returns (the kernel's
// maybe_wait_bpf_programs, which its own selftests use for exactly this),
// so that update is the grace period; a goroutine waits for it in the
// background and frees the ways retired before it began (an entry whose
// set had no free way meanwhile waits in pending, in the hash map only,
// and is published then). Publishing is a release store of
// gen after the contents, and the program reads the contents through an
// address that depends on gen. The one write to a published way is an
// expiry refresh: the expiry words are stored atomically in place, and a
// packet sees the old or the new expiry.

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
)

// fastWays is HR_FAST_WAYS.
const fastWays = int(relayHrMapSizeHR_FAST_WAYS)

// fastKeyLen is the entry key size both tables share (bpf/lookup.h
// union hr_entry_key).
const fastKeyLen = 40

// fastWayState is what the control plane may do with a way.
type fastWayState uint8

const (
	wayFree    fastWayState = iota // writable: never published, or retired before a grace period
	wayUsed                        // published
	wayRetired                     // unpublished; a program may still read it until a grace period
)

// fastTable mirrors one entry map. The caller serialises every method
// (XDP.mu).
type fastTable struct {
	mem    []byte // the mapped array
	stride int    // bytes per way
	valOff int    // the value's offset in a way
	sets   uint32 // a power of two
	seed   uint64

	ways  map[[fastKeyLen]byte]uint32 // the published way of each key
	state []fastWayState
	// retired are the ways unpublished since the last grace period
	// began; pending the entries that found no free way, by key.
	retired []uint32
	pending map[[fastKeyLen]byte][]byte
	kick    func() // wakes the settler
}

// Offsets in a way (structs.h struct fast_c2p_way / fast_p2c_way).
const (
	fastGenOff = 0
	fastKeyOff = 8
)

// fastSets is the fast tables' set count for max channels: the array holds
// 2 x the next power of two ways.
func fastSets(max int) uint32 {
	n := uint32(1)
	for int(n) < max {
		n <<= 1
	}
	return n * 2 / uint32(fastWays)
}

// newFastSeed is the hash seed of one load.
func newFastSeed() (uint64, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, fmt.Errorf("fast table seed: %w", err)
	}
	return binary.NativeEndian.Uint64(b[:]), nil
}

// fastSet is the set of key, as hr_fast_set computes it.
func fastSet(key *[fastKeyLen]byte, seed uint64, sets uint32) uint32 {
	h := seed
	for i := 0; i < fastKeyLen/8; i++ {
		h = (h ^ binary.NativeEndian.Uint64(key[i*8:])) * 0x9E3779B97F4A7C15
	}
	return uint32(h>>32) & (sets - 1)
}

func (t *fastTable) way(w uint32) []byte {
	off := int(w) * t.stride
	return t.mem[off : off+t.stride]
}

func (t *fastTable) gen(w uint32) *uint32 {
	return (*uint32)(unsafe.Pointer(&t.way(w)[fastGenOff]))
}

// put publishes key with val, or refreshes its expiry in place. A key
// whose set is full is left to the hash map.
func (t *fastTable) put(key [fastKeyLen]byte, val []byte) error {
	if w, ok := t.ways[key]; ok {
		cur := t.way(w)[t.valOff:]
		// Both values start with the two expiry words (expires_jiffies,
		// expires_ns).
		if bytes.Equal(cur[16:len(val)], val[16:]) {
			v := t.way(w)[t.valOff:]
			atomic.StoreUint64((*uint64)(unsafe.Pointer(&v[0])), binary.NativeEndian.Uint64(val[0:]))
			atomic.StoreUint64((*uint64)(unsafe.Pointer(&v[8])), binary.NativeEndian.Uint64(val[8:]))
			return nil
		}
		t.retire(key, w)
	}
	w, ok := t.freeWay(&key)
	if !ok {
		t.pending[key] = bytes.Clone(val)
		return nil
	}
	delete(t.pending, key)
	b := t.way(w)
	copy(b[fastKeyOff:], key[:])
	copy(b[t.valOff:], val)
	atomic.StoreUint32(t.gen(w), 1)
	t.ways[key] = w
	t.state[w] = wayUsed
	return nil
}

// del unpublishes key.
func (t *fastTable) del(key [fastKeyLen]byte) {
	delete(t.pending, key)
	if w, ok := t.ways[key]; ok {
		t.retire(key, w)
	}
}

func (t *fastTable) retire(key [fastKeyLen]byte, w uint32) {
	atomic.StoreUint32(t.gen(w), 0)
	delete(t.ways, key)
	t.state[w] = wayRetired
	t.retired = append(t.retired, w)
	t.kick()
}

// freeWay is a writable way of key's set.
func (t *fastTable) freeWay(key *[fastKeyLen]byte) (uint32, bool) {
	base := fastSet(key, t.seed, t.sets) * uint32(fastWays)
	for i := uint32(0); i < uint32(fastWays); i++ {
		if t.state[base+i] == wayFree {
			return base + i, true
		}
	}
	return 0, false
}

// takeRetired hands the ways retired so far to a grace period.
func (t *fastTable) takeRetired() []uint32 {
	r := t.retired
	t.retired = nil
	return r
}

// release frees ways a grace period has passed since, and publishes the
// pending entries that fit now.
func (t *fastTable) release(ways []uint32) {
	for _, w := range ways {
		if t.state[w] == wayRetired {
			t.state[w] = wayFree
		}
	}
	for key, val := range t.pending {
		if _, ok := t.freeWay(&key); ok {
			_ = t.put(key, val)
		}
	}
}

// clearAll unpublishes every way (a re-adopted table was written under
// another seed); the caller waits for a grace period and releases them.
func (t *fastTable) clearAll() []uint32 {
	all := make([]uint32, len(t.state))
	for w := range t.state {
		atomic.StoreUint32(t.gen(uint32(w)), 0)
		t.state[w] = wayRetired
		all[w] = uint32(w)
	}
	clear(t.ways)
	return all
}

// len is the number of published ways.
func (t *fastTable) len() int { return len(t.ways) }

// graceMap is a one-slot map-in-map whose update is an RCU grace period.
type graceMap struct {
	outer, inner *ebpf.Map
}

func newGraceMap() (*graceMap, error) {
	innerSpec := &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}
	inner, err := ebpf.NewMap(innerSpec)
	if err != nil {
		return nil, fmt.Errorf("grace period map: %w", err)
	}
	outer, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ArrayOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: 1,
		InnerMap: innerSpec})
	if err != nil {
		inner.Close()
		return nil, fmt.Errorf("grace period map: %w", err)
	}
	return &graceMap{outer: outer, inner: inner}, nil
}

// wait returns after every program run that began before it has ended.
func (g *graceMap) wait() error {
	return g.outer.Put(uint32(0), g.inner)
}

func (g *graceMap) close() error {
	return errors.Join(g.outer.Close(), g.inner.Close())
}

// structBytes is v's memory: the bpf2go types have the kernel's layout.
func structBytes[T any](v *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))
}

// fastKey is an entry key as a fast table key.
func fastKey[T relayC2pKey | relayP2cKey](k *T) [fastKeyLen]byte {
	var b [fastKeyLen]byte
	copy(b[:], structBytes(k))
	return b
}

// openFastTables maps both fast tables, empties them (a table re-adopted
// from an earlier load was written under that load's seed), mirrors the
// entry maps into them and starts the settler.
func (x *XDP) openFastTables() error {
	g, err := newGraceMap()
	if err != nil {
		return err
	}
	var c2p relayFastC2pWay
	var p2c relayFastP2cWay
	fc, err := mapFastTable(x.objs.FastC2p, int(unsafe.Sizeof(c2p)), int(unsafe.Offsetof(c2p.Val)), x.fastSets, x.fastSeed)
	if err != nil {
		g.close()
		return err
	}
	fp, err := mapFastTable(x.objs.FastP2c, int(unsafe.Sizeof(p2c)), int(unsafe.Offsetof(p2c.Val)), x.fastSets, x.fastSeed)
	if err != nil {
		fc.unmap()
		g.close()
		return err
	}
	kick := make(chan struct{}, 1)
	wake := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	fc.kick, fp.kick = wake, wake
	rc, rp := fc.clearAll(), fp.clearAll()
	if err := g.wait(); err != nil {
		fc.unmap()
		fp.unmap()
		g.close()
		return fmt.Errorf("fast tables: wait for running programs: %w", err)
	}
	fc.takeRetired()
	fp.takeRetired()
	fc.release(rc)
	fp.release(rp)
	var ck relayC2pKey
	var cv relayC2pVal
	for it := x.objs.C2pChannels.Iterate(); it.Next(&ck, &cv); {
		x.mirror(fc.put(fastKey(&ck), structBytes(&cv)))
	}
	var pk relayP2cKey
	var pv relayP2cVal
	for it := x.objs.P2cChannels.Iterate(); it.Next(&pk, &pv); {
		x.mirror(fp.put(fastKey(&pk), structBytes(&pv)))
	}
	x.fastC2p, x.fastP2c = fc, fp
	x.stopSettle = make(chan struct{})
	go x.settle(g, kick, x.stopSettle)
	return nil
}

// settle frees retired ways once no program can be reading them: each
// round takes what was retired, waits for a grace period without the
// lock, and releases those ways. It owns g and closes it when stopped.
func (x *XDP) settle(g *graceMap, kick <-chan struct{}, stop <-chan struct{}) {
	defer g.close()
	for {
		select {
		case <-stop:
			return
		case <-kick:
		}
		x.mu.Lock()
		if x.fastC2p == nil {
			x.mu.Unlock()
			return
		}
		rc, rp := x.fastC2p.takeRetired(), x.fastP2c.takeRetired()
		x.mu.Unlock()
		err := g.wait()
		x.mu.Lock()
		if x.fastC2p == nil {
			x.mu.Unlock()
			return
		}
		if err != nil {
			// The ways stay retired (unpublished): never reused.
			x.log.Warn("xdp: fast table: wait for running programs", "err", err)
		} else {
			x.fastC2p.release(rc)
			x.fastP2c.release(rp)
		}
		x.mu.Unlock()
	}
}

// closeFastTables stops the settler and unmaps the tables (x.mu held).
func (x *XDP) closeFastTables() {
	if x.stopSettle != nil {
		close(x.stopSettle)
		x.stopSettle = nil
	}
	x.fastC2p.unmap()
	x.fastP2c.unmap()
	x.fastC2p, x.fastP2c = nil, nil
}

// mirror logs a failed fast table write. The entry is then in the hash map
// only (its way, if it had one, was unpublished first), which the program
// also asks: slower, never wrong.
func (x *XDP) mirror(err error) {
	if err != nil {
		x.log.Warn("xdp: fast table not updated; the entry is looked up in the hash map", "err", err)
	}
}

// The entry map writes: the hash map, then its fast table.

func (x *XDP) putC2p(k relayC2pKey, v relayC2pVal, flags ebpf.MapUpdateFlags) error {
	if err := x.objs.C2pChannels.Update(k, v, flags); err != nil {
		return err
	}
	if x.fastC2p != nil {
		x.mirror(x.fastC2p.put(fastKey(&k), structBytes(&v)))
	}
	return nil
}

func (x *XDP) putP2c(k relayP2cKey, v relayP2cVal, flags ebpf.MapUpdateFlags) error {
	if err := x.objs.P2cChannels.Update(k, v, flags); err != nil {
		return err
	}
	if x.fastP2c != nil {
		x.mirror(x.fastP2c.put(fastKey(&k), structBytes(&v)))
	}
	return nil
}

func (x *XDP) deleteC2p(k relayC2pKey) error {
	if x.fastC2p != nil {
		x.fastC2p.del(fastKey(&k))
	}
	return x.objs.C2pChannels.Delete(k)
}

func (x *XDP) deleteP2c(k relayP2cKey) error {
	if x.fastP2c != nil {
		x.fastP2c.del(fastKey(&k))
	}
	return x.objs.P2cChannels.Delete(k)
}

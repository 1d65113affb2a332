package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/hybridrelay/hybridrelay/internal/kchan"
)

// Bandwidth meters (bpf/meter.h): one per limited allocation, shared by
// both directions and every channel of it in the kernel, and by the
// userspace path through Meter.Allow, which runs the program's algorithm
// (GCRA) on the same mapped word. An allocation's bytes are thus counted
// against one budget whichever path carries them.

// ErrNoMeter is returned by AcquireMeter when every meter slot is in use.
var ErrNoMeter = errors.New("no free bandwidth meter")

// meterSize is the stride of the meters array as the kernel maps it
// (array_map: values rounded up to 8 bytes).
const meterSize = (int(unsafe.Sizeof(relayHrMeter{})) + 7) &^ 7

// Field offsets inside one meter (struct hr_meter).
var (
	offTat       = int(unsafe.Offsetof(relayHrMeter{}.TatNs))
	offPs        = int(unsafe.Offsetof(relayHrMeter{}.PsPerByte))
	offTau       = int(unsafe.Offsetof(relayHrMeter{}.TauNs))
	offDropPkts  = int(unsafe.Offsetof(relayHrMeter{}.DropPackets))
	offDropBytes = int(unsafe.Offsetof(relayHrMeter{}.DropBytes))
	offOwner     = int(unsafe.Offsetof(relayHrMeter{}.Owner))
)

// meterOwner identifies an allocation in a meter (hr_meter.owner).
type meterOwner [40]byte

func ownerOf(client, listener netip.AddrPort) meterOwner {
	var o meterOwner
	c, fam := addrBytes(client.Addr())
	l, _ := addrBytes(listener.Addr())
	copy(o[0:16], c[:])
	copy(o[16:32], l[:])
	binary.BigEndian.PutUint16(o[32:], client.Port())
	binary.BigEndian.PutUint16(o[34:], listener.Port())
	o[36] = fam
	return o
}

// gcraTake is hr_meter_take (bpf/meter.h) on the same state: a packet of
// inc nanoseconds' worth conforms when the theoretical arrival time is at
// most tau ahead of now, and then moves it to max(tat, now) + inc.
func gcraTake(tat *atomic.Uint64, now, inc, tau uint64) bool {
	for {
		t := tat.Load()
		base := max(t, now)
		if base-now > tau {
			return false
		}
		if tat.CompareAndSwap(t, base+inc) {
			return true
		}
	}
}

// meterParams converts a limit (bytes/s) and a burst (bytes) into the
// meter's picoseconds per byte and burst tolerance.
func meterParams(rate, burst uint64) (psPerByte, tauNs uint64) {
	psPerByte = max(1e12/max(rate, 1), 1)
	return psPerByte, burst * psPerByte / 1000
}

// meterTable hands out meter slots. Its mutex guards the fields below it;
// Meter.Allow takes no lock.
type meterTable struct {
	mem []byte // the mapped meters array, nil when it could not be mapped

	mu      sync.Mutex
	free    []uint32
	byOwner map[meterOwner]uint32
	adopted map[uint32]bool // found at Load, not acquired again yet
}

func (t *meterTable) word(slot uint32, off int) *atomic.Uint64 {
	return (*atomic.Uint64)(unsafe.Pointer(&t.mem[int(slot)*meterSize+off]))
}

func (t *meterTable) owner(slot uint32) (o meterOwner) {
	copy(o[:], t.mem[int(slot)*meterSize+offOwner:])
	return o
}

// init builds the free list and re-adopts the meters a previous process
// left in pinned maps (slot 0 is never used).
func (t *meterTable) init(entries int) {
	t.byOwner = map[meterOwner]uint32{}
	t.adopted = map[uint32]bool{}
	for s := entries - 1; s >= 1; s-- {
		if t.word(uint32(s), offPs).Load() != 0 {
			t.byOwner[t.owner(uint32(s))] = uint32(s)
			t.adopted[uint32(s)] = true
			continue
		}
		t.free = append(t.free, uint32(s))
	}
}

// Meter is one allocation's bandwidth meter.
type Meter struct {
	t     *meterTable
	slot  uint32
	owner meterOwner
	ps    uint64
	tau   uint64
}

// AcquireMeter returns the meter of the allocation (client, listener),
// limited to rate bytes/s with bursts of burst bytes: the one a previous
// process left (re-adopted, its state kept) or a new one.
func (x *XDP) AcquireMeter(client, listener netip.AddrPort, rate, burst uint64) (*Meter, error) {
	t := &x.meters
	if t.mem == nil {
		return nil, fmt.Errorf("acquire meter: %w", errReadOnly)
	}
	if rate == 0 {
		return nil, errors.New("acquire meter: zero rate")
	}
	o := ownerOf(client, listener)
	ps, tau := meterParams(rate, burst)
	t.mu.Lock()
	defer t.mu.Unlock()
	slot, ok := t.byOwner[o]
	switch {
	case ok && t.adopted[slot]:
		delete(t.adopted, slot)
	case ok:
		return nil, fmt.Errorf("acquire meter for %v: already acquired", client)
	case len(t.free) == 0:
		return nil, fmt.Errorf("acquire meter for %v: %w", client, ErrNoMeter)
	default:
		slot = t.free[len(t.free)-1]
		t.free = t.free[:len(t.free)-1]
		base := int(slot) * meterSize
		copy(t.mem[base+offOwner:base+offOwner+len(o)], o[:])
		t.word(slot, offTat).Store(0)
		t.word(slot, offDropPkts).Store(0)
		t.word(slot, offDropBytes).Store(0)
		t.byOwner[o] = slot
	}
	t.word(slot, offTau).Store(tau)
	t.word(slot, offPs).Store(ps) // last: a nonzero rate makes the slot live
	return &Meter{t: t, slot: slot, owner: o, ps: ps, tau: tau}, nil
}

// Slot is the meter's index, for Channel.Meter.
func (m *Meter) Slot() uint32 { return m.slot }

// Allow charges n bytes that the userspace path is about to relay and
// reports whether they conform; what does not is counted as dropped.
func (m *Meter) Allow(n int) bool {
	now, _ := monoNow()
	if gcraTake(m.t.word(m.slot, offTat), uint64(now), uint64(n)*m.ps/1000, m.tau) {
		return true
	}
	m.t.word(m.slot, offDropPkts).Add(1)
	m.t.word(m.slot, offDropBytes).Add(uint64(n))
	return false
}

// Drops returns what was dropped over the limit, by the program and by
// Allow together.
func (m *Meter) Drops() (packets, bytes uint64) {
	return m.t.word(m.slot, offDropPkts).Load(), m.t.word(m.slot, offDropBytes).Load()
}

// Release frees the meter. The allocation's channels must be gone from the
// kernel first: an entry still pointing at a freed slot passes its packets
// to userspace (pass_meter_busy) until the slot is reused.
func (m *Meter) Release() {
	t := m.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if s, ok := t.byOwner[m.owner]; !ok || s != m.slot {
		return
	}
	t.word(m.slot, offPs).Store(0)
	delete(t.byOwner, m.owner)
	t.free = append(t.free, m.slot)
}

// reconcileMeters frees the re-adopted meters no allocation acquired again.
func (t *meterTable) reconcile() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for slot := range t.adopted {
		t.word(slot, offPs).Store(0)
		delete(t.byOwner, t.owner(slot))
		t.free = append(t.free, slot)
		delete(t.adopted, slot)
	}
}

// Meter is AcquireMeter as the control plane asks for it (control.Metering):
// the allocation's meter behind the kchan.Meter interface.
func (x *XDP) Meter(client, listener netip.AddrPort, rate, burst uint64) (kchan.Meter, error) {
	m, err := x.AcquireMeter(client, listener, rate, burst)
	if err != nil {
		return nil, err // not a typed nil inside the interface
	}
	return m, nil
}

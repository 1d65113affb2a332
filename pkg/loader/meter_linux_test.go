package loader

import (
	"errors"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// TestMeterSharedByDirectionsAndUserspace: one allocation's meter limits
// both directions and all its channels in the kernel together, and the
// userspace path draws on the same budget. Over the limit the program
// drops (counted on the meter and globally); an unlimited channel is
// untouched; a limited allocation is not hairpinned in the kernel.
func TestMeterSharedByDirectionsAndUserspace(t *testing.T) {
	e := newProgEnv(t, 16)
	const rate, burst, size = 1000, 1000, 100 // bytes/s, bytes, data bytes per packet
	m, err := e.x.AcquireMeter(chV4.Client, chV4.Listener, rate, burst)
	if err != nil {
		t.Fatal(err)
	}
	a := chV4
	a.Meter, a.Expires = m.Slot(), hour()
	if err := e.x.PutChannel(a); err != nil {
		t.Fatal(err)
	}
	// A second channel of the same allocation, to another peer.
	a2 := a
	a2.Number, a2.Peer = 0x4030, ap("198.18.1.3:40030")
	if err := e.x.PutChannel(a2); err != nil {
		t.Fatal(err)
	}
	free := chTX
	free.Expires = hour()
	if err := e.x.PutChannel(free); err != nil {
		t.Fatal(err)
	}
	data := seq(size)
	run := func(frame []byte) uint32 {
		t.Helper()
		ret, _, err := e.run(e.x.Program(), frame, e.rc0)
		if err != nil {
			t.Fatal(err)
		}
		return ret
	}
	fwd := 0
	for i := 0; i < 50; i++ {
		if run(c2pIn(a, data, nil, nil)) == xdpDrop {
			break
		}
		fwd++
	}
	// GCRA at t=0: the burst's worth plus the packet that reaches it
	// (time passing during the loop adds a byte per millisecond).
	if fwd < burst/size || fwd > burst/size+2 {
		t.Fatalf("%d packets of %d bytes forwarded before the first drop, want about %d", fwd, size, burst/size+1)
	}
	if ret := run(c2pIn(a2, data, nil, nil)); ret != xdpDrop {
		t.Errorf("the allocation's other channel: return %d, want drop (one meter per allocation)", ret)
	}
	if ret := run(p2cIn(a, data, nil)); ret != xdpDrop {
		t.Errorf("peer -> client over the limit: return %d, want drop (both directions share the meter)", ret)
	}
	if m.Allow(size) {
		t.Error("userspace allowed a packet the kernel's meter refuses")
	}
	if ret := run(c2pIn(free, data, nil, nil)); ret != xdpTX && ret != xdpRedirect {
		t.Errorf("unlimited channel: return %d, want forwarded", ret)
	}
	c, err := e.x.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Get(DropBandwidthPackets); got != 3 {
		t.Errorf("drop_bandwidth_packets = %d, want 3", got)
	}
	if got := c.Get(DropBandwidthBytes); got != 3*size {
		t.Errorf("drop_bandwidth_bytes = %d, want %d", got, 3*size)
	}
	if pk, by := m.Drops(); pk != 4 || by != 4*size {
		t.Errorf("meter drops %d packets %d bytes, want 4 and %d (kernel and userspace)", pk, by, 4*size)
	}
	// The budget refills at the rate, for either path.
	time.Sleep(250 * time.Millisecond)
	if !m.Allow(size) {
		t.Error("userspace refused after 250 ms at 1000 B/s")
	}
	if ret := run(p2cIn(a, data, nil)); ret != xdpTX && ret != xdpRedirect {
		t.Errorf("peer -> client after the refill: return %d, want forwarded", ret)
	}

	// A limited allocation relays relay-to-relay through userspace.
	hm, err := e.x.AcquireMeter(chHpA.Client, chHpA.Listener, rate, burst)
	if err != nil {
		t.Fatal(err)
	}
	ha, hb := chHpA, chHpB
	ha.Meter, ha.Expires, hb.Expires = hm.Slot(), hour(), hour()
	for _, c := range []Channel{ha, hb} {
		if err := e.x.PutChannel(c); err != nil {
			t.Fatal(err)
		}
	}
	if ret := run(c2pIn(ha, data, nil, nil)); ret != xdpPass {
		t.Errorf("limited relay-to-relay: return %d, want pass (userspace meters both allocations)", ret)
	}

	// Release frees the slot; a full table says so.
	m.Release()
	hm.Release()
	var held []*Meter
	for {
		mm, err := e.x.AcquireMeter(netip.AddrPortFrom(netip.MustParseAddr("198.18.0.9"), uint16(1000+len(held))), chV4.Listener, rate, burst)
		if errors.Is(err, ErrNoMeter) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, mm)
	}
	if len(held) != 15 { // 16 slots, slot 0 never used
		t.Errorf("%d meters fit a table of 16, want 15", len(held))
	}
}

// TestGCRAConcurrent: the userspace algorithm admits the rate, not more,
// when several goroutines share a meter word.
func TestGCRAConcurrent(t *testing.T) {
	var tat atomic.Uint64
	ps, tau := meterParams(1_000_000, 10_000) // 1 MB/s, 10 kB burst
	inc := 1000 * ps / 1000                   // 1000-byte packets
	var admitted atomic.Int64
	now := uint64(1e12)
	done := make(chan struct{})
	for range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for range 1000 {
				if gcraTake(&tat, now, inc, tau) {
					admitted.Add(1)
				}
			}
		}()
	}
	for range 4 {
		<-done
	}
	// At one instant: the burst (10 packets) plus the one that reaches it.
	if got := admitted.Load(); got != 11 {
		t.Fatalf("%d packets admitted at one instant, want 11", got)
	}
}

// TestMeterReadopted: a restart (new process on the pinned maps) finds an
// allocation's meter with its state, so a client cannot reset its budget
// by waiting for a restart; a meter nobody claims is freed by Reconcile.
func TestMeterReadopted(t *testing.T) {
	e := newProgEnv(t, 16)
	dir := e.x.PinDir()
	// 100 bytes/s: the restart (which reads the clocks over ten ticks)
	// refills far less than the 100 bytes asked after it.
	m, err := e.x.AcquireMeter(chV4.Client, chV4.Listener, 100, 1000)
	if err != nil {
		t.Fatal(err)
	}
	for m.Allow(100) {
	}
	other, err := e.x.AcquireMeter(chV6.Client, chV6.Listener, 1000, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.x.Close(); err != nil {
		t.Fatal(err)
	}
	x2, err := Load(Options{MaxChannels: 16, PinDir: dir, NetNS: "/run/netns/" + e.ns.Name})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	e.x = x2
	t.Cleanup(func() { x2.Unpin(); x2.Close() })
	m2, err := x2.AcquireMeter(chV4.Client, chV4.Listener, 100, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if m2.Slot() != m.Slot() {
		t.Errorf("re-acquired slot %d, want the adopted %d", m2.Slot(), m.Slot())
	}
	if m2.Allow(100) {
		t.Error("the re-adopted meter's budget was reset by the restart")
	}
	if _, err := x2.Reconcile(); err != nil {
		t.Fatal(err)
	}
	// other's allocation did not come back: its slot is free again, and
	// acquiring it anew starts a fresh budget.
	m3, err := x2.AcquireMeter(chV6.Client, chV6.Listener, 1000, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if !m3.Allow(100) {
		t.Error("a meter acquired after Reconcile freed its stale slot has no budget")
	}
	_ = other
}

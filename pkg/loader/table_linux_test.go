package loader

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/kchan"
)

// TestTableBindUnbindUsage drives the control plane's view of the table
// (Bind, Unbind, Usage) on the real maps, with traffic counted by the
// program itself through BPF_PROG_RUN. The table has more slots than one
// batched read takes, so Usage needs several batches.
func TestTableBindUnbindUsage(t *testing.T) {
	e := newProgEnv(t, usageChunk+44)
	v4, v6 := kchan.Binding(chV4), kchan.Binding(chV6)
	v4.Expires, v6.Expires = hour(), hour()
	for _, b := range []kchan.Binding{v4, v6} {
		if err := e.x.Bind(b); err != nil {
			t.Fatalf("bind %#x: %v", b.Number, err)
		}
	}
	// Fill the table with idle channels up to the last slot, so the
	// counted channels' slots are not all in the first batch.
	var idle []kchan.Binding
	for i := 0; e.x.Len() < e.x.MaxChannels(); i++ {
		b := v4
		b.Client = netip.AddrPortFrom(b.Client.Addr(), uint16(10000+i))
		b.Number = uint16(0x5000 + i)
		if err := e.x.Bind(b); err != nil {
			t.Fatalf("bind idle %d: %v", i, err)
		}
		idle = append(idle, b)
	}
	if err := e.x.Bind(kchan.Binding(chV4DF)); !errors.Is(err, kchan.ErrFull) {
		t.Fatalf("bind into a full table: %v, want kchan.ErrFull", err)
	}
	// Free a slot at the low end and move v4 into the last one handed
	// out, far from the first batch.
	if _, err := e.x.Unbind(v4); err != nil {
		t.Fatal(err)
	}
	last := idle[len(idle)-1]
	if _, err := e.x.Unbind(last); err != nil {
		t.Fatal(err)
	}
	if err := e.x.Bind(v4); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if ret, _, err := e.run(e.x.Program(), c2pIn(chV4, seq(100), nil, nil), e.rc0); err != nil || ret != xdpRedirect {
			t.Fatalf("c2p: %d %v", ret, err)
		}
	}
	if ret, _, err := e.run(e.x.Program(), p2cIn(chV4, seq(33), nil), e.rp0); err != nil || ret != xdpRedirect {
		t.Fatalf("p2c: %d %v", ret, err)
	}
	want := kchan.Usage{ToPeerPackets: 3, ToPeerBytes: 300, ToClientPackets: 1, ToClientBytes: 33}

	snap, err := e.x.Usage()
	if err != nil {
		t.Fatal(err)
	}
	if len(snap) != e.x.Len() {
		t.Fatalf("snapshot of %d channels, %d installed", len(snap), e.x.Len())
	}
	if u, ok := snap.Of(v4); !ok || u != want {
		t.Fatalf("usage of the counted channel %+v (present %v), want %+v", u, ok, want)
	}
	if u, ok := snap.Of(v6); !ok || u != (kchan.Usage{}) {
		t.Fatalf("usage of an idle channel %+v (present %v)", u, ok)
	}
	if _, ok := snap.Of(last); ok {
		t.Fatal("an unbound channel is in the snapshot")
	}
	// The batched pass visits every slot once (this kernel has batch
	// operations on per-CPU arrays; the per-slot fallback is for older
	// ones).
	visited := map[uint32]int{}
	if err := e.x.batchUsage(func(slot uint32, _ kchan.Usage) { visited[slot]++ }); err != nil {
		t.Fatalf("batched usage read: %v", err)
	}
	if len(visited) != e.x.MaxChannels() {
		t.Fatalf("batched read visited %d slots of %d", len(visited), e.x.MaxChannels())
	}
	for slot, n := range visited {
		if n != 1 {
			t.Fatalf("slot %d visited %d times", slot, n)
		}
	}
	// The same numbers as a single-slot read.
	if one, err := e.x.ChannelCounters(chV4); err != nil || one != want {
		t.Fatalf("ChannelCounters %+v %v", one, err)
	}
	// A dual-stack socket's IPv4-mapped view of the client finds it too.
	mapped := v4
	mapped.Client = netip.AddrPortFrom(netip.AddrFrom16(v4.Client.Addr().As16()), v4.Client.Port())
	if u, ok := snap.Of(mapped); !ok || u != want {
		t.Fatalf("mapped client: %+v %v", u, ok)
	}

	// A later expiry with the same route moves the expiry in place and
	// keeps the counters.
	v4.Expires = hour().Add(time.Hour)
	if err := e.x.Bind(v4); err != nil {
		t.Fatal(err)
	}
	got := entryOf(t, e.x, v4.Number)
	if d := time.Duration(int64(got.ExpiresNs) - int64(MonotonicNanos(v4.Expires))); d < -time.Millisecond || d > time.Millisecond {
		t.Fatalf("expiry %v off after Bind", d)
	}
	if got.Usage != want {
		t.Fatalf("usage after an expiry move %+v", got.Usage)
	}
	// Another peer replaces the entry (both directions), keeping the slot.
	if got.Slot != uint32(e.x.MaxChannels()-1) {
		t.Fatalf("counted channel in slot %d, want the last one (%d)", got.Slot, e.x.MaxChannels()-1)
	}
	moved := v4
	moved.Peer = netip.MustParseAddrPort("198.18.1.3:40009")
	if err := e.x.Bind(moved); err != nil {
		t.Fatal(err)
	}
	if m := entryOf(t, e.x, v4.Number); m.Peer != moved.Peer || m.Slot != got.Slot || !m.PeerEntry || m.Usage != want {
		t.Fatalf("moved entry %+v, want peer %v in slot %d with its usage", m, moved.Peer, got.Slot)
	}
	// Deleted underneath (an operator): Bind installs it again.
	if err := e.x.DeleteChannel(Channel(moved)); err != nil {
		t.Fatal(err)
	}
	n := e.x.Len()
	if err := e.x.Bind(moved); err != nil {
		t.Fatalf("bind of a vanished channel: %v", err)
	}
	if e.x.Len() != n+1 {
		t.Fatalf("%d channels after re-bind, want %d", e.x.Len(), n+1)
	}

	// Unbind returns what the channel counted and frees it; again is a
	// no-op.
	if err := e.x.Bind(v6); err != nil {
		t.Fatal(err)
	}
	if ret, _, err := e.run(e.x.Program(), c2pIn(chV6, seq(50), nil, nil), e.rc0); err != nil || ret != xdpRedirect {
		t.Fatalf("c2p v6: %d %v", ret, err)
	}
	u, err := e.x.Unbind(v6)
	if err != nil || u != (kchan.Usage{ToPeerPackets: 1, ToPeerBytes: 50}) {
		t.Fatalf("unbind: %+v %v", u, err)
	}
	if u, err := e.x.Unbind(v6); err != nil || u != (kchan.Usage{}) {
		t.Fatalf("second unbind: %+v %v", u, err)
	}
	if snap, _ := e.x.Usage(); func() bool { _, ok := snap.Of(v6); return ok }() {
		t.Fatal("unbound channel still in the snapshot")
	}
	// A binding the program cannot forward.
	bad := v6
	bad.Relay = v4.Relay
	if _, err := e.x.Unbind(idle[0]); err != nil {
		t.Fatal(err)
	}
	if err := e.x.Bind(bad); !errors.Is(err, kchan.ErrUnsupported) {
		t.Fatalf("mixed families: %v, want kchan.ErrUnsupported", err)
	}
}

// TestUsageSlotChangesOwner: a slot that changes owner while its usage is
// being read (Usage does not hold the table's lock during the read) is
// left out, never reported with the previous owner's counts, even when
// the new owner is the same channel bound again; a channel that only moved
// its expiry stays in.
func TestUsageSlotChangesOwner(t *testing.T) {
	e := newProgEnv(t, 4)
	a, b, c := kchan.Binding(chV4), kchan.Binding(chV4DF), kchan.Binding(chV6)
	for _, ch := range []*kchan.Binding{&a, &b, &c} {
		ch.Expires = hour()
		if err := e.x.Bind(*ch); err != nil {
			t.Fatal(err)
		}
	}
	if ret, _, err := e.run(e.x.Program(), c2pIn(chV4, seq(100), nil, nil), e.rc0); err != nil || ret != xdpRedirect {
		t.Fatalf("c2p: %d %v", ret, err)
	}
	owners := e.x.slotOwners()
	read, err := e.x.readSlots(owners)
	if err != nil {
		t.Fatal(err)
	}
	// Meanwhile: a is unbound (its counts retired with it) and bound again
	// into the same slot, from zero; b only has its expiry moved; c is
	// unbound.
	if _, err := e.x.Unbind(a); err != nil {
		t.Fatal(err)
	}
	if err := e.x.Bind(a); err != nil {
		t.Fatal(err)
	}
	if owners2 := e.x.slotOwners(); len(owners2) != 3 {
		t.Fatalf("%d owners", len(owners2))
	}
	b.Expires = hour().Add(time.Hour)
	if err := e.x.Bind(b); err != nil {
		t.Fatal(err)
	}
	if _, err := e.x.Unbind(c); err != nil {
		t.Fatal(err)
	}
	snap := e.x.snapshotOf(owners, read)
	if _, ok := snap.Of(a); ok {
		t.Fatal("a re-bound channel got the counts of its previous binding")
	}
	if _, ok := snap.Of(c); ok {
		t.Fatal("an unbound channel is in the snapshot")
	}
	if _, ok := snap.Of(b); !ok || len(snap) != 1 {
		t.Fatalf("snapshot %v, want only the refreshed channel", snap)
	}
	// The next Usage sees a again, from zero.
	if u, ok := mustUsage(t, e.x).Of(a); !ok || u != (kchan.Usage{}) {
		t.Fatalf("re-bound channel: %+v %v", u, ok)
	}
}

// TestOpenPinnedReadOnly: the CLI's access to a daemon's pins sees the
// daemon's channels and usage and cannot change them.
func TestOpenPinnedReadOnly(t *testing.T) {
	e := newProgEnvPin(t, 8, true)
	b := kchan.Binding(chV4)
	b.Expires = hour()
	if err := e.x.Bind(b); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenPinned(t.TempDir()); !errors.Is(err, ErrNoPins) {
		t.Fatalf("empty directory: %v, want ErrNoPins", err)
	}
	r, err := OpenPinned(e.x.PinDir())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.MaxChannels() != 8 || r.Len() != 1 {
		t.Fatalf("pinned view: max %d, %d channels", r.MaxChannels(), r.Len())
	}
	if _, ok := mustUsage(t, r).Of(b); !ok {
		t.Fatal("pinned view's usage lacks the daemon's channel")
	}
	if err := r.Bind(kchan.Binding(chV6)); err == nil {
		t.Fatal("bind through the read-only view succeeded")
	}
	if _, err := r.Unbind(b); err == nil {
		t.Fatal("unbind through the read-only view succeeded")
	}
	if e.x.Len() != 1 {
		t.Fatal("the read-only view changed the table")
	}
}

func mustUsage(t *testing.T, x *XDP) kchan.Snapshot {
	t.Helper()
	s, err := x.Usage()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// entryOf reads channel number n back from the kernel map.
func entryOf(t *testing.T, x *XDP, n uint16) ChannelEntry {
	t.Helper()
	var found *ChannelEntry
	if err := x.IterateChannels(func(e ChannelEntry) bool {
		if e.Number == n {
			found = &e
			return false
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if found == nil {
		t.Fatalf("channel %#x not in the map", n)
	}
	return *found
}

// BenchmarkChannelUsage compares reading every channel's usage in one
// batched pass (Usage, what the control plane does per janitor tick and
// per stats call) with one lookup per channel (ChannelCounters for each,
// what it did before), on a full table of 1024 channels. Run with -count
// to alternate the two; compare medians.
func BenchmarkChannelUsage(b *testing.B) {
	e := newProgEnv(b, 1024)
	var all []kchan.Binding
	for i := 0; e.x.Len() < e.x.MaxChannels(); i++ {
		c := kchan.Binding(chV4)
		c.Client = netip.AddrPortFrom(c.Client.Addr(), uint16(10000+i))
		c.Number = uint16(0x4000 + i%0x3000)
		c.Expires = hour()
		if err := e.x.Bind(c); err != nil {
			b.Fatal(err)
		}
		all = append(all, c)
	}
	b.Run("snapshot", func(b *testing.B) {
		for b.Loop() {
			s, err := e.x.Usage()
			if err != nil || len(s) != len(all) {
				b.Fatalf("%d entries, %v", len(s), err)
			}
		}
	})
	b.Run("per-channel", func(b *testing.B) {
		for b.Loop() {
			for _, c := range all {
				if _, err := e.x.ChannelCounters(Channel(c)); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

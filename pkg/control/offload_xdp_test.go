//go:build linux

package control

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/privtest"
	"github.com/hybridrelay/hybridrelay/pkg/loader"
)

func xdpChannel(i int) ChannelBinding {
	return ChannelBinding{
		Client:   netip.MustParseAddrPort(fmt.Sprintf("198.18.0.1:%d", 50000+i)),
		Listener: netip.MustParseAddrPort("198.18.0.2:3478"),
		Relay:    netip.MustParseAddrPort(fmt.Sprintf("198.18.1.2:%d", 49152+i)),
		Peer:     netip.MustParseAddrPort("198.18.1.1:40000"),
		Number:   uint16(0x4000 + i),
		Expires:  time.Now().Add(time.Minute),
	}
}

// TestXDPOffloadLifecycle drives the real maps (pkg/loader's table)
// through the KernelChannels interface the control plane uses: install,
// refresh, usage, remove, a full table, and channels the program cannot
// forward.
func TestXDPOffloadLifecycle(t *testing.T) {
	privtest.Need(t)
	x, err := loader.Load(loader.Options{MaxChannels: 2, DisablePin: true})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	defer x.Close()
	var o KernelChannels = x

	a, b, c := xdpChannel(1), xdpChannel(2), xdpChannel(3)
	a.DontFragment = true
	for _, ch := range []ChannelBinding{a, b} {
		if err := o.Bind(ch); err != nil {
			t.Fatal(err)
		}
	}
	err = o.Bind(c)
	if !errors.Is(err, ErrOffloadFull) {
		t.Fatalf("third install into a 2-entry table: %v, want ErrOffloadFull", err)
	}
	cnt, err := x.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if got := cnt.Get(loader.PassMapFull); got != 1 {
		t.Fatalf("map full counted %d times, want 1", got)
	}

	// What the kernel holds round-trips to what was installed.
	seen := map[uint16]loader.ChannelEntry{}
	if err := x.IterateChannels(func(e loader.ChannelEntry) bool { seen[e.Number] = e; return true }); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 2 {
		t.Fatalf("%d channels in the map, want 2", len(seen))
	}
	ea := seen[a.Number]
	if ea.Client != a.Client || ea.Listener != a.Listener || ea.Relay != a.Relay || ea.Peer != a.Peer ||
		!ea.DontFragment || !ea.PeerEntry {
		t.Fatalf("entry %+v does not match %+v", ea, a)
	}
	if d := ea.Expires.Sub(a.Expires); d < -time.Millisecond || d > time.Millisecond {
		t.Fatalf("expiry read back %v off", d)
	}

	// A later expiry on the same route moves the expiry in place.
	a.Expires = a.Expires.Add(time.Hour)
	if err := o.Bind(a); err != nil {
		t.Fatal(err)
	}
	var after uint64
	x.IterateChannels(func(e loader.ChannelEntry) bool {
		if e.Number == a.Number {
			after = e.ExpiresNs
		}
		return true
	})
	if d := time.Duration(int64(after) - int64(loader.MonotonicNanos(a.Expires))); d < -time.Millisecond || d > time.Millisecond {
		t.Fatalf("refreshed expiry %v off", d)
	}
	snap, err := o.Usage()
	if err != nil {
		t.Fatal(err)
	}
	if u, ok := snap.Of(a); !ok || u != (ChannelUsage{}) {
		t.Fatalf("usage of an idle channel: %+v (present %v)", u, ok)
	}
	if len(snap) != 2 {
		t.Fatalf("usage of %d channels, want 2", len(snap))
	}

	// Unbind frees the slot; unbinding again is no error.
	if u, err := o.Unbind(a); err != nil || u != (ChannelUsage{}) {
		t.Fatalf("unbind: %+v %v", u, err)
	}
	if _, err := o.Unbind(a); err != nil {
		t.Fatalf("second unbind: %v", err)
	}
	if err := o.Bind(c); err != nil {
		t.Fatalf("install after remove: %v", err)
	}
	if snap, err := o.Usage(); err != nil {
		t.Fatal(err)
	} else if _, ok := snap.Of(a); ok {
		t.Fatal("usage lists a removed channel")
	}

	// Binding a channel that vanished from the maps installs it again.
	if err := x.DeleteChannel(loader.Channel{Client: b.Client, Listener: b.Listener, Number: b.Number}); err != nil {
		t.Fatal(err)
	}
	if err := o.Bind(b); err != nil {
		t.Fatalf("refresh of a vanished channel: %v", err)
	}
	if x.Len() != 2 {
		t.Fatalf("%d channels, want 2", x.Len())
	}

	// An IPv6 client with an IPv4 relay cannot be rewritten in place.
	mixed := xdpChannel(4)
	mixed.Client = netip.MustParseAddrPort("[2001:2::1]:5000")
	mixed.Listener = netip.MustParseAddrPort("[2001:2::2]:3478")
	if _, err := o.Unbind(b); err != nil {
		t.Fatal(err)
	}
	err = o.Bind(mixed)
	if err == nil || errors.Is(err, ErrOffloadFull) || !errors.Is(err, loader.ErrUnsupported) {
		t.Fatalf("mixed-family install: %v, want ErrUnsupported", err)
	}
	// IPv4-mapped client addresses (dual-stack sockets) are the IPv4 packet.
	mapped := xdpChannel(5)
	mapped.Client = netip.AddrPortFrom(netip.MustParseAddr("::ffff:198.18.0.1"), 50005)
	if err := o.Bind(mapped); err != nil {
		t.Fatalf("ipv4-mapped client: %v", err)
	}
	x.IterateChannels(func(e loader.ChannelEntry) bool {
		if e.Number == mapped.Number && !e.Client.Addr().Is4() {
			t.Errorf("client stored as %v, want plain IPv4", e.Client)
		}
		return true
	})
}

package loader

import (
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/internal/privtest"
)

// TestKeepaliveAppliesMissedNeighbour: a neighbour event can be missed by
// a slot. acquire (PutChannel's goroutine) looks the next hop up, asks the
// kernel to resolve it, and only then stores the slot's route; an answer
// whose event the watcher applies in between finds no slot with that next
// hop and changes nothing, and the slot is stored as unresolved. Nothing
// else would touch it before the 30 s resync: the neighbour is REACHABLE,
// so the keepalive does not solicit it, and no further event comes. The
// keepalive must bring the slot in line with what the kernel's neighbour
// table says, so a missed event costs at most one keepalive period.
func TestKeepaliveAppliesMissedNeighbour(t *testing.T) {
	privtest.Need(t, "ip")
	ns, err := netns.New("k")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Delete)
	for _, s := range [][]string{
		{"link", "add", "kx0", "type", "veth", "peer", "name", "kx1"},
		{"link", "set", "kx0", "up"},
		{"link", "set", "kx1", "up"},
		{"addr", "add", "198.18.1.2/24", "dev", "kx0"},
	} {
		if _, err := ns.IP(s...); err != nil {
			t.Fatal(err)
		}
	}
	idx, err := ns.Ifindex("kx0")
	if err != nil {
		t.Fatal(err)
	}
	r, err := newNetlinkResolver("/run/netns/"+ns.Name, slog.New(slog.NewTextHandler(io.Discard, nil)), func(int) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.close)
	var mu sync.Mutex
	written := map[uint32]relayEgressEntry{}
	tbl := newEgressTable(8, r, func(slot uint32, v relayEgressEntry) error {
		mu.Lock()
		defer mu.Unlock()
		written[slot] = v
		return nil
	})
	// Nobody answers on kx1: the slot is stored unresolved.
	dst, src := netip.MustParseAddr("198.18.1.1"), netip.MustParseAddr("198.18.1.2")
	slot, err := tbl.acquire(dst, src)
	if err != nil {
		t.Fatal(err)
	}
	if v := written[slot]; Counter(v.Pass) != PassNoNeigh {
		t.Fatalf("slot %d before the answer: %+v; want pass_no_neigh", slot, v)
	}
	// The answer arrives, and its event is the one the slot missed (no
	// watcher runs here).
	const mac = "02:00:00:00:0b:01"
	if _, err := ns.IP("neigh", "replace", dst.String(), "lladdr", mac, "dev", "kx0", "nud", "reachable"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * neighCacheTTL) // the keepalive runs a period later
	r.keepalive(tbl)
	mu.Lock()
	v := written[slot]
	mu.Unlock()
	if v.Pass != 0 || macStr(v.Dmac) != mac || int(v.Ifindex) != idx {
		t.Fatalf("slot %d after the keepalive: %+v; want usable, dmac %s on ifindex %d", slot, v, mac, idx)
	}
	// And the other way: the kernel says the next hop failed (an event
	// lost the same way), the slot must stop forwarding.
	if _, err := ns.IP("neigh", "replace", dst.String(), "dev", "kx0", "nud", "failed"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * neighCacheTTL)
	r.keepalive(tbl)
	mu.Lock()
	v = written[slot]
	mu.Unlock()
	if Counter(v.Pass) != PassNoNeigh {
		t.Fatalf("slot %d after the next hop failed: %+v; want pass_no_neigh", slot, v)
	}
}

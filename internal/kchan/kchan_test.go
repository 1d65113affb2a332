package kchan

import (
	"net/netip"
	"testing"
)

// TestKeyUnmaps: a dual-stack socket reports an IPv4 client as
// ::ffff:a.b.c.d; the kernel sees (and the loader stores) the IPv4
// address, so both must find the same entry.
func TestKeyUnmaps(t *testing.T) {
	mapped := Binding{
		Client:   netip.MustParseAddrPort("[::ffff:198.18.0.1]:5000"),
		Listener: netip.MustParseAddrPort("[::ffff:198.18.0.2]:3478"),
		Number:   0x4000,
	}
	plain := Binding{
		Client:   netip.MustParseAddrPort("198.18.0.1:5000"),
		Listener: netip.MustParseAddrPort("198.18.0.2:3478"),
		Number:   0x4000,
	}
	if mapped.Key() != plain.Key() {
		t.Fatalf("%v != %v", mapped.Key(), plain.Key())
	}
	s := Snapshot{plain.Key(): {ToPeerPackets: 3}}
	if u, ok := s.Of(mapped); !ok || u.ToPeerPackets != 3 {
		t.Fatalf("Of(mapped) = %+v %v", u, ok)
	}
	other := plain
	other.Number = 0x4001
	if _, ok := s.Of(other); ok {
		t.Fatal("another channel number found the entry")
	}
}

func TestUsageAdd(t *testing.T) {
	u := Usage{1, 10, 2, 20}
	u.Add(Usage{3, 30, 4, 40})
	if u != (Usage{4, 40, 6, 60}) || u.Packets() != 10 {
		t.Fatalf("%+v packets %d", u, u.Packets())
	}
}

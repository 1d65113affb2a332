package control

import (
	"net/netip"
	"testing"
	"time"
)

func tupleFrom(port uint16) fiveTuple {
	return fiveTuple{proto: tUDP,
		client: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), port),
		server: netip.MustParseAddrPort("198.18.0.2:3478")}
}

// TestTrustedTuples walks one 5-tuple through the states of its budget:
// unknown (the per-IP budget applies), proven (its own bucket, emptied
// only by itself), lapsed (back to the per-IP budget), and held by an
// allocation (trusted without a recent proof).
func TestTrustedTuples(t *testing.T) {
	now := time.Unix(1000, 0)
	tt := newTrustedTuples(1, 3, 1024)
	a, b := tupleFrom(4000), tupleFrom(4001)

	if _, trusted := tt.take(a, now, false); trusted {
		t.Fatal("an unknown 5-tuple is trusted")
	}
	tt.prove(a, now, now.Add(10*time.Second))
	for i := range 3 {
		if ok, trusted := tt.take(a, now, false); !ok || !trusted {
			t.Fatalf("proven 5-tuple, response %d: ok=%v trusted=%v", i, ok, trusted)
		}
	}
	if ok, trusted := tt.take(a, now, false); ok || !trusted {
		t.Fatalf("proven 5-tuple over its burst: ok=%v trusted=%v", ok, trusted)
	}
	// Its neighbour on the same IP is not affected either way.
	if _, trusted := tt.take(b, now, false); trusted {
		t.Fatal("another port of the same IP inherited the proof")
	}
	// The bucket refills at its rate.
	if ok, _ := tt.take(a, now.Add(time.Second), false); !ok {
		t.Fatal("no refill after 1 s at 1/s")
	}
	// A later proof extends, an earlier one does not shorten.
	tt.prove(a, now, now.Add(5*time.Second))
	if _, trusted := tt.take(a, now.Add(9*time.Second), false); !trusted {
		t.Fatal("an earlier proof shortened the trust")
	}
	// Lapsed: forgotten, and the per-IP budget applies again.
	if _, trusted := tt.take(a, now.Add(10*time.Second), false); trusted {
		t.Fatal("trusted after the nonce lifetime")
	}
	if n := tt.size(); n != 0 {
		t.Fatalf("%d entries after the proof lapsed", n)
	}
	// Holding an allocation is proof enough, without a recent check.
	if ok, trusted := tt.take(b, now, true); !ok || !trusted {
		t.Fatalf("5-tuple with an allocation: ok=%v trusted=%v", ok, trusted)
	}
	tt.prune(now.Add(time.Hour), func(ft fiveTuple) bool { return ft == b })
	if n := tt.size(); n != 1 {
		t.Fatalf("prune removed an allocation's budget: %d entries", n)
	}
	tt.prune(now.Add(time.Hour), func(fiveTuple) bool { return false })
	if n := tt.size(); n != 0 {
		t.Fatalf("prune kept %d entries without allocation or proof", n)
	}
}

// TestTrustedTuplesBounded checks that proofs beyond the bound are not
// remembered (those 5-tuples keep the per-IP budget) while allocations
// still get their budget.
func TestTrustedTuplesBounded(t *testing.T) {
	now := time.Unix(1000, 0)
	tt := newTrustedTuples(1, 1, 32)
	for p := range uint16(1000) {
		tt.prove(tupleFrom(5000+p), now, now.Add(time.Minute))
	}
	if n := tt.size(); n > 32 {
		t.Fatalf("%d proven 5-tuples remembered, bound 32", n)
	}
	held := tupleFrom(9)
	if ok, trusted := tt.take(held, now, true); !ok || !trusted {
		t.Fatalf("allocation refused its budget when the table is full: ok=%v trusted=%v", ok, trusted)
	}
}

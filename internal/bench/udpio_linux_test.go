//go:build linux

package bench

import (
	"testing"
	"time"
)

// TestWriteSegmentsPaths sends the same buffer with UDP_SEGMENT and through
// the sendmmsg fallback; the receiver must see the same datagrams either
// way, including a short last segment.
func TestWriteSegmentsPaths(t *testing.T) {
	for _, gso := range []bool{true, false} {
		rx := listen(t, "udp4", "127.0.0.1:0")
		tx := listen(t, "udp4", "127.0.0.1:0")
		rb, err := newBatchConn(rx, 64, 2048)
		if err != nil {
			t.Fatal(err)
		}
		tb, err := newBatchConn(tx, 1, 16)
		if err != nil {
			t.Fatal(err)
		}
		tb.gso = gso
		const seg, n = 100, 10
		buf := make([]byte, seg*n-37) // last segment 63 bytes
		for i := range buf {
			buf[i] = byte(i / seg)
		}
		sent, err := tb.WriteSegments(buf, seg, addrOf(rx))
		if err != nil || sent != n {
			t.Fatalf("gso=%v: sent %d, %v", gso, sent, err)
		}
		if gso && tb.Stats.GSOSends != 1 {
			t.Fatalf("no GSO send: %+v", tb.Stats)
		}
		if !gso && tb.Stats.MmsgSends == 0 {
			t.Fatalf("no sendmmsg: %+v", tb.Stats)
		}
		got := 0
		rx.SetReadDeadline(time.Now().Add(2 * time.Second))
		for got < n {
			dgs, err := rb.ReadBatch()
			if err != nil {
				t.Fatalf("gso=%v: read after %d: %v", gso, got, err)
			}
			for _, d := range dgs {
				want := seg
				if got == n-1 {
					want = seg - 37
				}
				if len(d.b) != want || d.b[0] != byte(got) || d.from != addrOf(tx) {
					t.Fatalf("gso=%v: datagram %d: %d bytes, first %d, from %v", gso, got, len(d.b), d.b[0], d.from)
				}
				got++
			}
		}
	}
}

// TestGROSplit checks that a receiver with UDP_GRO on gets back the
// datagrams of a GSO send one by one, whether or not the kernel coalesced
// them.
func TestGROSplit(t *testing.T) {
	rx := listen(t, "udp6", "[::1]:0")
	tx := listen(t, "udp6", "[::1]:0")
	rb, err := newBatchConn(rx, 4, 65536)
	if err != nil {
		t.Fatal(err)
	}
	if !rb.enableGRO() {
		t.Skip("UDP_GRO not supported")
	}
	tb, _ := newBatchConn(tx, 1, 16)
	buf := make([]byte, 64*500)
	for i := range buf {
		buf[i] = byte(i / 500)
	}
	if sent, err := tb.WriteSegments(buf, 500, addrOf(rx)); err != nil || sent != 64 {
		t.Fatalf("sent %d, %v", sent, err)
	}
	got := 0
	rx.SetReadDeadline(time.Now().Add(2 * time.Second))
	for got < 64 {
		dgs, err := rb.ReadBatch()
		if err != nil {
			t.Fatalf("read after %d: %v", got, err)
		}
		for _, d := range dgs {
			if len(d.b) != 500 || d.b[0] != byte(got) {
				t.Fatalf("datagram %d: %d bytes, first %d", got, len(d.b), d.b[0])
			}
			got++
		}
	}
	t.Logf("64 datagrams in %d read calls", rb.Stats.ReadCalls)
}

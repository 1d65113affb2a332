package dataplane

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

var (
	dstA  = netip.MustParseAddrPort("198.18.1.1:5000")
	dstB  = netip.MustParseAddrPort("198.18.1.1:5001")
	dst6  = netip.MustParseAddrPort("[2001:2::1]:5000")
	dst4m = netip.MustParseAddrPort("[::ffff:198.18.1.1]:5000")
)

// q is a compact record description for the tables: socket, destination,
// length; offsets are laid out back to back as the queue does.
type q struct {
	sock uint64
	dst  netip.AddrPort
	n    int32
}

func mkRecs(qs []q, gso bool) []txRec {
	recs := make([]txRec, len(qs))
	off := int32(0)
	for i, x := range qs {
		recs[i] = txRec{sock: x.sock, dst: x.dst, off: off, n: x.n, gso: gso}
		off += x.n
	}
	return recs
}

func rep(n int, x q) []q {
	out := make([]q, n)
	for i := range out {
		out[i] = x
	}
	return out
}

func cat(parts ...[]q) []q {
	var out []q
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// fmtOps renders a plan as "gso(0+3/100) mmsg(3+2)" for readable diffs.
func fmtOps(ops []sendOp) string {
	var b strings.Builder
	for i, op := range ops {
		if i > 0 {
			b.WriteByte(' ')
		}
		if op.kind == opGSO {
			fmt.Fprintf(&b, "gso(%d+%d/%d)", op.first, op.count, op.seg)
		} else {
			fmt.Fprintf(&b, "%s(%d+%d)", op.kind, op.first, op.count)
		}
	}
	return b.String()
}

func TestPlanSends(t *testing.T) {
	a100 := q{1, dstA, 100}
	tests := []struct {
		name  string
		in    []q
		noGSO bool
		want  string
	}{
		{"empty", nil, false, ""},
		{"one datagram", []q{a100}, false, "single(0+1)"},
		{"same size run", rep(3, a100), false, "gso(0+3/100)"},
		{"last shorter", []q{a100, a100, {1, dstA, 60}}, false, "gso(0+3/100)"},
		{"shorter ends the run", []q{a100, {1, dstA, 60}, a100}, false, "gso(0+2/100) single(2+1)"},
		{"larger starts a new run", []q{a100, {1, dstA, 120}, {1, dstA, 120}}, false, "single(0+1) gso(1+2/120)"},
		{"interleaved destinations keep order", []q{a100, {1, dstB, 100}, a100, {1, dstB, 100}}, false, "mmsg(0+4)"},
		{"two sockets", []q{a100, {1, dstB, 90}, {2, dstA, 100}}, false, "mmsg(0+2) single(2+1)"},
		{"run then the rest on the same socket", []q{a100, a100, {1, dstB, 50}, {1, dstA, 70}}, false, "gso(0+2/100) mmsg(2+2)"},
		{"gso off for the socket", rep(3, a100), true, "mmsg(0+3)"},
		{"64 segments at most", rep(70, a100), false, "gso(0+64/100) gso(64+6/100)"},
		{"65th alone", rep(65, a100), false, "gso(0+64/100) single(64+1)"},
		{"64 KiB at most", rep(50, q{1, dstA, 1400}), false, "gso(0+46/1400) gso(46+4/1400)"},
		{"segment above the IPv4 MTU budget", rep(3, q{1, dstA, 1473}), false, "mmsg(0+3)"},
		{"largest IPv4 segment", rep(3, q{1, dstA, 1472}), false, "gso(0+3/1472)"},
		{"IPv6 budget is 20 bytes smaller", rep(3, q{1, dst6, 1460}), false, "mmsg(0+3)"},
		{"largest IPv6 segment", rep(2, q{1, dst6, 1452}), false, "gso(0+2/1452)"},
		{"mapped IPv4 uses the IPv4 budget", rep(2, q{1, dst4m, 1460}), false, "gso(0+2/1460)"},
		{"empty datagrams never coalesce", rep(2, q{1, dstA, 0}), false, "mmsg(0+2)"},
		{"other socket between runs", cat(rep(2, a100), []q{{2, dstA, 100}}, rep(2, a100)), false, "gso(0+2/100) single(2+1) gso(3+2/100)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			recs := mkRecs(tt.in, !tt.noGSO)
			ops := planSends(recs, nil, defaultPlanLimits)
			if got := fmtOps(ops); got != tt.want {
				t.Fatalf("plan\n got %s\nwant %s", got, tt.want)
			}
			checkPlan(t, recs, ops, defaultPlanLimits)
		})
	}
}

func TestPlanSendsNonContiguous(t *testing.T) {
	recs := mkRecs(rep(3, q{1, dstA, 100}), true)
	recs[2].off += 8 // a gap in the arena: the run cannot be one iovec
	ops := planSends(recs, nil, defaultPlanLimits)
	if got, want := fmtOps(ops), "gso(0+2/100) single(2+1)"; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

// checkPlan asserts the invariants every plan must keep: each record sent
// exactly once, in order; an op touches one socket; a GSO op is one
// destination, equal sizes but a shorter last, within the limits, and
// contiguous in the arena.
func checkPlan(t testing.TB, recs []txRec, ops []sendOp, lim planLimits) {
	t.Helper()
	next := int32(0)
	for _, op := range ops {
		if op.first != next || op.count < 1 {
			t.Fatalf("op %v does not start at record %d", op, next)
		}
		next += op.count
		if int(next) > len(recs) {
			t.Fatalf("op %v past the end (%d records)", op, len(recs))
		}
		r0 := recs[op.first]
		total := 0
		for i := op.first; i < op.first+op.count; i++ {
			r := recs[i]
			if r.sock != r0.sock {
				t.Fatalf("op %v mixes sockets", op)
			}
			if op.kind != opGSO {
				continue
			}
			total += int(r.n)
			if r.dst != r0.dst || !r.gso || r.n <= 0 {
				t.Fatalf("gso op %v: record %d not eligible", op, i)
			}
			if r.n > op.seg || (r.n < op.seg && i != op.first+op.count-1) {
				t.Fatalf("gso op %v: record %d has size %d", op, i, r.n)
			}
			if i > op.first && r.off != recs[i-1].off+recs[i-1].n {
				t.Fatalf("gso op %v: record %d not contiguous", op, i)
			}
		}
		switch op.kind {
		case opGSO:
			if op.count < 2 || int(op.count) > lim.maxSegs || total > lim.maxBytes || op.seg > lim.maxSeg(r0.dst) {
				t.Fatalf("gso op %v over the limits (total %d)", op, total)
			}
		case opSingle:
			if op.count != 1 {
				t.Fatalf("single op %v", op)
			}
		case opMmsg:
			if op.count < 2 {
				t.Fatalf("mmsg op %v", op)
			}
		}
	}
	if int(next) != len(recs) {
		t.Fatalf("plan covers %d of %d records", next, len(recs))
	}
}

// FuzzPlanSends checks the plan invariants on arbitrary queues: each input
// byte pair is one record (socket, destination and size from its bits).
func FuzzPlanSends(f *testing.F) {
	f.Add([]byte{0, 100, 0, 100, 0, 100})
	f.Add([]byte{1, 255, 2, 3, 1, 255, 1, 255, 0, 0})
	f.Add(make([]byte, 300))
	f.Fuzz(func(t *testing.T, data []byte) {
		recs := make([]txRec, 0, len(data)/2)
		off := int32(0)
		dsts := []netip.AddrPort{dstA, dstB, dst6, dst4m}
		for i := 0; i+1 < len(data); i += 2 {
			c, s := data[i], data[i+1]
			n := int32(s) * 8 // 0..2040: around the segment limits
			recs = append(recs, txRec{sock: uint64(c & 1), dst: dsts[(c>>1)&3], off: off, n: n, gso: c&8 == 0})
			off += n
		}
		lim := defaultPlanLimits
		if len(data) > 0 && data[0]&16 != 0 {
			lim.maxSegs, lim.maxBytes = 3, 3000 // small limits reach the edges often
		}
		checkPlan(t, recs, planSends(recs, nil, lim), lim)
	})
}

func TestPlanSendsNoAllocs(t *testing.T) {
	recs := mkRecs(cat(rep(40, q{1, dstA, 120}), rep(10, q{1, dstB, 90}), rep(14, q{2, dst6, 1200})), true)
	ops := make([]sendOp, 0, len(recs))
	if n := testing.AllocsPerRun(100, func() { ops = planSends(recs, ops, defaultPlanLimits) }); n != 0 {
		t.Fatalf("planSends allocates %.1f times per call", n)
	}
}

func BenchmarkPlanSends(b *testing.B) {
	cases := []struct {
		name string
		in   []q
	}{
		{"one-flow-64x120", rep(64, q{1, dstA, 120})},
		{"alternating-64", func() []q {
			out := make([]q, 64)
			for i := range out {
				out[i] = q{1, []netip.AddrPort{dstA, dstB}[i%2], 120}
			}
			return out
		}()},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			recs := mkRecs(c.in, true)
			ops := make([]sendOp, 0, len(recs))
			b.ReportAllocs()
			for b.Loop() {
				ops = planSends(recs, ops, defaultPlanLimits)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(recs)), "ns/datagram")
		})
	}
}

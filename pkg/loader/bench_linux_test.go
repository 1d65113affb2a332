package loader

import (
	"fmt"
	"net/netip"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// progTestRunAttr is the BPF_PROG_TEST_RUN part of union bpf_attr. It is
// used directly because the kernel's own per-run duration (measured around
// the program only, without the syscall) is what the benchmarks report.
type progTestRunAttr struct {
	progFd      uint32
	retval      uint32
	dataSizeIn  uint32
	dataSizeOut uint32
	dataIn      uint64
	dataOut     uint64
	repeat      uint32
	duration    uint32
	ctxSizeIn   uint32
	ctxSizeOut  uint32
	ctxIn       uint64
	ctxOut      uint64
	flags       uint32
	cpu         uint32
	batchSize   uint32
	_           uint32
}

// kernelRun runs prog repeat times on data (ingress ifindex set) and
// returns the last return code and the kernel's average ns per run. The
// caller is inside the namespace.
func kernelRun(prog *ebpf.Program, data []byte, ingress int, repeat uint32) (uint32, uint32, error) {
	ctx := xdpMd{DataEnd: uint32(len(data)), IngressIfindex: uint32(ingress)}
	out := make([]byte, len(data)+512)
	attr := progTestRunAttr{
		progFd:      uint32(prog.FD()),
		dataSizeIn:  uint32(len(data)),
		dataSizeOut: uint32(len(out)),
		dataIn:      uint64(uintptr(unsafe.Pointer(&data[0]))),
		dataOut:     uint64(uintptr(unsafe.Pointer(&out[0]))),
		repeat:      repeat,
		ctxSizeIn:   uint32(unsafe.Sizeof(ctx)),
		ctxIn:       uint64(uintptr(unsafe.Pointer(&ctx))),
	}
	for {
		_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_TEST_RUN, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, 0, fmt.Errorf("bpf_prog_test_run: %w", errno)
		}
		return attr.retval, attr.duration, nil
	}
}

// nested wraps data in k ChannelData headers of channel ch: each c2p
// forward strips one, so k repeats of the program on one buffer are k
// real forwards (BPF_PROG_RUN does not reset the frame between repeats).
func nested(ch uint16, data []byte, k int) []byte {
	for i := 0; i < k; i++ {
		data = channelData(ch, data, nil)
	}
	return data
}

type benchPath struct {
	name    string
	frame   []byte
	ingress int
	repeat  uint32
	fwd     Counter // counter that must move by repeat per run; -1 for none
	pass    Counter
}

// benchPaths installs ping-pong entries so every repeat is the path it is
// named after: C->L is forwarded to R->P, and R->P (as a "client" of the
// second entry) back to C->L; for peer->client P->R becomes L->C and L->C
// (as a "peer") becomes P->R again. All four addresses have neighbours.
// The p->c repeats after the first also pay one failed c2p lookup (the
// payload then starts with a ChannelData header).
func benchPaths(b testing.TB, e *progEnv) []benchPath {
	const k = 32
	payload := seq(120)
	var paths []benchPath
	for _, fam := range []struct {
		name       string
		c, l, r, p string
	}{
		{"v4", "198.18.0.1", "198.18.0.3", "198.18.1.3", "198.18.1.1"},
		{"v6", "2001:2::1", "2001:2::3", "2001:2:0:1::3", "2001:2:0:1::1"},
	} {
		C := netip.AddrPortFrom(netip.MustParseAddr(fam.c), 50000)
		L := netip.AddrPortFrom(netip.MustParseAddr(fam.l), 3478)
		R := netip.AddrPortFrom(netip.MustParseAddr(fam.r), 49152)
		P := netip.AddrPortFrom(netip.MustParseAddr(fam.p), 40000)
		for _, c := range []Channel{
			{Client: C, Listener: L, Relay: R, Peer: P, Number: 0x4000},
			{Client: R, Listener: P, Relay: C, Peer: L, Number: 0x4000},
		} {
			c.Expires = hour()
			if err := e.x.PutChannel(c); err != nil {
				b.Fatal(err)
			}
		}
		c2p := frameSpec{dstMAC: macRC0, srcMAC: macCli, src: C, dst: L, payload: nested(0x4000, payload, k)}.build()
		p2c := frameSpec{dstMAC: macRP0, srcMAC: macPeer, src: P, dst: R, payload: payload}.build()
		miss := frameSpec{dstMAC: macRC0, srcMAC: macCli, src: C, dst: L, payload: channelData(0x4FFF, payload, nil)}.build()
		paths = append(paths,
			benchPath{"c2p-" + fam.name, c2p, e.rc0, k, FwdToPeerPackets, -1},
			benchPath{"p2c-" + fam.name, p2c, e.rc0, k, FwdToClientPackets, -1},
			benchPath{"miss-" + fam.name, miss, e.rc0, 1000, -1, PassNoEntry},
		)
	}
	return paths
}

// BenchmarkXDPProgRun reports the kernel's ns per packet for each path of
// the program (BPF_PROG_RUN repeat, 120-byte payloads) and, measured
// alternately in the same run, an XDP_PASS-only program on the same frame:
// ns/op is the path, pass-ns/op the baseline, x-pass their ratio.
//
//	go test -run '^$' -bench XDPProgRun -count 5 ./pkg/loader/
func BenchmarkXDPProgRun(b *testing.B) {
	e := newProgEnv(b, 64)
	for _, p := range benchPaths(b, e) {
		b.Run(p.name, func(b *testing.B) {
			var pathNs, passNs, runs, passRuns float64
			before, err := e.x.Counters()
			if err != nil {
				b.Fatal(err)
			}
			err = e.ns.Do(func() error {
				// Alternate the two programs in blocks of 8 runs: every
				// switch of program re-patches the kernel's XDP
				// dispatcher (slow, though outside the measured time).
				for i := 0; b.Loop(); i++ {
					prog, acc, n := e.x.Program(), &pathNs, &runs
					if i/8%2 == 1 {
						prog, acc, n = e.x.PassProgram(), &passNs, &passRuns
					}
					_, d, err := kernelRun(prog, p.frame, p.ingress, p.repeat)
					if err != nil {
						return err
					}
					*acc += float64(d)
					*n++
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			// Every repeat must have taken the path measured (a run
			// interrupted by a signal is restarted, so at least).
			after, err := e.x.Counters()
			if err != nil {
				b.Fatal(err)
			}
			want := uint64(runs) * uint64(p.repeat)
			var passes uint64
			for c := PassNoEntry; c <= PassOther; c++ {
				passes += after.Get(c) - before.Get(c)
			}
			if p.fwd >= 0 {
				if got := after.Get(p.fwd) - before.Get(p.fwd); got < want || passes != 0 {
					b.Fatalf("%s: %d forwards for %d repeats, %d passes", p.name, got, want, passes)
				}
			} else if got := after.Get(p.pass) - before.Get(p.pass); got < want || got != passes {
				b.Fatalf("%s: %d %s for %d repeats, %d passes", p.name, got, p.pass, want, passes)
			}
			if runs == 0 || passRuns == 0 {
				b.Skip("too few iterations for both programs; use -benchtime 16x or more")
			}
			b.ReportMetric(pathNs/runs, "ns/op")
			b.ReportMetric(passNs/passRuns, "pass-ns/op")
			b.ReportMetric((pathNs/runs)/(passNs/passRuns), "x-pass")
		})
	}
}

package dataplane

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hybridrelay/hybridrelay/pkg/dataplane/udpsys"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newGSO(t testing.TB, opts GSOOptions) *gsoDP {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	dp, err := NewGSO(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	return dp.(*gsoDP)
}

func needGSOFeatures(t testing.TB, gro bool) {
	t.Helper()
	f := DetectFeatures()
	if !f.UDPSegment || (gro && !f.UDPGRO) {
		t.Skipf("kernel %s lacks UDP offloads: %s", f.Kernel, f.Reason)
	}
}

func udpSock(t testing.TB, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func addrOf(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }

// datagram i of a test burst: its index, then a pattern, n bytes in all.
func datagram(i, n int) []byte {
	b := make([]byte, n)
	for j := range b {
		b[j] = byte(i*7 + j)
	}
	if n >= 2 {
		b[0], b[1] = byte(i>>8), byte(i)
	}
	return b
}

// readN reads n datagrams from c and checks each against want(i) in order.
func readN(t testing.TB, c *net.UDPConn, n int, from netip.AddrPort, want func(i int) []byte) {
	t.Helper()
	buf := make([]byte, 70000)
	for i := 0; i < n; i++ {
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		m, src, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("datagram %d of %d: %v", i, n, err)
		}
		if from.IsValid() && (src.Addr().Unmap() != from.Addr().Unmap() || src.Port() != from.Port()) {
			t.Fatalf("datagram %d from %v, want %v", i, src, from)
		}
		if w := want(i); !bytes.Equal(buf[:m], w) {
			t.Fatalf("datagram %d: got %d bytes %x..., want %d bytes %x...", i, m, buf[:min(m, 8)], len(w), w[:min(len(w), 8)])
		}
	}
}

// expectNothing asserts nothing arrives on c for a short while.
func expectNothing(t testing.TB, c *net.UDPConn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	buf := make([]byte, 2048)
	if n, src, err := c.ReadFromUDPAddrPort(buf); err == nil {
		t.Fatalf("unexpected datagram of %d bytes from %v", n, src)
	}
}

func TestGSOEchoAndStats(t *testing.T) {
	dp := newGSO(t, GSOOptions{})
	testEcho(t, dp)
	st := dp.Stats()
	if st.Datapath != "gso" || st.ReadCalls == 0 || st.ReadCalls > st.RxPackets {
		t.Fatalf("stats %+v", st)
	}
	var batches uint64
	for _, b := range st.BatchSizes {
		batches += b
	}
	if batches != st.ReadCalls {
		t.Fatalf("histogram holds %d batches, %d read calls", batches, st.ReadCalls)
	}
}

func TestGSORelayPortInUse(t *testing.T) {
	testRelayPortInUse(t, newGSO(t, GSOOptions{}))
}

// burstHandler answers a trigger datagram "N S" by sending N datagrams
// (datagram(i, S), the last one S/2 bytes) through tx on out (the conn the
// trigger came in on when out is nil) to the trigger's sender or to dst.
func burstHandler(out *Conn, dst netip.AddrPort) Handler {
	return func(tx Tx, c Conn, from netip.AddrPort, p []byte) {
		var n, size int
		if _, err := fmt.Sscanf(string(p), "%d %d", &n, &size); err != nil {
			return
		}
		to, via := from, c
		if dst.IsValid() {
			to = dst
		}
		if out != nil {
			via = *out
		}
		for i := 0; i < n; i++ {
			sz := size
			if i == n-1 {
				sz = size / 2
			}
			tx.Send(via, datagram(i, sz), to)
		}
	}
}

func burstWant(n, size int) func(int) []byte {
	return func(i int) []byte {
		if i == n-1 {
			return datagram(i, size/2)
		}
		return datagram(i, size)
	}
}

// TestGSOSendCoalesces: N same-size datagrams queued in one batch leave as
// ceil(N/64) UDP_SEGMENT sends and arrive as N separate datagrams with the
// right bytes — on the receiving socket's conn (reply) and on another conn
// (listener in, relay socket out: the client-to-peer shape).
func TestGSOSendCoalesces(t *testing.T) {
	needGSOFeatures(t, false)
	for _, fam := range []struct{ any, lo string }{{"127.0.0.1:0", "127.0.0.1"}, {"[::1]:0", "::1"}} {
		for _, tc := range []struct {
			n, size int
		}{{2, 100}, {20, 1200}, {64, 120}, {100, 500}} {
			for _, cross := range []bool{false, true} {
				name := fmt.Sprintf("%s/n=%d/size=%d/cross=%v", fam.lo, tc.n, tc.size, cross)
				t.Run(name, func(t *testing.T) {
					dp := newGSO(t, GSOOptions{})
					client := udpSock(t, fam.any)
					peer := udpSock(t, fam.any)
					var relay Conn
					var err error
					var out *Conn
					var dst netip.AddrPort
					from := netip.AddrPort{}
					if cross {
						relay, err = dp.OpenRelay(netip.MustParseAddrPort(fam.any), func(Tx, Conn, netip.AddrPort, []byte) {})
						if err != nil {
							t.Fatal(err)
						}
						out, dst = &relay, addrOf(peer)
					}
					lis, err := dp.Listen(netip.MustParseAddrPort(fam.any), burstHandler(out, dst))
					if err != nil {
						t.Fatal(err)
					}
					from = lis.LocalAddr()
					rx := client
					if cross {
						rx, from = peer, relay.LocalAddr()
					}
					if _, err := client.WriteToUDPAddrPort(fmt.Appendf(nil, "%d %d", tc.n, tc.size), lis.LocalAddr()); err != nil {
						t.Fatal(err)
					}
					readN(t, rx, tc.n, from, burstWant(tc.n, tc.size))
					// Counters are added after the send returns.
					waitFor(t, func() bool { return dp.Stats().TxPackets >= uint64(tc.n) })
					st := dp.Stats()
					wantSends := uint64((tc.n + 63) / 64)
					if st.TxGSOSends != wantSends || st.TxGSOSegments != uint64(tc.n) || st.TxPackets != uint64(tc.n) {
						t.Fatalf("gso sends %d segments %d packets %d, want %d/%d/%d", st.TxGSOSends, st.TxGSOSegments, st.TxPackets, wantSends, tc.n, tc.n)
					}
					if st.TxMmsgCalls != 0 || st.TxSingleSends != 0 || st.GSOFallbacks != 0 || st.TxErrors != 0 {
						t.Fatalf("unexpected send kinds: %+v", st)
					}
				})
			}
		}
	}
}

// TestGSOSendMixed: datagrams that must not coalesce (alternating
// destinations, sizes above the segment budget) leave through sendmmsg, in
// order per destination.
func TestGSOSendMixed(t *testing.T) {
	dp := newGSO(t, GSOOptions{})
	a := udpSock(t, "127.0.0.1:0")
	b := udpSock(t, "127.0.0.1:0")
	const n = 30
	lis, err := dp.Listen(netip.MustParseAddrPort("127.0.0.1:0"), func(tx Tx, c Conn, _ netip.AddrPort, _ []byte) {
		for i := 0; i < n; i++ {
			tx.Send(c, datagram(i, 2000+i), addrOf(a))
			tx.Send(c, datagram(i, 100), addrOf(b))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.WriteToUDPAddrPort([]byte("go"), lis.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	readN(t, a, n, lis.LocalAddr(), func(i int) []byte { return datagram(i, 2000+i) })
	readN(t, b, n, lis.LocalAddr(), func(i int) []byte { return datagram(i, 100) })
	waitFor(t, func() bool { return dp.Stats().TxPackets >= 2*n })
	st := dp.Stats()
	if st.TxMmsgPackets != 2*n || st.TxMmsgCalls == 0 || st.TxGSOSends != 0 || st.TxPackets != 2*n {
		t.Fatalf("stats %+v", st)
	}
}

// gsoCmsg is the control message a sender adds to sendmsg for UDP GSO.
func gsoCmsg(seg uint16) []byte {
	b := make([]byte, unix.CmsgSpace(2))
	udpsys.PutGSOCmsg(b, seg)
	return b
}

// TestGSOReceiveGRO: a sender on loopback sends N segments in one
// UDP_SEGMENT sendmsg; the kernel delivers the super-packet whole to a
// UDP_GRO socket, and the datapath must split it back into N datagrams.
func TestGSOReceiveGRO(t *testing.T) {
	needGSOFeatures(t, true)
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(addr, func(t *testing.T) {
			dp := newGSO(t, GSOOptions{})
			var mu sync.Mutex
			var got [][]byte
			lis, err := dp.Listen(netip.MustParseAddrPort(addr), func(_ Tx, _ Conn, _ netip.AddrPort, p []byte) {
				mu.Lock()
				got = append(got, bytes.Clone(p))
				mu.Unlock()
			})
			if err != nil {
				t.Fatal(err)
			}
			snd := udpSock(t, addr)
			const n, seg = 40, 1000
			var all []byte
			for i := 0; i < n; i++ {
				sz := seg
				if i == n-1 {
					sz = 333
				}
				all = append(all, datagram(i, sz)...)
			}
			if _, _, err := snd.WriteMsgUDPAddrPort(all, gsoCmsg(seg), lis.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(3 * time.Second)
			for {
				mu.Lock()
				k := len(got)
				mu.Unlock()
				if k >= n || time.Now().After(deadline) {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(got) != n {
				t.Fatalf("handler got %d datagrams, want %d", len(got), n)
			}
			for i, p := range got {
				want := datagram(i, seg)
				if i == n-1 {
					want = datagram(i, 333)
				}
				if !bytes.Equal(p, want) {
					t.Fatalf("datagram %d: %d bytes, want %d", i, len(p), len(want))
				}
			}
			st := dp.Stats()
			if st.RxGROReads == 0 || st.RxPackets != n {
				t.Fatalf("gro reads %d rx packets %d, want >0 and %d", st.RxGROReads, st.RxPackets, n)
			}
		})
	}
}

// TestGSOFallback forces the GSO send's result through the test hook and
// checks what happens to the batch and to the socket for each errno.
func TestGSOFallback(t *testing.T) {
	needGSOFeatures(t, false)
	tests := []struct {
		errno     syscall.Errno
		sticky    bool // the socket stops using GSO
		delivered bool // the batch is resent uncoalesced
	}{
		{unix.EINVAL, true, true},
		{unix.EIO, true, true},
		{unix.ENOPROTOOPT, true, true},
		{unix.EOPNOTSUPP, true, true},
		{unix.EMSGSIZE, false, true},
		{unix.ENOBUFS, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.errno.Error(), func(t *testing.T) {
			var logs bytes.Buffer
			var logMu sync.Mutex
			dp := newGSO(t, GSOOptions{Logger: slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &logMu}, nil))})
			var hookCalls atomic.Int32
			dp.testGSOErr = func() syscall.Errno { hookCalls.Add(1); return tt.errno }
			cl := udpSock(t, "127.0.0.1:0")
			lis, err := dp.Listen(netip.MustParseAddrPort("127.0.0.1:0"), burstHandler(nil, netip.AddrPort{}))
			if err != nil {
				t.Fatal(err)
			}
			const n, size = 10, 300
			for round := 1; round <= 2; round++ {
				if _, err := cl.WriteToUDPAddrPort(fmt.Appendf(nil, "%d %d", n, size), lis.LocalAddr()); err != nil {
					t.Fatal(err)
				}
				if tt.delivered {
					readN(t, cl, n, lis.LocalAddr(), burstWant(n, size))
				} else {
					expectNothing(t, cl)
				}
				waitFor(t, func() bool {
					st := dp.Stats()
					return st.RxPackets == uint64(round) && st.TxPackets+st.TxErrors == uint64(round*n)
				})
				st := dp.Stats()
				wantCalls, wantFallbacks := int32(round), uint64(0)
				if tt.sticky {
					wantCalls, wantFallbacks = 1, 1
				}
				if got := hookCalls.Load(); got != wantCalls {
					t.Fatalf("round %d: %d GSO send attempts, want %d", round, got, wantCalls)
				}
				if st.GSOFallbacks != wantFallbacks || st.TxGSOSends != 0 {
					t.Fatalf("round %d: fallbacks %d gso sends %d", round, st.GSOFallbacks, st.TxGSOSends)
				}
				if tt.delivered && (st.TxMmsgPackets != uint64(round*n) || st.TxPackets != uint64(round*n)) {
					t.Fatalf("round %d: mmsg packets %d, tx %d, want %d", round, st.TxMmsgPackets, st.TxPackets, round*n)
				}
				if !tt.delivered && st.TxErrors != uint64(round*n) {
					t.Fatalf("round %d: tx errors %d, want %d", round, st.TxErrors, round*n)
				}
			}
			logMu.Lock()
			warns := strings.Count(logs.String(), "level=WARN msg=\"gso datapath: UDP_SEGMENT send failed")
			logMu.Unlock()
			if want := map[bool]int{true: 1, false: 0}[tt.sticky]; warns != want {
				t.Fatalf("%d fallback warnings, want %d:\n%s", warns, want, logs.String())
			}
		})
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestGSOCloseWhileQueued: datagrams queued for a relay socket that is
// closed before the flush are dropped and counted, and never leave through
// a socket opened in the meantime (which may reuse the fd number).
func TestGSOCloseWhileQueued(t *testing.T) {
	dp := newGSO(t, GSOOptions{})
	peer := udpSock(t, "127.0.0.1:0")
	nop := func(Tx, Conn, netip.AddrPort, []byte) {}
	relay, err := dp.OpenRelay(netip.MustParseAddrPort("127.0.0.1:0"), nop)
	if err != nil {
		t.Fatal(err)
	}
	var reopenErr error
	lis, err := dp.Listen(netip.MustParseAddrPort("127.0.0.1:0"), func(tx Tx, _ Conn, _ netip.AddrPort, _ []byte) {
		for i := 0; i < 5; i++ {
			tx.Send(relay, datagram(i, 100), addrOf(peer))
		}
		relay.Close()
		_, reopenErr = dp.OpenRelay(netip.MustParseAddrPort("127.0.0.1:0"), nop)
	})
	if err != nil {
		t.Fatal(err)
	}
	cl := udpSock(t, "127.0.0.1:0")
	if _, err := cl.WriteToUDPAddrPort([]byte("x"), lis.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return dp.Stats().Drops == 5 })
	if reopenErr != nil {
		t.Fatal(reopenErr)
	}
	expectNothing(t, peer)
	if st := dp.Stats(); st.TxPackets != 0 || st.TxErrors != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestGSOKernelDrops overflows a small receive queue while the handler is
// blocked and expects the SO_RXQ_OVFL counter in the stats.
func TestGSOKernelDrops(t *testing.T) {
	dp := newGSO(t, GSOOptions{SocketBuffer: 1}) // the kernel raises it to its minimum
	release := make(chan struct{})
	var blocked atomic.Bool
	lis, err := dp.Listen(netip.MustParseAddrPort("127.0.0.1:0"), func(_ Tx, _ Conn, _ netip.AddrPort, _ []byte) {
		if blocked.CompareAndSwap(false, true) {
			<-release
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	cl := udpSock(t, "127.0.0.1:0")
	msg := make([]byte, 1000)
	for i := 0; i < 300; i++ {
		if _, err := cl.WriteToUDPAddrPort(msg, lis.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			waitFor(t, blocked.Load)
		}
	}
	close(release)
	// The drop count travels on datagrams queued after the drops: send
	// them one at a time into a drained queue.
	for i := 0; i < 5; i++ {
		prev := dp.Stats().RxPackets
		if _, err := cl.WriteToUDPAddrPort(msg, lis.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return dp.Stats().RxPackets > prev })
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		st := dp.Stats()
		// With a queue-delay bound, what queued behind the blocked
		// handler for longer is dropped as stale, not received.
		if st.RxKernelDrops > 0 && st.RxPackets+st.RxKernelDrops+st.RxStaleDrops == 305 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("received %d + dropped %d + stale %d, want 305 with drops", st.RxPackets, st.RxKernelDrops, st.RxStaleDrops)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestGSOReusePortLoops: a listener with two loops spreads flows over both
// SO_REUSEPORT sockets, and LoopStats add up to Stats.
func TestGSOReusePortLoops(t *testing.T) {
	dp := newGSO(t, GSOOptions{Loops: 2})
	testEchoFlows(t, dp, 32)
	loops := dp.LoopStats()
	if len(loops) != 2 {
		t.Fatalf("%d loops", len(loops))
	}
	var sum Stats
	for i, l := range loops {
		if l.RxPackets == 0 {
			t.Fatalf("loop %d received nothing: flows not spread", i)
		}
		sum.Add(l)
	}
	st := dp.Stats()
	sum.Datapath, sum.Loops = st.Datapath, st.Loops
	if sum != st {
		t.Fatalf("loop sum %+v\n!= stats %+v", sum, st)
	}
}

// testEchoFlows echoes one datagram from each of flows client sockets.
func testEchoFlows(t *testing.T, dp Datapath, flows int) {
	t.Helper()
	lis, err := dp.Listen(netip.MustParseAddrPort("127.0.0.1:0"), func(tx Tx, c Conn, from netip.AddrPort, p []byte) {
		tx.Send(c, p, from)
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < flows; i++ {
		cl := udpSock(t, "127.0.0.1:0")
		if _, err := cl.WriteToUDPAddrPort(datagram(i, 50), lis.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		readN(t, cl, 1, lis.LocalAddr(), func(int) []byte { return datagram(i, 50) })
	}
}

func TestDetectFeatures(t *testing.T) {
	f := DetectFeatures()
	if f.Kernel == "" {
		t.Fatal("no kernel release")
	}
	if (!f.UDPSegment || !f.UDPGRO) && f.Reason == "" {
		t.Fatalf("feature missing without a reason: %+v", f)
	}
	if f.UDPSegment && f.UDPGRO && f.Reason != "" {
		t.Fatalf("reason without a missing feature: %+v", f)
	}
	t.Logf("%+v", f)
}

// TestGSOSendPathNoAllocs measures the whole queue + plan + flush path on a
// real socket: Send copies into the arena and a flush issues the system
// calls, with no allocation per datagram or per batch.
func TestGSOSendPathNoAllocs(t *testing.T) {
	dp := newGSO(t, GSOOptions{})
	sink := udpSock(t, "127.0.0.1:0") // never read: the kernel drops when full
	sink2 := udpSock(t, "127.0.0.1:0")
	relay, err := dp.OpenRelay(netip.MustParseAddrPort("127.0.0.1:0"), func(Tx, Conn, netip.AddrPort, []byte) {})
	if err != nil {
		t.Fatal(err)
	}
	st := dp.getState(relay.(*gsoConn).socks[0], true)
	defer dp.putState(st)
	p := make([]byte, 120)
	big := make([]byte, 1400)
	for _, tc := range []struct {
		name string
		fn   func()
	}{
		{"gso run", func() {
			for i := 0; i < 64; i++ {
				st.Send(relay, p, addrOf(sink))
			}
			st.flush()
		}},
		{"mmsg", func() {
			for i := 0; i < 64; i++ {
				st.Send(relay, p, []netip.AddrPort{addrOf(sink), addrOf(sink2)}[i%2])
			}
			st.flush()
		}},
		{"mixed and queue overflow", func() {
			for i := 0; i < 600; i++ {
				st.Send(relay, big[:1400-i%3], addrOf(sink))
			}
			st.flush()
		}},
	} {
		before := dp.Stats().TxPackets
		if n := testing.AllocsPerRun(50, tc.fn); n != 0 {
			t.Errorf("%s: %.1f allocations per batch", tc.name, n)
		}
		if dp.Stats().TxPackets == before {
			t.Errorf("%s: nothing sent", tc.name)
		}
	}
}

// TestGSOLoopNoAllocs measures the receive loop end to end: datagrams read
// by recvmmsg, handed to the handler, echoed through Tx and flushed.
func TestGSOLoopNoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	dp := newGSO(t, GSOOptions{Loops: 1})
	var handled atomic.Int64
	lis, err := dp.Listen(netip.MustParseAddrPort("127.0.0.1:0"), func(tx Tx, c Conn, from netip.AddrPort, p []byte) {
		tx.Send(c, p, from)
		handled.Add(1)
	})
	if err != nil {
		t.Fatal(err)
	}
	cl := udpSock(t, "127.0.0.1:0")
	msg := make([]byte, 200)
	buf := make([]byte, 2048)
	dst := lis.LocalAddr()
	round := func() {
		for i := 0; i < 32; i++ {
			cl.WriteToUDPAddrPort(msg, dst)
		}
		for i := 0; i < 32; i++ {
			cl.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, _, err := cl.ReadFromUDPAddrPort(buf); err != nil {
				t.Fatal(err)
			}
		}
	}
	round() // warm up: batch state, netpoller
	if n := testing.AllocsPerRun(20, round); n > 0 {
		t.Fatalf("%.1f allocations per 32-datagram round trip", n)
	}
	if handled.Load() != 22*32 { // warm-up, AllocsPerRun's own warm-up, 20 runs
		t.Fatalf("handled %d", handled.Load())
	}
}

// TestGSOSendEdgeCases: an empty datagram is sent (as with plain), an
// unreachable family is counted as an error without stopping the rest of
// the batch, and a Conn of another datapath is written directly.
func TestGSOSendEdgeCases(t *testing.T) {
	dp := newGSO(t, GSOOptions{})
	other := NewPlain()
	defer other.Close()
	rx := udpSock(t, "127.0.0.1:0")
	foreign, err := other.OpenRelay(netip.MustParseAddrPort("127.0.0.1:0"), func(Tx, Conn, netip.AddrPort, []byte) {})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := dp.Listen(netip.MustParseAddrPort("127.0.0.1:0"), func(tx Tx, c Conn, _ netip.AddrPort, _ []byte) {
		tx.Send(c, nil, addrOf(rx))                                        // empty
		tx.Send(c, []byte("v6"), netip.MustParseAddrPort("[2001:2::1]:9")) // IPv4 socket: error
		tx.Send(c, []byte("after"), addrOf(rx))
		tx.Send(foreign, []byte("foreign"), addrOf(rx))
	})
	if err != nil {
		t.Fatal(err)
	}
	cl := udpSock(t, "127.0.0.1:0")
	if _, err := cl.WriteToUDPAddrPort([]byte("go"), lis.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	// The foreign conn writes at once, the queued ones leave at the flush.
	got := map[string]bool{}
	buf := make([]byte, 64)
	for i := 0; i < 3; i++ {
		rx.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, _, err := rx.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		got[string(buf[:n])] = true
	}
	if !got[""] || !got["after"] || !got["foreign"] {
		t.Fatalf("got %v", got)
	}
	waitFor(t, func() bool { st := dp.Stats(); return st.TxPackets == 2 && st.TxErrors == 1 })
	if st := other.Stats(); st.TxPackets != 1 {
		t.Fatalf("foreign datapath sent %d", st.TxPackets)
	}
}

// TestGSOStateTiers: a woken socket reads with a small state; a read that
// fills it moves the socket to a large one; a parked socket holds none.
func TestGSOStateTiers(t *testing.T) {
	dp := newGSO(t, GSOOptions{Loops: 1})
	release := make(chan struct{})
	var first atomic.Bool
	var handled atomic.Int64
	lis, err := dp.Listen(netip.MustParseAddrPort("127.0.0.1:0"), func(_ Tx, _ Conn, _ netip.AddrPort, _ []byte) {
		if first.CompareAndSwap(false, true) {
			<-release
		}
		handled.Add(1)
	})
	if err != nil {
		t.Fatal(err)
	}
	cl := udpSock(t, "127.0.0.1:0")
	const n = 1 + 4 + 40
	for i := 0; i < n; i++ {
		if _, err := cl.WriteToUDPAddrPort([]byte("x"), lis.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			waitFor(t, first.Load)
		}
	}
	close(release)
	waitFor(t, func() bool { return handled.Load() == n && dp.Stats().RxPackets == n })
	st := dp.Stats()
	// 1 (the blocked read), 4 (a full small read), then up to 40 in a
	// large batch: some read must have returned more than 4.
	large := uint64(0)
	for i, b := range BatchHistogramBuckets {
		if b > smallBatch {
			large += st.BatchSizes[i]
		}
	}
	if large == 0 {
		t.Fatalf("no read above %d datagrams: %v", smallBatch, st.BatchSizes)
	}
	waitFor(t, func() bool { return dp.largeInUse.Load() == 0 })
}

package xdpe2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/internal/testutil"
	"github.com/hybridrelay/hybridrelay/internal/turnproto"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
	"github.com/hybridrelay/hybridrelay/pkg/loader"
)

// The flood helper's environment: where to send, from which address, for
// how long and how many datagrams at most.
const (
	envFloodTo    = "HYBRIDRELAY_TEST_FLOOD_TO"
	envFloodFrom  = "HYBRIDRELAY_TEST_FLOOD_FROM"
	envFloodFor   = "HYBRIDRELAY_TEST_FLOOD_FOR"
	envFloodCount = "HYBRIDRELAY_TEST_FLOOD_MAX"
)

// TestFloodHelper is not a test: TestPrefilterFlood runs this test binary
// again with it selected inside the client namespace, so the flood's CPU is
// another process's and the relay process's own CPU can be measured. It
// sends random datagrams (1 to 300 random bytes) and prints how many it
// sent and how many of them the server would handle by their framing.
func TestFloodHelper(t *testing.T) {
	to := os.Getenv(envFloodTo)
	if to == "" {
		t.Skip("helper process of TestPrefilterFlood")
	}
	dst := netip.MustParseAddrPort(to)
	from := netip.MustParseAddr(os.Getenv(envFloodFrom))
	d, err := time.ParseDuration(os.Getenv(envFloodFor))
	if err != nil {
		t.Fatal(err)
	}
	limit, err := strconv.Atoi(os.Getenv(envFloodCount))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(from, 0)), net.UDPAddrFromAddrPort(dst))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	buf := make([]byte, 300)
	sent, handled := 0, 0
	end := time.Now().Add(d)
	for sent < limit && (sent%256 != 0 || time.Now().Before(end)) {
		b := buf[:1+rng.IntN(len(buf))]
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		if _, err := conn.Write(b); err != nil {
			continue // ECONNREFUSED from an ICMP error; keep going
		}
		sent++
		if turnproto.ClassifyDatagram(b).Handled() {
			handled++
		}
	}
	fmt.Printf("flood sent=%d handled=%d\n", sent, handled)
}

// flood runs TestFloodHelper in the client namespace toward the listener
// for d and returns what it sent and how many of those the server would
// handle.
func flood(t *testing.T, e *env, d time.Duration) (sent, handled int) {
	t.Helper()
	cmd := e.topo.Client.Exec(os.Args[0], "-test.run=^TestFloodHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), envFloodTo+"="+e.listener().String(), envFloodFrom+"="+e.clientIP().String(),
		envFloodFor+"="+d.String(), envFloodCount+"=5000000")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("flood helper: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if _, err := fmt.Sscanf(line, "flood sent=%d handled=%d", &sent, &handled); err == nil {
			return sent, handled
		}
	}
	t.Fatalf("flood helper printed no count:\n%s", out)
	return 0, 0
}

func prefilterDrops(c loader.Counters) uint64 {
	return c.Get(loader.DropPrefilterShort) + c.Get(loader.DropPrefilterNotTURN) +
		c.Get(loader.DropPrefilterSTUNLength) + c.Get(loader.DropPrefilterChannelDataLength)
}

// selfCPU is this process's user + system CPU time so far: the relay's
// (the server runs in the test process; the flood is a child process,
// counted in RUSAGE_CHILDREN only).
func selfCPU(t *testing.T) time.Duration {
	t.Helper()
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestPrefilterFlood: a flood of random bytes at the listener is dropped in
// the kernel (the drop_prefilter_* counters take it, userspace sees none of
// it) while a legitimate client's Binding requests are answered and its
// channel keeps relaying through the kernel in both directions. Then the
// relay process's CPU during the same flood is measured with the
// pre-filter on and off, alternated, three windows each, and the medians
// are reported (the pre-filter must at least halve it).
func TestPrefilterFlood(t *testing.T) {
	dp, err := dataplane.NewGSO(dataplane.GSOOptions{Loops: 1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvDP(t, netns.Variants()[0].Options, false, 64, dp, nil)
	x := e.path.X
	if err := x.SetPrefilter(true); err != nil {
		t.Fatal(err)
	}
	if err := x.SetListeners([]netip.AddrPort{e.listener()}); err != nil {
		t.Fatal(err)
	}
	rc := newRaw(t, e, user, pass)
	pr := newPeer(t, e, 40000)
	rc.bind(t, 0x4000, pr.addr())
	testutil.WaitFor(t, 3*time.Second, "channel in the kernel", func() bool { return offloadedChannels(e.srv) == 1 })
	roundTrip(t, rc, 0x4000, pr, "before the flood")

	malformed := func() uint64 { return e.srv.Stats().Drops["malformed"] }
	before, mal0 := counters(t, x), malformed()
	type result struct{ sent, handled int }
	done := make(chan result, 1)
	go func() {
		s, h := flood(t, e, 2*time.Second)
		done <- result{s, h}
	}()
	// The legitimate client, during the flood.
	rounds := 0
	var res result
wait:
	for {
		select {
		case res = <-done:
			break wait
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		if _, err := rc.Binding(ctx); err != nil {
			cancel()
			t.Fatalf("binding during the flood: %v", err)
		}
		cancel()
		roundTrip(t, rc, 0x4000, pr, fmt.Sprintf("during the flood %d", rounds))
		rounds++
		time.Sleep(50 * time.Millisecond)
	}
	after := counters(t, x)
	dropped := prefilterDrops(after) - prefilterDrops(before)
	junk := uint64(res.sent - res.handled)
	t.Logf("flood: %d datagrams sent (%d STUN/ChannelData-shaped), %d dropped in the kernel (%v), %d rounds of Binding + channel round trip",
		res.sent, res.handled, dropped, map[string]uint64{
			"not_turn": after.Get(loader.DropPrefilterNotTURN) - before.Get(loader.DropPrefilterNotTURN),
			"short":    after.Get(loader.DropPrefilterShort) - before.Get(loader.DropPrefilterShort),
			"stun_len": after.Get(loader.DropPrefilterSTUNLength) - before.Get(loader.DropPrefilterSTUNLength),
			"cd_len":   after.Get(loader.DropPrefilterChannelDataLength) - before.Get(loader.DropPrefilterChannelDataLength),
		}, rounds)
	if res.sent < 10000 || rounds < 3 {
		t.Fatalf("too little happened to judge: %d sent, %d rounds", res.sent, rounds)
	}
	// veth may lose datagrams under a flood (its ring toward an XDP
	// receiver is bounded), never invent them.
	if dropped > junk || dropped < junk*9/10 {
		t.Fatalf("kernel dropped %d of %d junk datagrams", dropped, junk)
	}
	if m := malformed() - mal0; m > uint64(res.handled) {
		t.Fatalf("userspace counted %d malformed datagrams; the kernel should have dropped them", m)
	}
	if fwd := after.Get(loader.FwdToPeerPackets) - before.Get(loader.FwdToPeerPackets); fwd < uint64(rounds) {
		t.Fatalf("channel data to the peer went through the kernel %d times in %d rounds", fwd, rounds)
	}
	roundTrip(t, rc, 0x4000, pr, "after the flood")

	// Relay CPU under the same flood, pre-filter on and off alternated.
	const window = 1500 * time.Millisecond
	var on, off []time.Duration
	var onSent, offSent []int
	for i := 0; i < 6; i++ {
		pf := i%2 == 0
		if err := x.SetPrefilter(pf); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // let the last window's backlog drain
		c0 := selfCPU(t)
		sent, _ := flood(t, e, window)
		cpu := selfCPU(t) - c0
		if pf {
			on, onSent = append(on, cpu), append(onSent, sent)
		} else {
			off, offSent = append(off, cpu), append(offSent, sent)
		}
	}
	if err := x.SetPrefilter(true); err != nil {
		t.Fatal(err)
	}
	mOn, mOff := median(on), median(off)
	// The sender shares the CPUs with the relay, so it offers less while
	// the relay is busy: per datagram offered is the fairer ratio.
	per := func(cpu []time.Duration, sent []int) []float64 {
		var out []float64
		for i := range cpu {
			out = append(out, float64(cpu[i].Nanoseconds())/float64(max(sent[i], 1)))
		}
		slices.Sort(out)
		return out
	}
	pOn, pOff := per(on, onSent), per(off, offSent)
	t.Logf("relay process CPU per %s flood window: pre-filter on %v (median of %v, sent %v), off %v (median of %v, sent %v): on/off = %.3f; per datagram offered: on %.0f ns, off %.0f ns (medians): on/off = %.3f",
		window, mOn, on, onSent, mOff, off, offSent, float64(mOn)/float64(mOff), pOn[1], pOff[1], pOn[1]/pOff[1])
	if mOn*2 > mOff {
		t.Errorf("the pre-filter saved too little relay CPU: on %v, off %v", mOn, mOff)
	}
	roundTrip(t, rc, 0x4000, pr, "after the measurement")
}

package xdpe2e

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/internal/testutil"
	"github.com/hybridrelay/hybridrelay/pkg/control"
	"github.com/hybridrelay/hybridrelay/pkg/loader"
)

// roundTrip sends one ChannelData message client -> peer and one datagram
// back, checking bytes, and reports whether the reply came as ChannelData.
func roundTrip(t *testing.T, c *rawClient, ch uint16, pr *peer, tag string) {
	t.Helper()
	want := []byte("to peer " + tag)
	if err := c.SendChannelData(ch, want); err != nil {
		t.Fatal(err)
	}
	got, from, err := pr.recv(3 * time.Second)
	if err != nil || !bytes.Equal(got, want) || from != c.relayed {
		t.Fatalf("%s: peer got %q from %v (%v), want %q from %v", tag, got, from, err, want, c.relayed)
	}
	back := []byte("to client " + tag)
	if _, err := pr.conn.WriteToUDPAddrPort(back, c.relayed); err != nil {
		t.Fatal(err)
	}
	gch, data, _, err := c.read(3 * time.Second)
	if err != nil || gch != ch || !bytes.Equal(data, back) {
		t.Fatalf("%s: client got channel %#x %q (%v), want %#x %q", tag, gch, data, err, ch, back)
	}
}

// TestKernelEntryGoneFallsBackToUserspace: channel traffic takes the kernel
// path while the entry lives; when the entry disappears (an operator
// deleting it, a full table) the same traffic goes through userspace and
// still arrives; when the channel expires (short ChannelLifetime) the
// kernel stops forwarding at the expiry on its own, the entry is deleted,
// and Send/Data indications carry the data through userspace.
func TestKernelEntryGoneFallsBackToUserspace(t *testing.T) {
	forEachVariant(t, testKernelEntryGoneFallsBackToUserspace)
}

func testKernelEntryGoneFallsBackToUserspace(t *testing.T, to netns.TopologyOptions) {
	const lifetime = 2 * time.Second
	e := newEnv(t, to, false, func(c *control.Config) { c.ChannelLifetime = lifetime })
	pr := newPeer(t, e, 40000)
	c := newRaw(t, e, user, pass)
	const ch = 0x4000
	c.bind(t, ch, pr.addr())
	bound := time.Now()
	testutil.WaitFor(t, 3*time.Second, "offloaded channel", func() bool { return offloadedChannels(e.srv) == 1 })

	x := e.path.X
	k0 := counters(t, x)
	roundTrip(t, c, ch, pr, "kernel")
	k1 := counters(t, x)
	if k1.Get(loader.FwdToPeerPackets)-k0.Get(loader.FwdToPeerPackets) != 1 || k1.Get(loader.FwdToClientPackets)-k0.Get(loader.FwdToClientPackets) != 1 {
		t.Fatalf("kernel did not forward the round trip: %v", k1.Map())
	}

	// The entry vanishes under a live channel.
	if err := x.DeleteChannel(loader.Channel{Client: c.LocalAddr(), Listener: e.listener(), Number: ch}); err != nil {
		t.Fatal(err)
	}
	u0 := e.srv.Stats()
	roundTrip(t, c, ch, pr, "userspace")
	u1 := e.srv.Stats()
	k2 := counters(t, x)
	if k2.Get(loader.FwdToPeerPackets) != k1.Get(loader.FwdToPeerPackets) || k2.Get(loader.FwdToClientPackets) != k1.Get(loader.FwdToClientPackets) {
		t.Fatal("the kernel forwarded without an entry")
	}
	if u1.UserspaceToPeer.Packets-u0.UserspaceToPeer.Packets != 1 || u1.UserspaceToClient.Packets-u0.UserspaceToClient.Packets != 1 {
		t.Fatalf("userspace did not carry the round trip: %+v -> %+v", u0.UserspaceToPeer, u1.UserspaceToPeer)
	}
	if k2.Get(loader.PassNoEntry) == k1.Get(loader.PassNoEntry) {
		t.Fatal("the ChannelData miss was not counted as pass_no_entry")
	}

	// Re-bind (a refresh): the control plane installs the entry again.
	c.bind(t, ch, pr.addr())
	bound = time.Now()
	testutil.WaitFor(t, 3*time.Second, "re-installed entry", func() bool { return x.Len() == 1 })
	roundTrip(t, c, ch, pr, "kernel again")
	k3 := counters(t, x)
	if k3.Get(loader.FwdToPeerPackets)-k2.Get(loader.FwdToPeerPackets) != 1 {
		t.Fatal("kernel did not take the channel back after the refresh")
	}

	// Expiry: the channel lives `lifetime` after the last bind.
	time.Sleep(time.Until(bound.Add(lifetime + 100*time.Millisecond)))
	if err := c.SendChannelData(ch, []byte("after expiry")); err != nil {
		t.Fatal(err)
	}
	if got, _, err := pr.recv(300 * time.Millisecond); err == nil {
		t.Fatalf("ChannelData on an expired channel reached the peer: %q", got)
	}
	k4 := counters(t, x)
	if k4.Get(loader.FwdToPeerPackets) != k3.Get(loader.FwdToPeerPackets) {
		t.Fatal("the kernel forwarded on an expired channel")
	}
	testutil.WaitFor(t, 5*time.Second, "expired entry deleted", func() bool { return x.Len() == 0 && offloadedChannels(e.srv) == 0 })

	// The permission outlives the channel: Send and Data indications
	// still carry data, in userspace.
	want := []byte("send indication")
	if err := c.SendIndication(pr.addr(), want); err != nil {
		t.Fatal(err)
	}
	got, from, err := pr.recv(3 * time.Second)
	if err != nil || !bytes.Equal(got, want) || from != c.relayed {
		t.Fatalf("peer got %q from %v (%v)", got, from, err)
	}
	back := []byte("data indication")
	if _, err := pr.conn.WriteToUDPAddrPort(back, c.relayed); err != nil {
		t.Fatal(err)
	}
	gch, data, dfrom, err := c.read(3 * time.Second)
	if err != nil || gch != 0 || !bytes.Equal(data, back) || dfrom != pr.addr() {
		t.Fatalf("client got channel %#x %q from %v (%v), want a Data indication %q from %v", gch, data, dfrom, err, back, pr.addr())
	}
	k5 := counters(t, x)
	if k5.Get(loader.FwdToPeerPackets) != k3.Get(loader.FwdToPeerPackets) || k5.Get(loader.FwdToClientPackets) != k3.Get(loader.FwdToClientPackets) {
		t.Fatal("the kernel forwarded after the channel expired")
	}
}

// TestHairpinInKernel: two clients of this server, each bound to the
// other's relayed address. XDP_TX cannot deliver to the host itself, so the
// program turns one client's ChannelData into the other's directly
// (relay to relay): byte-exact both ways, counted as hairpin, nothing to
// a peer. A third client that only has a permission (it gets Data
// indications) is left to userspace (pass_local), and when one side
// releases its allocation the other's entry stops forwarding at once.
func TestHairpinInKernel(t *testing.T) { forEachVariant(t, testHairpinInKernel) }

func testHairpinInKernel(t *testing.T, to netns.TopologyOptions) {
	e := newEnv(t, to, false, nil)
	a := newRaw(t, e, user, pass)
	b := newRaw(t, e, "bob", "builder")
	a.bind(t, 0x4001, b.relayed)
	b.bind(t, 0x4002, a.relayed)
	exchange := func(n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			msg := []byte(fmt.Sprintf("a->b %d", i))
			if err := a.SendChannelData(0x4001, msg); err != nil {
				t.Fatal(err)
			}
			ch, data, _, err := b.read(3 * time.Second)
			if err != nil || ch != 0x4002 || !bytes.Equal(data, msg) {
				t.Fatalf("b got channel %#x %q (%v)", ch, data, err)
			}
			msg = []byte(fmt.Sprintf("b->a %d", i))
			if err := b.SendChannelData(0x4002, msg); err != nil {
				t.Fatal(err)
			}
			ch, data, _, err = a.read(3 * time.Second)
			if err != nil || ch != 0x4001 || !bytes.Equal(data, msg) {
				t.Fatalf("a got channel %#x %q (%v)", ch, data, err)
			}
		}
	}
	k0 := counters(t, e.path.X)
	exchange(5)
	k1 := counters(t, e.path.X)
	if d := k1.Get(loader.FwdHairpinPackets) - k0.Get(loader.FwdHairpinPackets); d != 10 {
		t.Fatalf("kernel hairpin forwarded %d of 10 messages (counters %v)", d, k1.Map())
	}
	if k1.Get(loader.FwdToPeerPackets) != k0.Get(loader.FwdToPeerPackets) || k1.Get(loader.FwdToClientPackets) != k0.Get(loader.FwdToClientPackets) {
		t.Fatal("hairpin traffic counted as sent to a peer or from one")
	}

	// c gets Data indications from a: a's channel to c stays on the
	// kernel entry, which passes (local), and userspace delivers.
	c := newRaw(t, e, "carol", "secret")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.CreatePermission(ctx, a.relayed.Addr()); err != nil {
		t.Fatal(err)
	}
	a.bind(t, 0x4003, c.relayed)
	k2 := counters(t, e.path.X)
	msg := []byte("a->c via userspace")
	if err := a.SendChannelData(0x4003, msg); err != nil {
		t.Fatal(err)
	}
	ch, data, from, err := c.read(3 * time.Second)
	if err != nil || ch != 0 || !bytes.Equal(data, msg) || from != a.relayed {
		t.Fatalf("c got channel %#x %q from %v (%v), want a Data indication from %v", ch, data, from, err, a.relayed)
	}
	k3 := counters(t, e.path.X)
	if k3.Get(loader.FwdHairpinPackets) != k2.Get(loader.FwdHairpinPackets) || k3.Get(loader.PassLocal)-k2.Get(loader.PassLocal) != 1 {
		t.Fatalf("without a channel on the other side: hairpin %+d, pass_local %+d; want 0 and 1",
			k3.Get(loader.FwdHairpinPackets)-k2.Get(loader.FwdHairpinPackets), k3.Get(loader.PassLocal)-k2.Get(loader.PassLocal))
	}

	// b leaves: a's ChannelData to b's old relayed address must not reach
	// b's client through the kernel any more.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if err := b.Release(ctx2); err != nil {
		t.Fatal(err)
	}
	k4 := counters(t, e.path.X)
	if err := a.SendChannelData(0x4001, []byte("to a released allocation")); err != nil {
		t.Fatal(err)
	}
	if ch, data, _, err := b.read(500 * time.Millisecond); err == nil {
		t.Fatalf("b's client still got channel %#x %q after its allocation was released", ch, data)
	}
	if d := counters(t, e.path.X).Get(loader.FwdHairpinPackets) - k4.Get(loader.FwdHairpinPackets); d != 0 {
		t.Fatalf("kernel hairpinned %d packets to a released allocation", d)
	}
}

// TestRestartKeepsMediaFlowing: media flows both ways at 200 packets/s per
// direction while the daemon restarts: the server shuts down keeping its
// kernel entries, the process's BPF handles are closed without unpinning,
// nothing runs in userspace for a while, then a new loader re-adopts the
// pinned maps and link and a new server restores its state file. Every
// packet arrives, and the kernel forwarded all of them.
func TestRestartKeepsMediaFlowing(t *testing.T) { forEachVariant(t, testRestartKeepsMediaFlowing) }

func testRestartKeepsMediaFlowing(t *testing.T, to netns.TopologyOptions) {
	e := newEnv(t, to, false, nil)
	pr := newPeer(t, e, 40000)
	c := newRaw(t, e, user, pass)
	const ch = 0x4123
	c.bind(t, ch, pr.addr())
	testutil.WaitFor(t, 3*time.Second, "offloaded channel", func() bool { return offloadedChannels(e.srv) == 1 })
	c.SetExternalReader(true)

	var toPeer, toClient, sentP, sentC atomic.Uint64
	var gapToPeer, gapToClient atomic.Uint64
	var inGap atomic.Bool
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(4)
	go func() { // client sender
		defer wg.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if c.SendChannelData(ch, []byte(fmt.Sprintf("c%06d", i))) == nil {
				sentC.Add(1)
			}
		}
	}()
	go func() { // peer sender
		defer wg.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if _, err := pr.conn.WriteToUDPAddrPort([]byte(fmt.Sprintf("p%06d", i)), c.relayed); err == nil {
				sentP.Add(1)
			}
		}
	}()
	go func() { // peer receiver
		defer wg.Done()
		for {
			got, _, err := pr.recv(time.Second)
			if err != nil {
				select {
				case <-stop:
					return
				default:
					continue
				}
			}
			if len(got) == 7 && got[0] == 'c' {
				toPeer.Add(1)
				if inGap.Load() {
					gapToPeer.Add(1)
				}
			}
		}
	}()
	go func() { // client receiver
		defer wg.Done()
		for {
			gch, data, _, err := c.read(time.Second)
			if err != nil {
				select {
				case <-stop:
					return
				default:
					continue
				}
			}
			if gch == ch && len(data) == 7 && data[0] == 'p' {
				toClient.Add(1)
				if inGap.Load() {
					gapToClient.Add(1)
				}
			}
		}
	}()

	k0 := counters(t, e.path.X)
	time.Sleep(300 * time.Millisecond)
	// The old process goes away, keeping its kernel state.
	if err := e.srv.Shutdown(true); err != nil {
		t.Fatal(err)
	}
	if err := e.path.X.Close(); err != nil {
		t.Fatal(err)
	}
	inGap.Store(true)
	time.Sleep(400 * time.Millisecond)
	inGap.Store(false)
	// The new process.
	if err := e.path.load(); err != nil {
		t.Fatal(err)
	}
	e.opts.Offload = e.path.Offload()
	e.start(t)
	if removed, err := e.path.Offload().Reconcile(); err != nil || removed != 0 {
		t.Fatalf("reconcile removed %d entries (%v); the restored channel must have been re-installed", removed, err)
	}
	if n := offloadedChannels(e.srv); n != 1 {
		t.Fatalf("restored server has %d offloaded channels", n)
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()

	if gapToPeer.Load() == 0 || gapToClient.Load() == 0 {
		t.Fatalf("no media during the restart gap: %d to peer, %d to client", gapToPeer.Load(), gapToClient.Load())
	}
	// Everything sent arrived (in-flight packets at stop were read
	// before the receivers' final timeout).
	if toPeer.Load() != sentC.Load() || toClient.Load() != sentP.Load() {
		t.Fatalf("lost media: peer got %d of %d, client got %d of %d", toPeer.Load(), sentC.Load(), toClient.Load(), sentP.Load())
	}
	k1 := counters(t, e.path.X)
	if d := k1.Get(loader.FwdToPeerPackets) - k0.Get(loader.FwdToPeerPackets); d < toPeer.Load() {
		t.Fatalf("kernel forwarded %d to the peer, %d arrived", d, toPeer.Load())
	}
	if d := k1.Get(loader.FwdToClientPackets) - k0.Get(loader.FwdToClientPackets); d < toClient.Load() {
		t.Fatalf("kernel forwarded %d to the client, %d arrived", d, toClient.Load())
	}
	t.Logf("%d to peer (%d in the gap), %d to client (%d in the gap)", toPeer.Load(), gapToPeer.Load(), toClient.Load(), gapToClient.Load())
}

// TestFullTableLeavesChannelInUserspace: with room for one channel, the
// second client's channel is refused by the kernel table; the client never
// notices (its ChannelBind succeeds, its data arrives through userspace),
// and the refusal is counted on both sides.
func TestFullTableLeavesChannelInUserspace(t *testing.T) {
	forEachVariant(t, testFullTableLeavesChannelInUserspace)
}

func testFullTableLeavesChannelInUserspace(t *testing.T, to netns.TopologyOptions) {
	e := newEnvMax(t, to, false, 1, nil)
	pr := newPeer(t, e, 40000)
	a := newRaw(t, e, user, pass)
	b := newRaw(t, e, "bob", "builder")
	a.bind(t, 0x4000, pr.addr())
	testutil.WaitFor(t, 3*time.Second, "first channel offloaded", func() bool { return offloadedChannels(e.srv) == 1 })
	b.bind(t, 0x4000, pr.addr())
	k0 := counters(t, e.path.X)
	u0 := e.srv.Stats()
	roundTrip(t, a, 0x4000, pr, "kernel")
	roundTrip(t, b, 0x4000, pr, "userspace")
	k1 := counters(t, e.path.X)
	u1 := e.srv.Stats()
	if d := k1.Get(loader.FwdToPeerPackets) - k0.Get(loader.FwdToPeerPackets); d != 1 {
		t.Errorf("kernel forwarded %d packets to the peer, want 1 (the first client's)", d)
	}
	if d := u1.UserspaceToPeer.Packets - u0.UserspaceToPeer.Packets; d != 1 {
		t.Errorf("userspace relayed %d packets to the peer, want 1 (the second client's)", d)
	}
	if got := k1.Get(loader.PassMapFull); got != 1 {
		t.Errorf("kernel map-full counter %d, want 1", got)
	}
	if u1.OffloadFull != 1 || offloadedChannels(e.srv) != 1 {
		t.Errorf("server counted %d full-table refusals with %d channels offloaded, want 1 and 1", u1.OffloadFull, offloadedChannels(e.srv))
	}
}

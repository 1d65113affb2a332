package xdpe2e

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/internal/testutil"
	"github.com/hybridrelay/hybridrelay/pkg/control"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
	"github.com/hybridrelay/hybridrelay/pkg/loader"
)

// TestBandwidthLimitInKernel: an allocation with bandwidth-limit stays on
// the kernel path, and the kernel holds it to the limit. Offered 3x the
// limit in one direction at a time (client to peer, then peer to client),
// then in both at once (one budget for both), the kernel delivers the limit
// within 5 % once the initial one-second burst is spent, drops the rest
// (counted per allocation and globally), and userspace relays nothing of
// it.
// The meter does not depend on the host's forwarding setting: the
// default-sysctls topology only.
func TestBandwidthLimitInKernel(t *testing.T) {
	to := netns.TopologyOptions{}
	const (
		limit   = 200_000 // bytes/s, both directions summed
		size    = 1000    // payload bytes per datagram
		channel = 0x4000
		drain   = 1500 * time.Millisecond // spends the one-second burst
		window  = 3 * time.Second
	)
	dp, err := dataplane.NewGSO(dataplane.GSOOptions{Loops: 1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvDP(t, to, false, 64, dp, func(c *control.Config) { c.BandwidthLimit = limit })
	pr := newPeer(t, e, 0)
	c := newRaw(t, e, user, pass)
	c.bind(t, channel, pr.addr())
	testutil.WaitFor(t, 3*time.Second, "the limited channel offloaded", func() bool { return offloadedChannels(e.srv) == 1 })

	// Senders at 3x the limit (each direction on its own), paced in 1 ms
	// ticks; receivers count payload bytes.
	var toPeer, toClient atomic.Int64
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	wg.Add(2)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			if b, _, err := pr.recv(50 * time.Millisecond); err == nil {
				toPeer.Add(int64(len(b)))
			}
		}
	}()
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			if ch, data, _, err := c.read(50 * time.Millisecond); err == nil && ch == channel {
				toClient.Add(int64(len(data)))
			}
		}
	}()
	payload := make([]byte, size)
	var offered atomic.Int64
	offer := func(c2p, p2c bool, d time.Duration) {
		// Paced by elapsed time, not by ticks: a loaded machine delays
		// ticks, and the sender catches up.
		const perSec = 3.0 * limit / size // datagrams per second per direction
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		start, sent := time.Now(), 0
		for time.Since(start) < d {
			<-tick.C
			for due := int(time.Since(start).Seconds() * perSec); sent < due; sent++ {
				if c2p && c.SendChannelData(channel, payload) == nil {
					offered.Add(size)
				}
				if p2c {
					if _, err := pr.conn.WriteToUDPAddrPort(payload, c.relayed); err == nil {
						offered.Add(size)
					}
				}
			}
		}
	}
	measure := func(name string, c2p, p2c bool) {
		t.Helper()
		offer(c2p, p2c, drain)
		k0 := counters(t, e.path.X)
		u0 := e.srv.Stats()
		p0, c0, o0 := toPeer.Load(), toClient.Load(), offered.Load()
		start := time.Now()
		offer(c2p, p2c, window)
		secs := time.Since(start).Seconds()
		time.Sleep(100 * time.Millisecond) // in flight
		k1 := counters(t, e.path.X)
		u1 := e.srv.Stats()
		got := float64(toPeer.Load()-p0+toClient.Load()-c0) / secs
		kernel := float64(k1.Get(loader.FwdToPeerBytes)-k0.Get(loader.FwdToPeerBytes)+
			k1.Get(loader.FwdToClientBytes)-k0.Get(loader.FwdToClientBytes)) / secs
		drops := k1.Get(loader.DropBandwidthPackets) - k0.Get(loader.DropBandwidthPackets)
		user := (u1.UserspaceToPeer.Packets - u0.UserspaceToPeer.Packets) + (u1.UserspaceToClient.Packets - u0.UserspaceToClient.Packets)
		t.Logf("%s: offered %.0f B/s, delivered %.0f B/s (%.3f x limit), kernel-forwarded %.0f B/s, %d kernel drops, %d datagrams through userspace",
			name, float64(offered.Load()-o0)/secs, got, got/limit, kernel, drops, user)
		if math.Abs(got-limit) > 0.05*limit {
			t.Errorf("%s: delivered %.0f B/s, want %d ± 5 %%", name, got, limit)
		}
		if kernel < 0.95*got {
			t.Errorf("%s: the kernel forwarded %.0f of %.0f B/s: the limited allocation left the kernel path", name, kernel, got)
		}
		if off := float64(offered.Load()-o0) / secs; off < 2.7*limit*float64(btoi(c2p)+btoi(p2c)) {
			t.Errorf("%s: only %.0f B/s offered, the test needs 3x the limit per direction", name, off)
		}
		if drops == 0 {
			t.Errorf("%s: no kernel drops at 3x the limit", name)
		}
		if user > 10 {
			t.Errorf("%s: %d datagrams relayed by userspace", name, user)
		}
	}
	measure("client -> peer", true, false)
	measure("peer -> client", false, true)
	measure("both directions", true, true)

	a := e.srv.Allocations()
	if len(a) != 1 || a[0].BandwidthDropped == nil || a[0].BandwidthDropped.Packets == 0 {
		t.Fatalf("allocation's bandwidth drops not reported: %+v", a)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

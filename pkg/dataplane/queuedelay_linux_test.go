package dataplane

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// queueBehindBlockedHandler sends one datagram that blocks the listener's
// handler, queues n more behind it, waits hold, releases the handler, then
// sends fresh datagrams one at a time. It returns the datapath's stats and
// how many datagrams the handler saw.
func queueBehindBlockedHandler(t *testing.T, bound time.Duration, n, fresh int, hold time.Duration) (Stats, int64) {
	t.Helper()
	dp := newGSO(t, GSOOptions{Loops: 1, MaxQueueDelay: bound})
	release := make(chan struct{})
	var blocked atomic.Bool
	var handled atomic.Int64
	lis, err := dp.Listen(netip.MustParseAddrPort("127.0.0.1:0"), func(_ Tx, _ Conn, _ netip.AddrPort, _ []byte) {
		handled.Add(1)
		if blocked.CompareAndSwap(false, true) {
			<-release
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	cl := udpSock(t, "127.0.0.1:0")
	msg := make([]byte, 200)
	send := func() {
		if _, err := cl.WriteToUDPAddrPort(msg, lis.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	send()
	waitFor(t, blocked.Load)
	for range n {
		send()
	}
	time.Sleep(hold)
	close(release)
	total := uint64(1 + n)
	waitFor(t, func() bool { st := dp.Stats(); return st.RxPackets+st.RxStaleDrops == total })
	for range fresh {
		prev := handled.Load()
		send()
		waitFor(t, func() bool { return handled.Load() > prev })
	}
	return dp.Stats(), handled.Load()
}

// TestGSOQueueDelayDropsStale: datagrams that waited behind a blocked
// handler for longer than the bound are dropped unread and counted; fresh
// ones are delivered. Without a bound every datagram is delivered.
func TestGSOQueueDelayDropsStale(t *testing.T) {
	const n, fresh = 100, 10
	st, handled := queueBehindBlockedHandler(t, 20*time.Millisecond, n, fresh, 80*time.Millisecond)
	// The blocked read may hold a few datagrams that arrived with the
	// first one (a small batch); those are handled, the rest is stale.
	if st.RxStaleDrops < n-smallBatch || st.RxStaleDrops > n {
		t.Errorf("bound 20 ms, %d datagrams queued 80 ms: %d dropped stale, want %d..%d", n, st.RxStaleDrops, n-smallBatch, n)
	}
	if want := int64(1+n+fresh) - int64(st.RxStaleDrops); handled != want {
		t.Errorf("handled %d, want %d (all but the stale ones)", handled, want)
	}
	st, handled = queueBehindBlockedHandler(t, -1, n, fresh, 80*time.Millisecond)
	if st.RxStaleDrops != 0 || handled != 1+n+fresh {
		t.Errorf("no bound: %d dropped stale, %d handled, want 0 and %d", st.RxStaleDrops, handled, 1+n+fresh)
	}
}

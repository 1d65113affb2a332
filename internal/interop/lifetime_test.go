package interop

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/pion/turn/v4"

	"github.com/hybridrelay/hybridrelay/internal/testutil/turntest"
	"github.com/hybridrelay/hybridrelay/pkg/control"
)

// TestPionStaleNonceAndRefresh runs pion against a server with a 1 s nonce
// lifetime and a 3 s default allocation lifetime, and keeps the allocation
// busy for longer than both. pion's own timer refreshes at half the
// lifetime; every refresh, permission and channel bind after the first
// second meets 438 Stale Nonce (RFC 8489 section 9.2.4) and must recover
// with the new nonce. The allocation must outlive its first lifetime and
// relay byte-exact throughout.
func TestPionStaleNonceAndRefresh(t *testing.T) {
	if referenceMode() {
		t.Skip("needs hybridrelay's short nonce and allocation lifetimes")
	}
	// Mostly waiting on timers; runs beside the other waiting tests, after
	// the serial ones (the flood test counts the process's goroutines).
	t.Parallel()
	tgt := startTarget(t, func(c *control.Config) {
		c.NonceLifetime = time.Second
		c.DefaultLifetime = 3 * time.Second
	})
	s := tgt.hybridrelay
	before := s.srv.Stats()
	p := dialPion(t, "udp", tgt.lt4, 0)
	relay := p.relayAddr()
	a := findAllocation(t, s, relay)
	if left := time.Until(a.Expires); left > 3*time.Second+100*time.Millisecond {
		t.Fatalf("allocation without LIFETIME expires in %s, want the configured default 3 s", left)
	}
	peer := listenPeer(t, lo4)
	peerAddr := peer.LocalAddr().(*net.UDPAddr)

	// Let the nonce go stale before the first CreatePermission. pion's
	// public CreatePermission does not retry on 438 itself (it stores the
	// new nonce and returns "try again"); a second call must succeed.
	time.Sleep(1200 * time.Millisecond)
	var err error
	for i := 0; i < 3; i++ {
		if err = p.client.CreatePermission(peerAddr); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("CreatePermission after the nonce went stale: %v", err)
	}

	// Data both ways for 5 s: past the allocation's first lifetime, with
	// pion refreshing (438, then success) every 1.5 s and binding its
	// channel with a stale nonce on the way.
	start := time.Now()
	seq := 0
	for time.Since(start) < 5*time.Second {
		if err := clientToPeer(p, peer, payload(seq, 100+seq%50)); err != nil {
			t.Fatalf("client->peer at %s: %v", time.Since(start).Round(time.Millisecond), err)
		}
		if err := peerToClient(p, peer, payload(seq, 60+seq%70)); err != nil {
			t.Fatalf("peer->client at %s: %v", time.Since(start).Round(time.Millisecond), err)
		}
		seq++
		time.Sleep(50 * time.Millisecond)
	}
	if lookupAllocation(s, relay) == nil {
		t.Fatalf("allocation %s expired although pion kept refreshing it", relay)
	}
	if p.tap.outChannelData.Load() == 0 || p.tap.inChannelData.Load() == 0 {
		t.Errorf("the channel was never used (sent %d, received %d ChannelData): the stale-nonce ChannelBind did not recover",
			p.tap.outChannelData.Load(), p.tap.inChannelData.Load())
	}
	after := s.srv.Stats()
	stale := after.AuthFailures["stale_nonce"] - before.AuthFailures["stale_nonce"]
	refreshes := after.Requests["refresh"]["ok"] - before.Requests["refresh"]["ok"]
	t.Logf("%d round trips; %d stale-nonce answers; %d successful refreshes", seq, stale, refreshes)
	if stale < 2 {
		t.Errorf("only %d 438 answers; the test did not exercise nonce expiry", stale)
	}
	if refreshes < 2 {
		t.Errorf("only %d successful refreshes in 5 s of a 3 s allocation", refreshes)
	}
}

// TestExpiry lets a permission, a channel and then the allocation run out
// (RFC 8656 sections 9, 12 and 7: each has a lifetime and is gone when
// it is not refreshed) after the client vanished without a word. Once the
// permission and channel have expired, the peer's datagrams must not reach
// the client; once the allocation has expired, it is gone from the table
// and its relay socket is closed (the peer's next datagram is refused).
func TestExpiry(t *testing.T) {
	if referenceMode() {
		t.Skip("needs hybridrelay's short lifetimes")
	}
	t.Parallel()
	for _, dp := range datapaths() {
		t.Run(dp, func(t *testing.T) {
			t.Parallel()
			const (
				permLife  = time.Second
				allocLife = 4 * time.Second
			)
			tgt := startTarget(t, func(c *control.Config) {
				c.Datapath = dp
				c.PermissionLifetime = permLife
				c.ChannelLifetime = permLife
				c.DefaultLifetime = allocLife
			})
			s := tgt.hybridrelay
			p := dialPion(t, "udp", tgt.lt4, 0)
			start := time.Now()
			relay := p.relayAddr()
			peer := listenPeer(t, lo4)
			if err := p.client.CreatePermission(peer.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			for seq := 0; p.tap.outChannelData.Load() == 0; seq++ {
				if time.Since(start) > permLife/2 {
					t.Fatalf("no channel within %s", permLife/2)
				}
				if err := clientToPeer(p, peer, payload(seq, 40)); err != nil {
					t.Fatal(err)
				}
			}
			if err := peerToClient(p, peer, payload(1, 41)); err != nil {
				t.Fatalf("before expiry: %v", err)
			}
			p.tap.blackhole.Store(true) // the client vanishes
			before := s.srv.Stats()

			// Permission and channel expired, allocation still alive.
			time.Sleep(time.Until(start.Add(permLife + 700*time.Millisecond)))
			if lookupAllocation(s, relay) == nil {
				t.Fatalf("allocation gone after %s of its %s lifetime", time.Since(start), allocLife)
			}
			if _, err := peer.WriteToUDPAddrPort(payload(2, 42), relay); err != nil {
				t.Fatal(err)
			}
			_ = p.relay.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			buf := make([]byte, 2048)
			if n, from, err := p.relay.ReadFrom(buf); err == nil {
				t.Errorf("%s after the permission was created (lifetime %s) the client still got %d bytes from %s",
					time.Since(start).Round(time.Millisecond), permLife, n, from)
			}
			if d := s.srv.Stats().Drops["no_permission"] - before.Drops["no_permission"]; d == 0 {
				t.Errorf("the peer's datagram after permission expiry was not counted as no_permission")
			}

			// Allocation expired: gone, and its relay socket closed.
			deadline := start.Add(allocLife + 2*time.Second)
			for lookupAllocation(s, relay) != nil {
				if time.Now().After(deadline) {
					t.Fatalf("allocation %s still exists %s after it was created with lifetime %s",
						relay, time.Since(start).Round(time.Millisecond), allocLife)
				}
				time.Sleep(50 * time.Millisecond)
			}
			if got := s.srv.Stats().AllocationsExpired - before.AllocationsExpired; got != 1 {
				t.Errorf("allocations_expired grew by %d, want 1", got)
			}
			probe, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(relay))
			if err != nil {
				t.Fatal(err)
			}
			defer probe.Close()
			refused := false
			for i := 0; i < 10 && !refused; i++ {
				_, _ = probe.Write([]byte("anyone there?"))
				_ = probe.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
				_, err := probe.Read(buf)
				refused = errors.Is(err, syscall.ECONNREFUSED)
			}
			if !refused {
				t.Errorf("relay address %s of the expired allocation still accepts datagrams: its socket was not closed", relay)
			}
		})
	}
}

// TestQuotaRelease checks that a user's allocation quota (allocations per
// user, 486 Allocation Quota Reached, RFC 8656 section 7.2) is given back on every way an allocation ends: Refresh(0), the
// client's TCP connection closing (RFC 8656 section 3.1: the connection is
// the 5-tuple), and expiry after the client vanished.
func TestQuotaRelease(t *testing.T) {
	if referenceMode() {
		t.Skip("needs hybridrelay's quota settings")
	}
	t.Parallel()
	tgt := startTarget(t, func(c *control.Config) {
		c.MaxAllocationsPerUser = 1
		c.DefaultLifetime = 2 * time.Second
	})
	s := tgt.hybridrelay
	// allocate tries once and reports the TURN error code (0: success).
	allocate := func(network string) (*pionSession, int) {
		t.Helper()
		var base net.PacketConn
		switch network {
		case "udp":
			c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(lo4, 0)))
			if err != nil {
				t.Fatal(err)
			}
			base = c
		default:
			c, err := net.DialTimeout("tcp", tgt.lt4.String(), 3*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			base = turn.NewSTUNConn(c)
		}
		tap := &tapConn{PacketConn: base, user: testUser, pass: testPass}
		client, err := turntest.StartPion(turntest.PionConfig{Conn: tap, Server: tgt.lt4, User: testUser, Pass: testPass, Realm: testRealm})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { client.Close(); _ = tap.Close() })
		relay, err := client.Allocate()
		var te *stun.TurnError
		switch {
		case err == nil:
			return &pionSession{client: client, relay: relay, tap: tap, server: tgt.lt4}, 0
		case errors.As(err, &te):
			return nil, int(te.ErrorCodeAttr.Code)
		}
		t.Fatalf("allocate over %s: %v", network, err)
		return nil, 0
	}
	waitGone := func(relay netip.AddrPort, why string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for lookupAllocation(s, relay) != nil {
			if time.Now().After(deadline) {
				t.Fatalf("allocation %s still listed 5 s after %s", relay, why)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	mustRefuse := func(why string) {
		t.Helper()
		if _, code := allocate("udp"); code != int(stun.CodeAllocQuotaReached) {
			t.Fatalf("%s: a second allocation for the user got code %d, want 486", why, code)
		}
	}

	// 1. Refresh(0).
	a, code := allocate("udp")
	if code != 0 {
		t.Fatalf("first allocation: code %d", code)
	}
	mustRefuse("while the first is live")
	relay := a.relayAddr()
	_ = a.relay.Close() // Refresh(lifetime=0)
	waitGone(relay, "Refresh(0)")

	// 2. The TCP connection closes without a Refresh.
	b, code := allocate("tcp")
	if code != 0 {
		t.Fatalf("allocation after Refresh(0) freed the quota: code %d", code)
	}
	mustRefuse("while the TCP allocation is live")
	relay = b.relayAddr()
	_ = b.tap.PacketConn.Close() // the connection drops; pion never says goodbye
	waitGone(relay, "its TCP connection closed")

	// 3. Expiry after the client vanished.
	c, code := allocate("udp")
	if code != 0 {
		t.Fatalf("allocation after the TCP connection closed: code %d (the quota was not given back)", code)
	}
	c.tap.blackhole.Store(true)
	relay = c.relayAddr()
	waitGone(relay, "its lifetime ran out")
	if _, code := allocate("udp"); code != 0 {
		t.Fatalf("allocation after the previous one expired: code %d (the quota was not given back)", code)
	}
}

// expiryGrace is how late after an allocation's expiry a relayed datagram
// may still arrive: clock reads and scheduling, not a cleanup interval.
const expiryGrace = 50 * time.Millisecond

// TestExpiryPrecision keeps data flowing both ways through an allocation
// whose refreshes are lost, and checks that relaying stops when the
// allocation's lifetime ends (RFC 8656 section 7: the allocation expires
// when its lifetime runs out), in both directions. The kernel fast path
// checks the expiry on every packet (docs/design.md "Kernel-path invariants" 1) and passes
// expired traffic up; userspace must then not forward what the kernel
// would not, or a cleanup interval becomes a window of relaying past the
// lifetime.
func TestExpiryPrecision(t *testing.T) {
	if referenceMode() {
		t.Skip("needs hybridrelay's short lifetimes")
	}
	t.Parallel()
	for _, dp := range datapaths() {
		t.Run(dp, func(t *testing.T) {
			t.Parallel()
			tgt := startTarget(t, func(c *control.Config) {
				c.Datapath = dp
				c.DefaultLifetime = 2 * time.Second
			})
			p := dialPion(t, "udp", tgt.lt4, 0)
			peer := listenPeer(t, lo4)
			if err := p.client.CreatePermission(peer.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			for seq := 0; p.tap.outChannelData.Load() == 0; seq++ {
				if err := clientToPeer(p, peer, payload(seq, 40)); err != nil {
					t.Fatal(err)
				}
			}
			p.tap.dropRequests.Store(true) // refreshes get lost from now on
			time.Sleep(100 * time.Millisecond)
			exp := findAllocation(t, tgt.hybridrelay, p.relayAddr()).Expires

			lastToClient, lastToPeer := expiryTraffic(p, peer, exp.Add(time.Second))
			t.Logf("allocation expiry %s; last datagram to the client %s after it, to the peer %s after it",
				exp.Format("15:04:05.000"), lastToClient.Sub(exp), lastToPeer.Sub(exp))
			for _, d := range []struct {
				name string
				last time.Time
			}{{"peer -> client", lastToClient}, {"client -> peer", lastToPeer}} {
				if d.last.Before(exp.Add(-500 * time.Millisecond)) {
					t.Errorf("%s: traffic stopped %s before the expiry; the test measured nothing", d.name, exp.Sub(d.last))
				}
				if late := d.last.Sub(exp); late > expiryGrace {
					t.Errorf("%s: relayed %s after the allocation expired (grace %s)", d.name, late.Round(time.Millisecond), expiryGrace)
				}
			}
		})
	}
}

// expiryTraffic sends a datagram each way every 2 ms until `until` and
// returns when the last one arrived in each direction.
func expiryTraffic(p *pionSession, peer *net.UDPConn, until time.Time) (lastToClient, lastToPeer time.Time) {
	var wg sync.WaitGroup
	wg.Add(4)
	go func() { // peer sends
		defer wg.Done()
		for time.Now().Before(until) {
			_, _ = peer.WriteToUDPAddrPort([]byte("from the peer"), p.relayAddr())
			time.Sleep(2 * time.Millisecond)
		}
	}()
	go func() { // client sends
		defer wg.Done()
		for time.Now().Before(until) {
			_, _ = p.relay.WriteTo([]byte("from the client"), peer.LocalAddr())
			time.Sleep(2 * time.Millisecond)
		}
	}()
	go func() { // client receives
		defer wg.Done()
		buf := make([]byte, 2048)
		for time.Now().Before(until) {
			_ = p.relay.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			if _, _, err := p.relay.ReadFrom(buf); err == nil {
				lastToClient = time.Now()
			}
		}
	}()
	go func() { // peer receives
		defer wg.Done()
		buf := make([]byte, 2048)
		for time.Now().Before(until) {
			_ = peer.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			if _, err := peer.Read(buf); err == nil {
				lastToPeer = time.Now()
			}
		}
	}()
	wg.Wait()
	return lastToClient, lastToPeer
}

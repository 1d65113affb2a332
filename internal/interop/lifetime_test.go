package interop

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

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

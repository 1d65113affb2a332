package interop

import (
	"context"
	"errors"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/internal/privtest"
	"github.com/hybridrelay/hybridrelay/internal/turnclient"
	"github.com/hybridrelay/hybridrelay/pkg/control"
)

// TestNetnsUnauthBudgetFair floods unauthenticated, badly authenticated and
// malformed requests from 64 ports of the client namespace's one address
// (the carrier-grade NAT case: thousands of users behind one IP) while a
// client of that same address holds an allocation and sends Binding and
// Refresh requests on its 5-tuple. With the default limits (20/s, burst
// 40 per source IP) the flood empties the IP's budget many times over; the
// allocated 5-tuple has a budget of its own and must get at least 99 % of
// its answers. A stranger of the same IP (a 5-tuple without allocation or
// verified credentials) shares the flood's budget and must mostly not: that
// half shows the flood was strong enough for the test to fail.
//
// The nonce lifetime is shortened to 2 s so that Refreshes during the
// flood meet 438 Stale Nonce, an unauthenticated challenge the client must
// get to keep its allocation (RFC 8656 section 7.3: the client retries
// with the new nonce).
func TestNetnsUnauthBudgetFair(t *testing.T) {
	privtest.Need(t, "ip", "ethtool", "ping")
	r := startNetnsRelay(t, func(c *control.Config) { c.NonceLifetime = 2 * time.Second })
	server := r.addr4
	local := netip.AddrPortFrom(r.topo.ClientV4, 0)

	newClient := func(creds turnclient.Credentials, oneShot bool) *turnclient.Client {
		t.Helper()
		var conn *net.UDPConn
		if err := r.topo.Client.Do(func() error {
			var err error
			conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(local))
			return err
		}); err != nil {
			t.Fatalf("client socket: %v", err)
		}
		cfg := turnclient.Config{Server: server, Conn: conn, Credentials: creds}
		if oneShot {
			// One transmission per transaction: a dropped answer counts
			// as unanswered instead of being hidden by a retransmission.
			cfg.RTO, cfg.Timeout = 400*time.Millisecond, 400*time.Millisecond
		}
		c, err := turnclient.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	alloc := newClient(turnclient.Credentials{Username: testUser, Password: testPass}, true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err := alloc.Allocate(ctx, turnclient.AllocateOptions{})
	cancel()
	if err != nil {
		t.Fatalf("allocate before the flood: %v", err)
	}
	stranger := newClient(turnclient.Credentials{}, true)

	var nonce stun.Nonce
	var realm stun.Realm
	if err := r.topo.Client.Do(func() error {
		nonce, realm = nonceFor(t, server, r.topo.ClientV4)
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// The flood: about 3000 datagrams/s from 64 ports, every kind the
	// budget applies to (unauthenticated Allocate and Binding, wrong
	// MESSAGE-INTEGRITY with a real nonce) and the malformed kinds.
	floodCtx, stopFlood := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var sent atomic.Int64
	kinds := malformedKinds()
	kinds = append(kinds,
		malformedKind{"unauth-allocate", func(*mrand.Rand, stun.Nonce, stun.Realm) []byte { return unauthAllocate().Raw }},
		malformedKind{"unauth-binding", func(*mrand.Rand, stun.Nonce, stun.Realm) []byte {
			return stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint).Raw
		}})
	var socks []*net.UDPConn
	if err := r.topo.Client.Do(func() error {
		for range 64 {
			c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(local), net.UDPAddrFromAddrPort(server))
			if err != nil {
				return err
			}
			socks = append(socks, c)
		}
		return nil
	}); err != nil {
		t.Fatalf("flood sockets: %v", err)
	}
	t.Cleanup(func() {
		for _, c := range socks {
			_ = c.Close()
		}
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := mrand.New(mrand.NewPCG(1, 2))
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for i := 0; floodCtx.Err() == nil; {
			<-tick.C
			for range 30 {
				k := kinds[rng.IntN(len(kinds))]
				if _, err := socks[i%len(socks)].Write(k.gen(rng, nonce, realm)); err == nil {
					sent.Add(1)
				}
				i++
			}
		}
	}()
	// Unanswered flood requests are never read; drain the sockets so the
	// answers that do come cannot fill their buffers.
	for _, c := range socks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 2048)
			for floodCtx.Err() == nil {
				_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
				_, _ = c.Read(buf)
			}
		}()
	}
	time.Sleep(500 * time.Millisecond) // the IP's bucket is empty by now

	const duration = 8 * time.Second
	var bindings, bindingsOK, refreshes, refreshesOK, strangerOK, strangerN int
	var refreshErr error
	nonceChanges := 0
	var swg sync.WaitGroup
	swg.Add(1)
	go func() { // the stranger, concurrently, at the same pace
		defer swg.Done()
		for end := time.Now().Add(duration); time.Now().Before(end); time.Sleep(80 * time.Millisecond) {
			strangerN++
			if _, err := stranger.Binding(context.Background()); err == nil {
				strangerOK++
			}
		}
	}()
	lastRefresh := time.Now()
	for end := time.Now().Add(duration); time.Now().Before(end); time.Sleep(80 * time.Millisecond) {
		bindings++
		if _, err := alloc.Binding(context.Background()); err == nil {
			bindingsOK++
		}
		if time.Since(lastRefresh) >= time.Second {
			lastRefresh = time.Now()
			refreshes++
			_, before := alloc.Nonce()
			if _, err := alloc.Refresh(context.Background(), 10*time.Minute); err == nil {
				refreshesOK++
			} else if !errors.Is(err, turnclient.ErrTimeout) {
				refreshErr = err
			}
			if _, after := alloc.Nonce(); after != before {
				nonceChanges++
			}
		}
	}
	swg.Wait()
	stopFlood()
	wg.Wait()
	r.stop()

	t.Logf("flood: %d datagrams in %v; allocated 5-tuple: %d/%d Binding, %d/%d Refresh answered; stranger of the same IP: %d/%d Binding",
		sent.Load(), duration, bindingsOK, bindings, refreshesOK, refreshes, strangerOK, strangerN)
	if refreshErr != nil {
		t.Errorf("refresh: %v", refreshErr)
	}
	if bindingsOK*100 < bindings*99 {
		t.Errorf("allocated 5-tuple: %d of %d Binding requests answered, want >= 99 %%", bindingsOK, bindings)
	}
	if refreshesOK*100 < refreshes*99 {
		t.Errorf("allocated 5-tuple: %d of %d Refresh requests answered, want >= 99 %%", refreshesOK, refreshes)
	}
	if strangerOK*2 > strangerN {
		t.Errorf("stranger: %d of %d Binding requests answered: the flood did not exhaust the per-IP budget, so the test proves nothing", strangerOK, strangerN)
	}
	if !r.statsOK {
		t.Fatal("no server stats")
	}
	if got := r.stats.AuthFailures["rate_limited"]; got < uint64(sent.Load())/4 {
		t.Errorf("rate_limited = %d for %d flood datagrams", got, sent.Load())
	}
	if nonceChanges < 2 {
		t.Errorf("the nonce changed %d times during %d Refreshes: they did not meet 438 Stale Nonce", nonceChanges, refreshes)
	}
}

package interop

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pion/turn/v4"

	"github.com/hybridrelay/hybridrelay/pkg/control"
)

// TestManyClients runs many pion clients at once against one server, so
// that Allocate, CreatePermission, ChannelBind, data, Refresh(0) and
// expiry (short lifetimes, so the janitor works while traffic flows) all
// interleave: every datagram must still arrive byte-exact at the shared
// echo peer and back, and every allocation must be gone at the end,
// whether its client deallocated or vanished. Run with -race, it is also
// the server's concurrency check under real clients.
func TestManyClients(t *testing.T) {
	if referenceMode() {
		t.Skip("reads hybridrelay's allocation table")
	}
	t.Parallel()
	for _, dp := range datapaths() {
		t.Run(dp, func(t *testing.T) {
			t.Parallel()
			const (
				udpClients = 60
				tcpClients = 20
				rounds     = 20
			)
			tgt := startTarget(t, func(c *control.Config) {
				c.Datapath = dp
				c.DefaultLifetime = 3 * time.Second
				c.UnauthBurst = 1000 // all start at once from one address
			})
			s := tgt.hybridrelay
			// One echo peer for everybody: it answers each datagram to
			// whichever relayed address sent it.
			peer := listenPeer(t, lo4)
			go func() {
				buf := make([]byte, 2048)
				for {
					n, from, err := peer.ReadFromUDPAddrPort(buf)
					if err != nil {
						return
					}
					_, _ = peer.WriteToUDPAddrPort(buf[:n], from)
				}
			}()

			var wg sync.WaitGroup
			var mu sync.Mutex
			var relays []netip.AddrPort
			errs := make(chan error, udpClients+tcpClients)
			for i := 0; i < udpClients+tcpClients; i++ {
				network := "udp"
				if i >= udpClients {
					network = "tcp"
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					p, err := tryDialPion(network, tgt.lt4)
					if err != nil {
						errs <- err
						return
					}
					defer p.close()
					mu.Lock()
					relays = append(relays, p.relayAddr())
					mu.Unlock()
					buf := make([]byte, 2048)
					for r := 0; r < rounds; r++ {
						want := payload(i*1000+r, 1+(i*31+r*17)%1200)
						if network == "tcp" && len(want) < 5 {
							want = payload(i*1000+r, 5) // pion STUNConn, see TestPion
						}
						if _, err := p.relay.WriteTo(want, peer.LocalAddr()); err != nil {
							errs <- err
							return
						}
						_ = p.relay.SetReadDeadline(time.Now().Add(3 * time.Second))
						n, _, err := p.relay.ReadFrom(buf)
						if err != nil {
							errs <- err
							return
						}
						if !bytes.Equal(buf[:n], want) {
							errs <- errMismatch{i, r, n, len(want)}
							return
						}
					}
					if i%2 == 0 {
						_ = p.relay.Close() // Refresh(0)
					} else {
						p.tap.blackhole.Store(true) // vanish; expiry cleans up
					}
				}()
			}
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(60 * time.Second):
				t.Fatal("clients still running after 60 s: the server stalled")
			}
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			deadline := time.Now().Add(8 * time.Second)
			for {
				left := 0
				mu.Lock()
				for _, r := range relays {
					if lookupAllocation(s, r) != nil {
						left++
					}
				}
				mu.Unlock()
				if left == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d of %d allocations still listed after their clients deallocated or vanished", left, len(relays))
				}
				time.Sleep(100 * time.Millisecond)
			}
			if st := s.srv.Stats(); st.Allocations != 0 || st.Drops["panics"] != 0 {
				t.Errorf("after all clients: %d allocations, %d panics", st.Allocations, st.Drops["panics"])
			}
		})
	}
}

type errMismatch struct{ client, round, got, want int }

func (e errMismatch) Error() string {
	return fmt.Sprintf("client %d round %d: got %d bytes back, want the %d sent, byte-exact", e.client, e.round, e.got, e.want)
}

// tryDialPion is dialPion for goroutines: errors instead of t.Fatal, and
// the caller closes.
func tryDialPion(network string, server netip.AddrPort) (*pionSession, error) {
	var base net.PacketConn
	switch network {
	case "udp":
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(server.Addr(), 0)))
		if err != nil {
			return nil, err
		}
		base = c
	default:
		c, err := net.DialTimeout("tcp", server.String(), 3*time.Second)
		if err != nil {
			return nil, err
		}
		base = turn.NewSTUNConn(c)
	}
	return openPion(server, &tapConn{PacketConn: base, user: testUser, pass: testPass})
}

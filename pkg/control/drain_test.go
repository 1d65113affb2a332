package control

import (
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// TestDrainAllocate: while draining (or at max-allocations), a new
// Allocate is answered 300 with an ALTERNATE-SERVER of the client's
// family and MESSAGE-INTEGRITY, or 486 without a usable alternate; an
// existing allocation keeps refreshing and relaying; undrain restores
// Allocate.
func TestDrainAllocate(t *testing.T) {
	alt4 := netip.MustParseAddrPort("198.18.7.1:3478")
	alt4b := netip.MustParseAddrPort("198.18.7.2:3478")
	alt6 := netip.MustParseAddrPort("[2001:2::7]:3478")
	tests := []struct {
		name    string
		alts    []netip.AddrPort
		drain   bool
		maxAll  int
		perUser int
		want    int
		wantAlt []netip.AddrPort // successive redirects, round robin
	}{
		{name: "draining without alternates 486", drain: true, want: 486},
		{name: "draining with an alternate 300", alts: []netip.AddrPort{alt4}, drain: true, want: 300, wantAlt: []netip.AddrPort{alt4, alt4}},
		{name: "round robin over same-family alternates", alts: []netip.AddrPort{alt6, alt4, alt4b}, drain: true, want: 300, wantAlt: []netip.AddrPort{alt4, alt4b, alt4}},
		{name: "only other-family alternates 486", alts: []netip.AddrPort{alt6}, drain: true, want: 486},
		{name: "full with an alternate 300", alts: []netip.AddrPort{alt4}, maxAll: 1, want: 300, wantAlt: []netip.AddrPort{alt4}},
		{name: "full without alternate 486", maxAll: 1, want: 486},
		{name: "per-user quota stays 486 with an alternate", alts: []netip.AddrPort{alt4}, perUser: 1, want: 486},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startServer(t, func(c *Config, _ *Options) {
				c.AlternateServers = tt.alts
				c.MaxAllocations = tt.maxAll
				if tt.perUser > 0 {
					c.MaxAllocationsPerUser = tt.perUser
				}
			})
			peer := newPeer(t, "127.0.0.1:0")
			// An allocation made before the drain (and the one that fills
			// the quota) must keep working.
			first := dialRaw(t, "udp", s.addr("udp"))
			relayed := first.allocate()
			if resp := first.do(methodCreatePermission, peerAttr(peer.addr())); code(resp) != 0 {
				t.Fatalf("CreatePermission: %d", code(resp))
			}
			if tt.drain {
				if !s.SetDraining(true) || s.SetDraining(true) {
					t.Fatal("SetDraining(true) should change the state once")
				}
				if err := s.Ready(); err == nil {
					t.Error("Ready while draining")
				}
			}
			n := max(1, len(tt.wantAlt))
			for i := 0; i < n; i++ {
				c := dialRaw(t, "udp", s.addr("udp"))
				resp := c.do(methodAllocate, udpTransport())
				if got := code(resp); got != tt.want {
					t.Fatalf("Allocate %d: code %d, want %d", i, got, tt.want)
				}
				if err := stun.MessageIntegrity(c.key()).Check(resp); err != nil {
					t.Errorf("refusal not authenticated: %v", err)
				}
				var alt stun.AlternateServer
				err := alt.GetFrom(resp)
				if tt.want != 300 {
					if err == nil {
						t.Errorf("%d carries ALTERNATE-SERVER %v", tt.want, alt)
					}
					continue
				}
				if err != nil {
					t.Fatalf("300 without ALTERNATE-SERVER: %v", err)
				}
				ip, _ := netip.AddrFromSlice(alt.IP)
				if got := netip.AddrPortFrom(ip.Unmap(), uint16(alt.Port)); got != tt.wantAlt[i] {
					t.Errorf("redirect %d to %v, want %v", i, got, tt.wantAlt[i])
				}
			}
			// The existing allocation refreshes and relays.
			if resp := first.do(methodRefresh, lifetimeAttr(600)); code(resp) != 0 {
				t.Fatalf("Refresh of an existing allocation: %d", code(resp))
			}
			peer.send([]byte("still relayed"), relayed)
			first.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			if b := first.read(2 * time.Second); b == nil {
				t.Fatal("no Data indication for the existing allocation")
			}
			st := s.Stats()
			if st.Draining != tt.drain || (st.DrainingSince != nil) != tt.drain {
				t.Errorf("stats draining %v since %v, want %v", st.Draining, st.DrainingSince, tt.drain)
			}
			if st.Allocations != 1 {
				t.Errorf("stats: %d allocations left, want 1", st.Allocations)
			}
			if got := st.Requests["allocate"][resultName(resultIndex(tt.want))]; got != uint64(n) {
				t.Errorf("allocate %d counted %d times, want %d: %v", tt.want, got, n, st.Requests["allocate"])
			}
			if tt.drain {
				if !s.SetDraining(false) {
					t.Fatal("SetDraining(false) did not change the state")
				}
				if err := s.Ready(); err != nil {
					t.Errorf("not ready after undrain: %v", err)
				}
				dialRaw(t, "udp", s.addr("udp")).allocate()
			}
		})
	}
}

func TestAlternateServersValidated(t *testing.T) {
	for _, bad := range []string{"0.0.0.0:3478", "198.18.0.1:0", "[ff02::1]:3478"} {
		cfg := testConfig()
		cfg.AlternateServers = []netip.AddrPort{netip.MustParseAddrPort(bad)}
		if _, err := NewServer(cfg, Options{Datapath: dataplane.NewPlain()}); err == nil {
			t.Errorf("alternate %s accepted", bad)
		}
	}
	var zero netip.AddrPort
	s := startServer(t)
	if err := s.SetAlternateServers([]netip.AddrPort{zero}); err == nil {
		t.Error("zero alternate accepted on reload")
	}
	ok := []netip.AddrPort{netip.MustParseAddrPort("[::ffff:198.18.7.1]:3478")}
	if err := s.SetAlternateServers(ok); err != nil {
		t.Fatal(err)
	}
	if got := s.AlternateServers(); len(got) != 1 || !got[0].Addr().Is4() {
		t.Errorf("mapped alternate not unmapped: %v", got)
	}
}

func TestLiveReady(t *testing.T) {
	s := startServer(t)
	if err := s.Live(time.Second); err != nil {
		t.Fatalf("Live after start: %v", err)
	}
	if err := s.Ready(); err != nil {
		t.Fatalf("Ready after start: %v", err)
	}
	time.Sleep(2 * janitorInterval)
	if err := s.Live(janitorInterval * 3 / 2); err != nil {
		t.Fatalf("janitor not ticking: %v", err)
	}
	s.Close()
	if err := s.Ready(); err == nil {
		t.Error("Ready after Close")
	}
	time.Sleep(3 * janitorInterval)
	if err := s.Live(2 * janitorInterval); err == nil {
		t.Error("Live after Close")
	}
}

package control

import (
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/pion/stun/v3"
	"golang.org/x/sys/unix"
)

// relayPMTU finds this process's UDP socket bound to addr (an IPv4 relay
// address) in /proc/self/fd and returns its IP_MTU_DISCOVER: what the
// kernel will do with DF on datagrams sent from it, read from the socket
// itself rather than from anything the server records.
func relayPMTU(t *testing.T, addr netip.AddrPort) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	found, val := 0, -1
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || typ != unix.SOCK_DGRAM {
			continue
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			continue
		}
		s4, ok := sa.(*unix.SockaddrInet4)
		if !ok || netip.AddrPortFrom(netip.AddrFrom4(s4.Addr), uint16(s4.Port)) != addr {
			continue
		}
		v, err := unix.GetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER)
		if err != nil {
			t.Fatal(err)
		}
		found++
		val = v
	}
	if found != 1 {
		t.Fatalf("%d udp sockets bound to %v, want 1", found, addr)
	}
	return val
}

var pmtuNames = map[int]string{unix.IP_PMTUDISC_DONT: "DONT", unix.IP_PMTUDISC_WANT: "WANT", unix.IP_PMTUDISC_DO: "DO"}

func wantPMTU(t *testing.T, what string, addr netip.AddrPort, df bool) {
	t.Helper()
	want := unix.IP_PMTUDISC_DONT
	if df {
		want = unix.IP_PMTUDISC_DO
	}
	if got := relayPMTU(t, addr); got != want {
		t.Fatalf("%s %v: IP_MTU_DISCOVER %s, want %s (DONT-FRAGMENT %v)", what, addr, pmtuNames[got], pmtuNames[want], df)
	}
}

var dontFragment = attr{stun.AttrDontFragment, nil}

// TestAllocateSetsDontFragment checks that every relay socket an
// allocation uses gets the IPv4 DF policy of its DONT-FRAGMENT (RFC 8656
// sections 7.2 and 14; the kernel path writes the same bit): plain and
// dual-family allocations, a socket held by an EVEN-PORT reservation and
// later claimed with its token, on both userspace datapaths.
func TestAllocateSetsDontFragment(t *testing.T) {
	for name, mk := range datapaths(t) {
		t.Run(name, func(t *testing.T) {
			s := startServer(t, func(c *Config, o *Options) {
				o.Datapath = mk()
				c.RelayIPs = append(c.RelayIPs, netip.MustParseAddr("::1"))
			})
			for _, df := range []bool{false, true} {
				var extra []stun.Setter
				if df {
					extra = append(extra, dontFragment)
				}
				c := dialRaw(t, "udp", s.addr("udp"))
				wantPMTU(t, "allocation", c.allocate(extra...), df)

				// Dual: the IPv6 socket accepts the policy (no DF there),
				// so the allocation gets both families.
				c = dialRaw(t, "udp", s.addr("udp"))
				resp := c.do(methodAllocate, append([]stun.Setter{udpTransport(), familyAttr(attrAdditionalAddressFamily, familyIPv6)}, extra...)...)
				if code(resp) != 0 {
					t.Fatalf("dual allocate: code %d", code(resp))
				}
				rel := relayedAddrs(t, resp)
				if len(rel) != 2 || !rel[0].Addr().Is4() || !rel[1].Addr().Is6() {
					t.Fatalf("dual allocate: relayed %v", rel)
				}
				wantPMTU(t, "dual allocation", rel[0], df)

				// Reservation: the held socket is not the allocation's
				// yet (no DF until claimed), then takes the DF of the
				// Allocate that claims it, not of the one that made it.
				c = dialRaw(t, "udp", s.addr("udp"))
				resp = c.do(methodAllocate, append([]stun.Setter{udpTransport(), attr{stun.AttrEvenPort, []byte{0x80}}}, extra...)...)
				if code(resp) != 0 {
					t.Fatalf("allocate with reservation: code %d", code(resp))
				}
				first := relayedAddrs(t, resp)[0]
				wantPMTU(t, "even-port allocation", first, df)
				held := netip.AddrPortFrom(first.Addr(), first.Port()+1)
				wantPMTU(t, "reserved socket", held, false)
				tok, ok, err := getReservationToken(resp)
				if !ok || err != nil {
					t.Fatalf("no RESERVATION-TOKEN: %v", err)
				}
				claim := []stun.Setter{udpTransport(), attr{stun.AttrReservationToken, tok[:]}}
				if !df {
					claim = append(claim, dontFragment)
				}
				c = dialRaw(t, "udp", s.addr("udp"))
				resp = c.do(methodAllocate, claim...)
				if code(resp) != 0 {
					t.Fatalf("allocate with token: code %d", code(resp))
				}
				if r := relayedAddrs(t, resp)[0]; r != held {
					t.Fatalf("token gave %v, want %v", r, held)
				}
				wantPMTU(t, "claimed reservation", held, !df)
			}
		})
	}
}

// TestRestoredAllocationKeepsDontFragment restarts a server from its state
// file: the reopened relay sockets get the DF policy the allocations were
// created with.
func TestRestoredAllocationKeepsDontFragment(t *testing.T) {
	for name, mk := range datapaths(t) {
		t.Run(name, func(t *testing.T) {
			stateFile := filepath.Join(t.TempDir(), "state.json")
			cfg := testConfig()
			dp1 := mk()
			s1, err := NewServer(cfg, Options{Datapath: dp1, StateFile: stateFile, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			if err := s1.Start(); err != nil {
				t.Fatal(err)
			}
			relays := map[bool]netip.AddrPort{}
			for _, df := range []bool{false, true} {
				c := dialRaw(t, "udp", s1.addr("udp"))
				if df {
					relays[df] = c.allocate(dontFragment)
				} else {
					relays[df] = c.allocate()
				}
			}
			if err := s1.Shutdown(true); err != nil {
				t.Fatal(err)
			}
			dp1.Close()

			cfg2 := testConfig()
			cfg2.Listeners = s1.Addrs()
			dp2 := mk()
			s2, err := NewServer(cfg2, Options{Datapath: dp2, StateFile: stateFile, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			if err := s2.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s2.Close(); dp2.Close() })
			if n := len(s2.Allocations()); n != 2 {
				t.Fatalf("%d allocations restored, want 2", n)
			}
			for df, addr := range relays {
				wantPMTU(t, "restored allocation", addr, df)
			}
		})
	}
}

package dataplane

import (
	"net"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// mtuDiscover reads IP_MTU_DISCOVER of the socket behind uc.
func mtuDiscover(t *testing.T, uc *net.UDPConn) int {
	t.Helper()
	rc, err := uc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

// udpConns returns the sockets of a Conn of either datapath.
func udpConns(t *testing.T, c Conn) []*net.UDPConn {
	t.Helper()
	switch c := c.(type) {
	case *plainConn:
		return []*net.UDPConn{c.uc}
	case *gsoConn:
		var out []*net.UDPConn
		for _, s := range c.socks {
			out = append(out, s.uc)
		}
		return out
	}
	t.Fatalf("unknown conn type %T", c)
	return nil
}

var pmtuName = map[int]string{
	unix.IP_PMTUDISC_DONT: "DONT", unix.IP_PMTUDISC_WANT: "WANT",
	unix.IP_PMTUDISC_DO: "DO", unix.IP_PMTUDISC_PROBE: "PROBE",
}

// TestSetDontFragment checks the IPv4 DF policy of relay sockets on both
// datapaths: IP_PMTUDISC_DONT from OpenRelay on, DO after
// SetDontFragment(true), DONT again after false (RFC 8656 section 14, as the
// kernel path writes DF); listeners keep theirs (plain: the kernel default
// WANT; gso: DO with the oversize resend) and SetDontFragment leaves them
// alone; IPv6 relay sockets accept either setting without error.
func TestSetDontFragment(t *testing.T) {
	nop := func(Tx, Conn, netip.AddrPort, []byte) {}
	for _, tc := range []struct {
		name     string
		dp       func(t *testing.T) Datapath
		listener int
	}{
		{"plain", func(*testing.T) Datapath { return NewPlain() }, unix.IP_PMTUDISC_WANT},
		{"gso", func(t *testing.T) Datapath { return newGSO(t, GSOOptions{Loops: 2}) }, unix.IP_PMTUDISC_DO},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dp := tc.dp(t)
			defer dp.Close()
			expect := func(what string, c Conn, want int) {
				t.Helper()
				for i, uc := range udpConns(t, c) {
					if got := mtuDiscover(t, uc); got != want {
						t.Fatalf("%s socket %d: IP_MTU_DISCOVER %s, want %s", what, i, pmtuName[got], pmtuName[want])
					}
				}
			}
			rel, err := dp.OpenRelay(netip.MustParseAddrPort("127.0.0.1:0"), nop)
			if err != nil {
				t.Fatal(err)
			}
			expect("new relay", rel, unix.IP_PMTUDISC_DONT)
			for _, step := range []struct {
				on   bool
				want int
			}{{true, unix.IP_PMTUDISC_DO}, {true, unix.IP_PMTUDISC_DO}, {false, unix.IP_PMTUDISC_DONT}, {true, unix.IP_PMTUDISC_DO}} {
				if err := rel.SetDontFragment(step.on); err != nil {
					t.Fatal(err)
				}
				expect("relay", rel, step.want)
			}

			lis, err := dp.Listen(netip.MustParseAddrPort("127.0.0.1:0"), nop)
			if err != nil {
				t.Fatal(err)
			}
			expect("listener", lis, tc.listener)
			for _, on := range []bool{true, false} {
				if err := lis.SetDontFragment(on); err != nil {
					t.Fatalf("listener SetDontFragment(%v): %v", on, err)
				}
				expect("listener", lis, tc.listener)
			}

			rel6, err := dp.OpenRelay(netip.MustParseAddrPort("[::1]:0"), nop)
			if err != nil {
				t.Fatal(err)
			}
			for _, on := range []bool{true, false} {
				if err := rel6.SetDontFragment(on); err != nil {
					t.Fatalf("ipv6 relay SetDontFragment(%v): %v", on, err)
				}
			}
			rel6.Close()
			// Closed: IPv6 still never fails; IPv4 reports it.
			if err := rel6.SetDontFragment(true); err != nil {
				t.Fatalf("closed ipv6 relay: %v", err)
			}
			rel.Close()
			if err := rel.SetDontFragment(true); err == nil {
				t.Fatal("SetDontFragment on a closed IPv4 relay socket succeeded")
			}
		})
	}
}

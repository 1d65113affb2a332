package netns

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/privtest"
)

// TestTopologyCarriesUDP sends one datagram client -> peer through the relay
// namespace (the "direct" path) for each family, from sockets made with Do.
func TestTopologyCarriesUDP(t *testing.T) {
	privtest.Need(t, "ip", "ethtool", "ping")
	topo, err := NewTopology()
	if err != nil {
		t.Fatal(err)
	}
	defer topo.Close()
	for _, dst := range []netip.Addr{topo.PeerV4, topo.PeerV6} {
		var rx, tx *net.UDPConn
		if err := topo.Peer.Do(func() (err error) {
			rx, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 0)))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer rx.Close()
		if err := topo.Client.Do(func() (err error) {
			tx, err = net.ListenUDP("udp", nil)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer tx.Close()
		if _, err := tx.WriteToUDPAddrPort([]byte("hello"), rx.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
			t.Fatal(err)
		}
		rx.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 64)
		n, from, err := rx.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("%v: %v", dst, err)
		}
		if string(buf[:n]) != "hello" {
			t.Fatalf("got %q", buf[:n])
		}
		want := topo.ClientV4
		if dst.Is6() {
			want = topo.ClientV6
		}
		if from.Addr().Unmap() != want {
			t.Fatalf("from %v, want %v", from, want)
		}
	}
	names := []string{topo.Client.Name, topo.Relay.Name, topo.Peer.Name}
	if err := topo.Close(); err != nil {
		t.Fatal(err)
	}
	out, _ := Run("netns", "list")
	for _, n := range names {
		if contains(out, n) {
			t.Fatalf("namespace %s left behind", n)
		}
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

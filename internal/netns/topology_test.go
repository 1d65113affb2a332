package netns

import (
	"net"
	"net/netip"
	"strconv"
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

// TestIfindexIsTheNamespaces checks that Ifindex names the device inside the
// namespace, not a same-named one of the root namespace.
func TestIfindexIsTheNamespaces(t *testing.T) {
	privtest.Need(t, "ip", "ethtool", "ping")
	topo, err := NewTopology()
	if err != nil {
		t.Fatal(err)
	}
	defer topo.Close()
	idx, err := topo.Peer.Ifindex(topo.PeerIf)
	if err != nil {
		t.Fatal(err)
	}
	out, err := topo.Peer.IP("-o", "link", "show", "dev", topo.PeerIf)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, strconv.Itoa(idx)+":") {
		t.Fatalf("Ifindex(%s) = %d, but ip link says %q", topo.PeerIf, idx, out)
	}
	if _, err := topo.Peer.Ifindex("nonexistent0"); err == nil {
		t.Fatal("Ifindex of a missing interface succeeded")
	}
}

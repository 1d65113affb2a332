package netns

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/hybridrelay/hybridrelay/internal/privtest"
)

// sendAcross sends one datagram from the client namespace to dst in the
// peer namespace and returns the source address it arrived from, or the
// read error (a timeout after wait when nothing arrives).
func sendAcross(t *testing.T, topo *Topology, dst netip.Addr, wait time.Duration) (netip.Addr, error) {
	t.Helper()
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
		return netip.Addr{}, err
	}
	rx.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 64)
	n, from, err := rx.ReadFromUDPAddrPort(buf)
	if err != nil {
		return netip.Addr{}, err
	}
	if string(buf[:n]) != "hello" {
		t.Fatalf("got %q", buf[:n])
	}
	return from.Addr().Unmap(), nil
}

// TestTopologyCarriesUDP sends one datagram client -> peer through the
// relay namespace as an IP router (the router variant) for each family,
// from sockets made with Do.
func TestTopologyCarriesUDP(t *testing.T) {
	privtest.Need(t, "ip", "ethtool", "ping")
	// Client to peer without a relay needs the relay namespace to route.
	topo, err := NewTopologyWith(TopologyOptions{Forwarding: true})
	if err != nil {
		t.Fatal(err)
	}
	defer topo.Close()
	if v4, v6, err := topo.Forwarding(); err != nil || !v4 || !v6 {
		t.Fatalf("Forwarding() = %v, %v, %v; want on, on", v4, v6, err)
	}
	for _, dst := range []netip.Addr{topo.PeerV4, topo.PeerV6} {
		from, err := sendAcross(t, topo, dst, 3*time.Second)
		if err != nil {
			t.Fatalf("%v: %v", dst, err)
		}
		want := topo.ClientV4
		if dst.Is6() {
			want = topo.ClientV6
		}
		if from != want {
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

// TestDefaultTopologyDoesNotForward: the default topology is a server as it
// comes (forwarding off), so nothing crosses the relay namespace without a
// relay; SetForwarding switches routing on and off again, and Forwarding
// reads the state back.
func TestDefaultTopologyDoesNotForward(t *testing.T) {
	privtest.Need(t, "ip", "ethtool", "ping")
	topo, err := NewTopology()
	if err != nil {
		t.Fatal(err)
	}
	defer topo.Close()
	if v4, v6, err := topo.Forwarding(); err != nil || v4 || v6 {
		t.Fatalf("Forwarding() = %v, %v, %v; want off, off", v4, v6, err)
	}
	for _, dst := range []netip.Addr{topo.PeerV4, topo.PeerV6} {
		if from, err := sendAcross(t, topo, dst, 500*time.Millisecond); err == nil {
			t.Fatalf("%v: a datagram from %v crossed a relay namespace that does not forward", dst, from)
		}
	}
	if err := topo.SetForwarding(true); err != nil {
		t.Fatal(err)
	}
	if v4, v6, err := topo.Forwarding(); err != nil || !v4 || !v6 {
		t.Fatalf("after SetForwarding(true): %v, %v, %v", v4, v6, err)
	}
	for _, dst := range []netip.Addr{topo.PeerV4, topo.PeerV6} {
		if _, err := sendAcross(t, topo, dst, 3*time.Second); err != nil {
			t.Fatalf("%v with forwarding on: %v", dst, err)
		}
	}
	if err := topo.SetForwarding(false); err != nil {
		t.Fatal(err)
	}
	if v4, v6, err := topo.Forwarding(); err != nil || v4 || v6 {
		t.Fatalf("after SetForwarding(false): %v, %v, %v", v4, v6, err)
	}
	if _, err := sendAcross(t, topo, topo.PeerV4, 500*time.Millisecond); err == nil {
		t.Fatal("forwarding off again, but a datagram crossed")
	}
}

// TestDirectLink: with DirectLink the client reaches the peer's direct
// addresses over their own veth, from its direct address, with the relay
// namespace not forwarding; the XDP_PASS program covers those ends too and
// netlink reports its id on each.
func TestDirectLink(t *testing.T) {
	privtest.Need(t, "ip", "ethtool", "ping")
	topo, err := NewTopologyWith(TopologyOptions{DirectLink: true})
	if err != nil {
		t.Fatal(err)
	}
	defer topo.Close()
	for _, c := range []struct{ dst, want netip.Addr }{
		{topo.DirectPeerV4, topo.DirectClientV4}, {topo.DirectPeerV6, topo.DirectClientV6},
	} {
		from, err := sendAcross(t, topo, c.dst, 3*time.Second)
		if err != nil {
			t.Fatalf("%v: %v", c.dst, err)
		}
		if from != c.want {
			t.Fatalf("from %v, want %v", from, c.want)
		}
	}
	if ids, err := topo.Relay.XDPProgramIDs(topo.RelayClientIf); err != nil || len(ids) != 0 {
		t.Fatalf("relay interface before any attach: %v %v", ids, err)
	}
	links, err := topo.AttachXDPPass()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, l := range links {
			l.Close()
		}
	}()
	if len(links) != 4 {
		t.Fatalf("%d links, want 4 (client, peer, both direct ends)", len(links))
	}
	var first ebpf.ProgramID
	for _, end := range []struct {
		ns *NS
		If string
	}{{topo.Client, topo.ClientIf}, {topo.Peer, topo.PeerIf}, {topo.Client, topo.DirectClientIf}, {topo.Peer, topo.DirectPeerIf}} {
		ids, err := end.ns.XDPProgramIDs(end.If)
		if err != nil || len(ids) != 1 {
			t.Fatalf("%s in %s: %v %v", end.If, end.ns.Name, ids, err)
		}
		if first == 0 {
			first = ids[0]
		} else if ids[0] != first {
			t.Fatalf("%s runs program %d, the others %d", end.If, ids[0], first)
		}
	}
}

func TestParseXDPProgIDs(t *testing.T) {
	tests := []struct {
		name, in string
		want     []ebpf.ProgramID
		wantErr  bool
	}{
		{"none", `[{"ifindex":2,"ifname":"cli0","flags":["UP"]}]`, nil, false},
		{"one", `[{"ifindex":2,"ifname":"cli0","xdp":{"mode":1,"prog":{"id":42,"name":"x","tag":"t","jited":1}}}]`, []ebpf.ProgramID{42}, false},
		{"one, as iproute2 6.x prints it", `[{"ifname":"eth0","xdp":{"mode":1,"prog":{"id":97},"attached":[{"mode":1,"prog":{"id":97}}]}}]`, []ebpf.ProgramID{97}, false},
		{"several modes", `[{"ifname":"cli0","xdp":{"mode":4,"attached":[{"mode":1,"prog":{"id":7}},{"mode":2,"prog":{"id":9}}]}}]`, []ebpf.ProgramID{7, 9}, false},
		{"no id", `[{"ifname":"cli0","xdp":{"mode":1}}]`, nil, true},
		{"two links", `[{"ifname":"a"},{"ifname":"b"}]`, nil, true},
		{"not json", `Device "x" does not exist.`, nil, true},
	}
	for _, tt := range tests {
		got, err := parseXDPProgIDs([]byte(tt.in))
		if (err != nil) != tt.wantErr || fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("%s: %v %v, want %v (error %v)", tt.name, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestParseSysctlBool(t *testing.T) {
	for in, want := range map[string]bool{"0\n": false, "1\n": true, "1": true} {
		if got, err := parseSysctlBool(in); err != nil || got != want {
			t.Errorf("%q: %v %v", in, got, err)
		}
	}
	for _, in := range []string{"2\n", "", "on"} {
		if _, err := parseSysctlBool(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

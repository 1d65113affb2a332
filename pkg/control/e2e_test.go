package control

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/turn/v4"

	"github.com/hybridrelay/hybridrelay/internal/testutil"
	"github.com/hybridrelay/hybridrelay/internal/testutil/turntest"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// pionClient is a pion/turn v4 client (a real client nobody here wrote)
// allocated on s.
type pionClient struct {
	c     *turn.Client
	relay net.PacketConn
}

func newPionClient(t *testing.T, network string, server netip.AddrPort, user, pass string) *pionClient {
	t.Helper()
	var conn net.PacketConn
	var err error
	switch network {
	case "udp":
		conn, err = net.ListenPacket("udp", netip.AddrPortFrom(server.Addr(), 0).String())
	case "tcp":
		var tc net.Conn
		tc, err = net.Dial("tcp", server.String())
		if err == nil {
			conn = turn.NewSTUNConn(tc)
		}
	}
	if err != nil {
		t.Fatalf("client socket: %v", err)
	}
	p := turntest.NewPionClient(t, turntest.PionConfig{Conn: conn, Server: server, User: user, Pass: pass, Realm: testRealm})
	return &pionClient{c: p.Client, relay: p.Relay}
}

func (p *pionClient) relayAddr() netip.AddrPort {
	return p.relay.LocalAddr().(*net.UDPAddr).AddrPort()
}

// exchange sends n distinct payloads from the client to the peer and back,
// checking every byte, and returns when all arrived.
func exchange(t *testing.T, pc *pionClient, peer *udpPeer, n int, tag string) {
	t.Helper()
	for i := 0; i < n; i++ {
		want := []byte(fmt.Sprintf("%s client->peer %d %s", tag, i, bytes.Repeat([]byte{byte(i)}, i%50)))
		if _, err := pc.relay.WriteTo(want, net.UDPAddrFromAddrPort(peer.addr())); err != nil {
			t.Fatalf("relay WriteTo: %v", err)
		}
		got, from, err := peer.recv(2 * time.Second)
		if err != nil {
			t.Fatalf("%s: peer did not receive datagram %d: %v", tag, i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: peer got %q, want %q", tag, got, want)
		}
		if from != pc.relayAddr() {
			t.Fatalf("%s: datagram came from %v, want relay %v", tag, from, pc.relayAddr())
		}
		back := []byte(fmt.Sprintf("%s peer->client %d %s", tag, i, bytes.Repeat([]byte{0xA5}, i%7)))
		peer.send(back, pc.relayAddr())
		buf := make([]byte, 2000)
		pc.relay.SetReadDeadline(time.Now().Add(2 * time.Second))
		nr, src, err := pc.relay.ReadFrom(buf)
		if err != nil {
			t.Fatalf("%s: client did not receive reply %d: %v", tag, i, err)
		}
		if !bytes.Equal(buf[:nr], back) {
			t.Fatalf("%s: client got %q, want %q", tag, buf[:nr], back)
		}
		if src.(*net.UDPAddr).AddrPort() != peer.addr() {
			t.Fatalf("%s: reply attributed to %v, want %v", tag, src, peer.addr())
		}
	}
}

// datapaths are the userspace datapaths the server runs on: the control
// plane must behave the same on each (gso batches sends made through tx).
func datapaths(t *testing.T) map[string]func() dataplane.Datapath {
	return map[string]func() dataplane.Datapath{
		"plain": dataplane.NewPlain,
		"gso": func() dataplane.Datapath {
			dp, err := dataplane.NewGSO(dataplane.GSOOptions{Loops: 2, SocketBuffer: 1 << 20})
			if err != nil {
				t.Skipf("gso datapath: %v", err)
			}
			return dp
		},
	}
}

func TestPionClientEndToEnd(t *testing.T) {
	for dpName, newDP := range datapaths(t) {
		for _, network := range []string{"udp", "tcp"} {
			t.Run(dpName+"/"+network, func(t *testing.T) {
				s := startServer(t, func(_ *Config, o *Options) { o.Datapath = newDP() })
				pionEndToEnd(t, s, network)
			})
		}
	}
}

func pionEndToEnd(t *testing.T, s *Server, network string) {
	peer := newPeer(t, "127.0.0.1:0")
	pc := newPionClient(t, network, s.addr(network), testUser, testPass)
	// The first datagrams go as Send indications while pion binds
	// a channel in the background; later ones as ChannelData.
	exchange(t, pc, peer, 5, "warmup")
	testutil.WaitFor(t, 3*time.Second, "channel binding", func() bool {
		as := s.Allocations()
		return len(as) == 1 && len(as[0].Channels) == 1
	})
	before := s.Stats()
	exchange(t, pc, peer, 20, "channel")
	after := s.Stats()
	if d := after.UserspaceToPeer.Packets - before.UserspaceToPeer.Packets; d != 20 {
		t.Errorf("to-peer packets counted %d, want 20", d)
	}
	if after.DataIndications != before.DataIndications {
		t.Errorf("data indications sent after the channel was bound")
	}
	as := s.Allocations()
	if as[0].LastActivity.IsZero() || as[0].Channels[0].LastActivity.IsZero() {
		t.Errorf("no activity recorded: %+v", as[0])
	}
	if as[0].Username != testUser || as[0].Transport != network {
		t.Errorf("allocation info %+v", as[0])
	}
}

// TestHairpin relays between two allocations of the same server: each
// client's peer is the other one's relayed address (docs/design.md "Security
// defaults": relay addresses stay reachable even though loopback, where
// they live in this test, is otherwise denied).
func TestHairpin(t *testing.T) {
	for dpName, newDP := range datapaths(t) {
		t.Run(dpName, func(t *testing.T) {
			s := startServer(t, func(c *Config, o *Options) {
				c.AllowPeers = nil
				o.Datapath = newDP()
			})
			hairpin(t, s)
		})
	}
}

func hairpin(t *testing.T, s *Server) {
	a := newPionClient(t, "udp", s.addr("udp"), testUser, testPass)
	b := newPionClient(t, "udp", s.addr("udp"), "bob", "builder")
	// Both sides need a permission for the other's relay address.
	if err := a.c.CreatePermission(net.UDPAddrFromAddrPort(b.relayAddr())); err != nil {
		t.Fatalf("permission a->b: %v", err)
	}
	if err := b.c.CreatePermission(net.UDPAddrFromAddrPort(a.relayAddr())); err != nil {
		t.Fatalf("permission b->a: %v", err)
	}
	for i := 0; i < 20; i++ {
		msg := []byte(fmt.Sprintf("hairpin %d", i))
		if _, err := a.relay.WriteTo(msg, net.UDPAddrFromAddrPort(b.relayAddr())); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1500)
		b.relay.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, from, err := b.relay.ReadFrom(buf)
		if err != nil {
			t.Fatalf("b did not receive %d: %v", i, err)
		}
		if !bytes.Equal(buf[:n], msg) || from.(*net.UDPAddr).AddrPort() != a.relayAddr() {
			t.Fatalf("b got %q from %v", buf[:n], from)
		}
		reply := []byte(fmt.Sprintf("hairpin reply %d", i))
		if _, err := b.relay.WriteTo(reply, from); err != nil {
			t.Fatal(err)
		}
		a.relay.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, from, err = a.relay.ReadFrom(buf)
		if err != nil {
			t.Fatalf("a did not receive reply %d: %v", i, err)
		}
		if !bytes.Equal(buf[:n], reply) || from.(*net.UDPAddr).AddrPort() != b.relayAddr() {
			t.Fatalf("a got %q from %v", buf[:n], from)
		}
	}
	// A loopback peer that is not one of our relay sockets stays denied.
	if err := a.c.CreatePermission(&net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 9}); err == nil {
		t.Errorf("permission for a loopback non-relay peer was granted")
	}
}

package turnclient

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/pion/turn/v4"
)

const testRealm = "hybridrelay.test"

// pionServer runs pion/turn (a TURN server nobody here wrote) on loopback,
// accepting user "alice"/"wonderland" and REST credentials of secret
// "rest-secret".
func pionServer(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rest := turn.LongTermTURNRESTAuthHandler("rest-secret", nil)
	srv, err := turn.NewServer(turn.ServerConfig{
		Realm: testRealm,
		AuthHandler: func(username, realm string, src net.Addr) ([]byte, bool) {
			if username == "alice" {
				return turn.GenerateAuthKey(username, realm, "wonderland"), true
			}
			return rest(username, realm, src)
		},
		PacketConnConfigs: []turn.PacketConnConfig{{
			PacketConn: pc,
			RelayAddressGenerator: &turn.RelayAddressGeneratorStatic{
				RelayAddress: net.ParseIP("127.0.0.1"),
				Address:      "127.0.0.1",
			},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

func TestClientAgainstPionServer(t *testing.T) {
	server := pionServer(t)
	tests := []struct {
		name  string
		creds Credentials
	}{
		{"long-term", Credentials{"alice", "wonderland"}},
		{"rest", RESTCredentials("rest-secret", "bob", time.Now().Add(time.Hour))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := New(Config{Server: server, Credentials: tt.creds, Local: netip.MustParseAddrPort("127.0.0.1:0")})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			a, err := c.Allocate(ctx, AllocateOptions{Lifetime: 300 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if !a.Relayed.IsValid() || a.Lifetime <= 0 || a.Mapped != c.LocalAddr() {
				t.Fatalf("allocation %+v, local %v", a, c.LocalAddr())
			}
			peer := loopbackPeer(t)
			relayBothWays(ctx, t, c, a, peer, 0x4001)

			// Refresh while an external reader owns the socket.
			stop := make(chan struct{})
			done := make(chan struct{})
			c.SetExternalReader(true)
			go func() {
				defer close(done)
				buf := make([]byte, 2048)
				for {
					select {
					case <-stop:
						return
					default:
					}
					c.Conn().SetReadDeadline(time.Now().Add(50 * time.Millisecond))
					n, _, err := c.Conn().ReadFromUDPAddrPort(buf)
					if err == nil {
						c.Deliver(buf[:n])
					}
				}
			}()
			lt, err := c.Refresh(ctx, 120*time.Second)
			close(stop)
			<-done
			c.SetExternalReader(false)
			if err != nil || lt != 120*time.Second {
				t.Fatalf("refresh: %v %v", lt, err)
			}
			if err := c.Release(ctx); err != nil {
				t.Fatal(err)
			}
			// The allocation is gone: the channel no longer relays.
			if err := c.SendChannelData(0x4001, []byte("after release")); err != nil {
				t.Fatal(err)
			}
			peer.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if n, _, err := peer.ReadFromUDPAddrPort(make([]byte, 64)); err == nil {
				t.Fatalf("peer got %d bytes after the allocation was released", n)
			}
		})
	}
}

func TestClientWrongPassword(t *testing.T) {
	server := pionServer(t)
	c, err := New(Config{Server: server, Credentials: Credentials{"alice", "nope"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = c.Allocate(ctx, AllocateOptions{})
	var er *ErrorResponse
	// RFC 8489 section 9.2.4 says 401; pion/turn answers a failed
	// MESSAGE-INTEGRITY check with 400. Either must end the attempt.
	if !errors.As(err, &er) || (er.Code != stun.CodeUnauthorized && er.Code != stun.CodeBadRequest) {
		t.Fatalf("allocate with a wrong password: %v, want 401 or 400", err)
	}
}

func TestClientSharedNonce(t *testing.T) {
	server := pionServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	creds := Credentials{"alice", "wonderland"}
	first, err := New(Config{Server: server, Credentials: creds})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if _, err := first.Allocate(ctx, AllocateOptions{}); err != nil {
		t.Fatal(err)
	}
	realm, nonce := first.Nonce()
	if realm != testRealm || nonce == "" {
		t.Fatalf("realm %q nonce %q", realm, nonce)
	}
	second, err := New(Config{Server: server, Credentials: creds})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	second.SetNonce(realm, nonce)
	if _, err := second.Allocate(ctx, AllocateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A stale or foreign nonce is recovered from (401/438 then retry).
	third, err := New(Config{Server: server, Credentials: creds})
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	third.SetNonce(realm, "not-a-nonce-the-server-gave")
	if _, err := third.Allocate(ctx, AllocateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestClientTimeout(t *testing.T) {
	// A socket that never answers.
	sink, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	c, err := New(Config{Server: sink.LocalAddr().(*net.UDPAddr).AddrPort(), RTO: 20 * time.Millisecond, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Binding(context.Background()); !errors.Is(err, ErrTimeout) {
		t.Fatalf("binding to a silent socket: %v", err)
	}
}

// loopbackPeer is a peer's UDP socket on 127.0.0.1, closed at cleanup.
func loopbackPeer(t *testing.T) *net.UDPConn {
	t.Helper()
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	return peer
}

// relayBothWays exchanges data with peer through allocation a, each way
// the client can: a Send indication after CreatePermission, the peer's
// answer as a Data indication, then ChannelData both ways on channel ch
// (RFC 8656 sections 11 and 12).
func relayBothWays(ctx context.Context, t *testing.T, c *Client, a Allocation, peer *net.UDPConn, ch uint16) {
	t.Helper()
	peerAddr := peer.LocalAddr().(*net.UDPAddr).AddrPort()

	// Send indication after CreatePermission.
	if err := c.CreatePermission(ctx, peerAddr.Addr()); err != nil {
		t.Fatal(err)
	}
	if err := c.SendIndication(peerAddr, []byte("via send")); err != nil {
		t.Fatal(err)
	}
	expectAt(t, peer, "via send", a.Relayed)

	// Peer -> client without a channel: Data indication.
	if _, err := peer.WriteToUDPAddrPort([]byte("back as data"), a.Relayed); err != nil {
		t.Fatal(err)
	}
	p, data, err := ParseDataIndication(readClient(t, c))
	if err != nil || p != peerAddr || string(data) != "back as data" {
		t.Fatalf("data indication: %v %v %q", err, p, data)
	}

	// ChannelData both ways.
	if err := c.ChannelBind(ctx, ch, peerAddr); err != nil {
		t.Fatal(err)
	}
	if err := c.SendChannelData(ch, []byte("via channel")); err != nil {
		t.Fatal(err)
	}
	expectAt(t, peer, "via channel", a.Relayed)
	if _, err := peer.WriteToUDPAddrPort([]byte("back on channel"), a.Relayed); err != nil {
		t.Fatal(err)
	}
	got, data, err := ParseChannelData(readClient(t, c))
	if err != nil || got != ch || string(data) != "back on channel" {
		t.Fatalf("channeldata: %v %x %q", err, got, data)
	}
}

func expectAt(t *testing.T, peer *net.UDPConn, want string, from netip.AddrPort) {
	t.Helper()
	buf := make([]byte, 2048)
	peer.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, src, err := peer.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("peer read: %v", err)
	}
	if string(buf[:n]) != want || src.Port() != from.Port() {
		t.Fatalf("peer got %q from %v, want %q from %v", buf[:n], src, want, from)
	}
}

func readClient(t *testing.T, c *Client) []byte {
	t.Helper()
	buf := make([]byte, 2048)
	c.Conn().SetReadDeadline(time.Now().Add(3 * time.Second))
	n, _, err := c.Conn().ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("client read: %v", err)
	}
	return bytes.Clone(buf[:n])
}

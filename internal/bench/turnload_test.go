package bench

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/pion/turn/v4"

	"github.com/hybridrelay/hybridrelay/internal/testutil"
	"github.com/hybridrelay/hybridrelay/internal/turnclient"
)

// pionServer runs pion/turn on loopback with REST secret "s" and user
// "u"/"p": a TURN server nobody here wrote, to test the load client before
// and independently of hybridrelay's own.
func pionServer(t *testing.T) *net.UDPConn {
	t.Helper()
	pc := listen(t, "udp4", "127.0.0.1:0")
	rest := turn.LongTermTURNRESTAuthHandler("s", nil)
	srv, err := turn.NewServer(turn.ServerConfig{
		Realm: "bench.test",
		AuthHandler: func(user, realm string, src net.Addr) ([]byte, bool) {
			if user == "u" {
				return turn.GenerateAuthKey(user, realm, "p"), true
			}
			return rest(user, realm, src)
		},
		PacketConnConfigs: []turn.PacketConnConfig{{PacketConn: pc, RelayAddressGenerator: &turn.RelayAddressGeneratorStatic{RelayAddress: net.IPv4(127, 0, 0, 1), Address: "127.0.0.1"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return pc
}

func TestTURNLoadBothDirections(t *testing.T) {
	server := pionServer(t)
	tests := []struct {
		name string
		cfg  TURNConfig
	}{
		{"rest channeldata", TURNConfig{Secret: "s", UserPrefix: "load", Allocations: 20}},
		{"long-term send indications", TURNConfig{Users: []turnclient.Credentials{{Username: "u", Password: "p"}}, Allocations: 5, SendIndications: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			peer := listen(t, "udp4", "127.0.0.1:0")
			cfg := tt.cfg
			cfg.Server = addrOf(server)
			cfg.Peer = addrOf(peer)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			load, err := SetupTURN(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer load.Close()
			n := cfg.Allocations
			const per = 40

			// client -> peer
			sink := NewReceiver(RecvConfig{Conns: []*net.UDPConn{peer}, Flows: n})
			if err := sink.Start(); err != nil {
				t.Fatal(err)
			}
			g, err := NewGenerator(GenConfig{Flows: load.ClientFlows(), PayloadSize: 160, Rate: 400, Duration: 5 * time.Second, MaxPackets: uint64(n * per)})
			if err != nil {
				t.Fatal(err)
			}
			if err := g.Run(ctx); err != nil {
				t.Fatal(err)
			}
			waitFor(func() bool { return sink.Packets() >= g.Sent() })
			sink.Stop()
			if sink.Packets() != g.Sent() || g.Sent() != uint64(n*per) {
				t.Fatalf("client->peer: sent %d, peer got %d", g.Sent(), sink.Packets())
			}
			for i := 0; i < n; i++ {
				if sink.FlowPackets(i) != g.FlowSent(i) {
					t.Fatalf("flow %d: %d of %d", i, sink.FlowPackets(i), g.FlowSent(i))
				}
			}

			// peer -> client (ChannelData or Data indications), while a
			// refresh runs through the receiver's Control demux.
			back := NewReceiver(RecvConfig{Conns: load.Conns(), Flows: n, Control: load.Control()})
			if err := back.Start(); err != nil {
				t.Fatal(err)
			}
			if err := load.Refresh(ctx); err != nil {
				t.Fatal(err)
			}
			g2, err := NewGenerator(GenConfig{Flows: load.PeerFlows(peer), PayloadSize: 160, Rate: 400, Duration: 5 * time.Second, MaxPackets: uint64(n * per)})
			if err != nil {
				t.Fatal(err)
			}
			if err := g2.Run(ctx); err != nil {
				t.Fatal(err)
			}
			waitFor(func() bool { return back.Packets() >= g2.Sent() })
			back.Stop()
			if back.Packets() != g2.Sent() || back.Invalid() != 0 {
				t.Fatalf("peer->client: sent %d, clients got %d (invalid %d)", g2.Sent(), back.Packets(), back.Invalid())
			}
		})
	}
}

// waitFor gives cond 3 s to hold; the caller then checks and says what
// arrived.
func waitFor(cond func() bool) { testutil.Poll(3*time.Second, cond) }

package xdpe2e

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/internal/privtest"
	"github.com/hybridrelay/hybridrelay/internal/testutil/turntest"
	"github.com/hybridrelay/hybridrelay/internal/turnclient"
	"github.com/hybridrelay/hybridrelay/pkg/control"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
	"github.com/hybridrelay/hybridrelay/pkg/loader"
	"github.com/pion/stun/v3"
	"github.com/pion/turn/v4"
)

const (
	user, pass, realm = "alice", "wonderland", "xdpe2e"
	listenPort        = 3478
)

// env is one topology with the XDP path attached and a relay server in
// the relay namespace.
type env struct {
	topo *netns.Topology
	path *Path
	srv  *control.Server
	v6   bool
	cfg  control.Config
	opts control.Options
}

func (e *env) listener() netip.AddrPort {
	if e.v6 {
		return netip.AddrPortFrom(e.topo.RelayClientV6, listenPort)
	}
	return netip.AddrPortFrom(e.topo.RelayClientV4, listenPort)
}

func (e *env) clientIP() netip.Addr {
	if e.v6 {
		return e.topo.ClientV6
	}
	return e.topo.ClientV4
}

func (e *env) peerIP() netip.Addr {
	if e.v6 {
		return e.topo.PeerV6
	}
	return e.topo.PeerV4
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(ioDiscard{}, nil))
}

type ioDiscard struct{}

func (ioDiscard) Write(b []byte) (int, error) { return len(b), nil }

// forEachVariant runs test once per relay-host variant (netns.Variants), as
// subtests: with default sysctls (forwarding off, a server as it comes,
// where the kernel path must not depend on the kernel's own forwarding;
// docs/design.md, "Invariants for the kernel path" 6) and as an IP router.
func forEachVariant(t *testing.T, test func(t *testing.T, topo netns.TopologyOptions)) {
	for _, v := range netns.Variants() {
		t.Run(v.Name, func(t *testing.T) { test(t, v.Options) })
	}
}

// newEnv builds the topology, attaches the program and starts a server
// listening on the relay's client-side address with relay addresses on its
// peer side (only the one family, so allocations are of that family).
func newEnv(t *testing.T, to netns.TopologyOptions, v6 bool, mod func(*control.Config)) *env {
	t.Helper()
	return newEnvMax(t, to, v6, 64, mod)
}

// newEnvMax is newEnv with maps for maxChannels channels.
func newEnvMax(t *testing.T, to netns.TopologyOptions, v6 bool, maxChannels int, mod func(*control.Config)) *env {
	t.Helper()
	return newEnvDP(t, to, v6, maxChannels, dataplane.NewPlain(), mod)
}

// newEnvDP is newEnvMax with the given userspace datapath (the hybrid
// `xdp` mode runs the GSO datapath beside the kernel path).
func newEnvDP(t *testing.T, to netns.TopologyOptions, v6 bool, maxChannels int, dp dataplane.Datapath, mod func(*control.Config)) *env {
	t.Helper()
	return newEnvWith(t, envOptions{topo: to, v6: v6, maxChannels: maxChannels, dp: dp, mod: mod})
}

// envOptions are newEnvWith's arguments.
type envOptions struct {
	topo        netns.TopologyOptions
	v6          bool
	maxChannels int
	dp          dataplane.Datapath
	mod         func(*control.Config)
	// noOffload leaves the program attached but gives the server no
	// kernel offload: the userspace datapath alone relays.
	noOffload bool
}

func newEnvWith(t *testing.T, o envOptions) *env {
	t.Helper()
	to, v6, maxChannels, dp, mod := o.topo, o.v6, o.maxChannels, o.dp, o.mod
	privtest.Need(t, "ip", "ethtool", "ping")
	topo := netns.ForTest(t, to)
	p, err := Attach(topo, Options{MaxChannels: maxChannels})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("detach xdp: %v", err)
		}
	})
	t.Cleanup(func() { dp.Close() }) // after the servers' Close (cleanups run last-in first-out)
	e := &env{topo: topo, path: p, v6: v6}
	cfg := control.DefaultConfig()
	relayIP := topo.RelayPeerV4
	if v6 {
		relayIP = topo.RelayPeerV6
	}
	cfg.Listeners = []control.ListenerSpec{{Network: "udp", Addr: e.listener()}}
	cfg.RelayIPs = []netip.Addr{relayIP}
	cfg.Users = map[string]string{user: pass, "bob": "builder", "carol": "secret"}
	cfg.Realm = realm
	cfg.AllowPeers = []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("2001:2::/48")}
	if mod != nil {
		mod(&cfg)
	}
	e.cfg = cfg
	e.opts = control.Options{
		Datapath:  turntest.InNamespace(dp, topo.Relay),
		Offload:   p.Offload(),
		Logger:    testLogger(t),
		StateFile: filepath.Join(t.TempDir(), "state.json"),
	}
	if o.noOffload {
		e.opts.Offload = nil
	}
	e.start(t)
	return e
}

func (e *env) start(t *testing.T) {
	t.Helper()
	srv, err := control.NewServer(e.cfg, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	t.Cleanup(func() { srv.Close() })
}

// peer is a UDP socket in the peer namespace.
type peer struct {
	conn *net.UDPConn
}

func newPeer(t *testing.T, e *env, port uint16) *peer {
	t.Helper()
	var c *net.UDPConn
	err := e.topo.Peer.Do(func() (err error) {
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(e.peerIP(), port)))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &peer{conn: c}
}

func (p *peer) addr() netip.AddrPort { return p.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (p *peer) recv(timeout time.Duration) ([]byte, netip.AddrPort, error) {
	buf := make([]byte, 2048)
	p.conn.SetReadDeadline(time.Now().Add(timeout))
	n, from, err := p.conn.ReadFromUDPAddrPort(buf)
	return buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), err
}

// pionClient is a pion/turn v4 client in the client namespace.
type pionClient struct {
	c     *turn.Client
	relay net.PacketConn
}

func newPion(t *testing.T, e *env) *pionClient {
	t.Helper()
	var conn net.PacketConn
	err := e.topo.Client.Do(func() (err error) {
		conn, err = net.ListenPacket("udp", netip.AddrPortFrom(e.clientIP(), 0).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	p := turntest.NewPionClient(t, turntest.PionConfig{Conn: conn, Server: e.listener(), User: user, Pass: pass, Realm: realm, AnyFamily: true})
	return &pionClient{c: p.Client, relay: p.Relay}
}

func (p *pionClient) relayAddr() netip.AddrPort {
	return p.relay.LocalAddr().(*net.UDPAddr).AddrPort()
}

// exchange sends n payloads client -> peer and n replies peer -> client,
// one round trip at a time, checking every byte and the addresses.
func exchange(t *testing.T, pc *pionClient, pr *peer, n int, tag string) {
	t.Helper()
	for i := 0; i < n; i++ {
		want := []byte(fmt.Sprintf("%s c->p %d %s", tag, i, bytes.Repeat([]byte{byte(i)}, (i*37)%400)))
		if _, err := pc.relay.WriteTo(want, net.UDPAddrFromAddrPort(pr.addr())); err != nil {
			t.Fatalf("%s: relay write: %v", tag, err)
		}
		got, from, err := pr.recv(3 * time.Second)
		if err != nil {
			t.Fatalf("%s: peer did not receive %d: %v", tag, i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: peer got %x, want %x", tag, got, want)
		}
		if from != pc.relayAddr() {
			t.Fatalf("%s: from %v, want relay %v", tag, from, pc.relayAddr())
		}
		back := []byte(fmt.Sprintf("%s p->c %d %s", tag, i, bytes.Repeat([]byte{0xA5, byte(i)}, (i*13)%300)))
		if _, err := pr.conn.WriteToUDPAddrPort(back, pc.relayAddr()); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 2048)
		pc.relay.SetReadDeadline(time.Now().Add(3 * time.Second))
		nr, src, err := pc.relay.ReadFrom(buf)
		if err != nil {
			t.Fatalf("%s: client did not receive reply %d: %v", tag, i, err)
		}
		if !bytes.Equal(buf[:nr], back) {
			t.Fatalf("%s: client got %x, want %x", tag, buf[:nr], back)
		}
		if ap := src.(*net.UDPAddr).AddrPort(); netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()) != pr.addr() {
			t.Fatalf("%s: reply from %v, want %v", tag, src, pr.addr())
		}
	}
}

func offloadedChannels(s *control.Server) int {
	n := 0
	for _, a := range s.Allocations() {
		for _, c := range a.Channels {
			if c.Offloaded {
				n++
			}
		}
	}
	return n
}

func counters(t *testing.T, x *loader.XDP) loader.Counters {
	t.Helper()
	c, err := x.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// rawClient is the project's small TURN client (internal/turnclient) in
// the client namespace, for steps pion does not expose (explicit
// ChannelBind, Send indications, waiting for a channel to expire).
type rawClient struct {
	*turnclient.Client
	relayed netip.AddrPort
}

func newRaw(t *testing.T, e *env, name, password string) *rawClient {
	t.Helper()
	var conn *net.UDPConn
	err := e.topo.Client.Do(func() (err error) {
		conn, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(e.clientIP(), 0)))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := turnclient.New(turnclient.Config{
		Server:      e.listener(),
		Conn:        conn,
		Credentials: turnclient.Credentials{Username: name, Password: password},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a, err := c.Allocate(ctx, turnclient.AllocateOptions{IPv6: e.v6})
	if err != nil {
		t.Fatalf("allocate: %v", err)
	}
	return &rawClient{Client: c, relayed: a.Relayed}
}

func (c *rawClient) bind(t *testing.T, ch uint16, peer netip.AddrPort) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.ChannelBind(ctx, ch, peer); err != nil {
		t.Fatalf("channel bind: %v", err)
	}
}

// read returns the next datagram from the server, decoded: a ChannelData
// message (ch != 0) or a Data indication (ch == 0, from = its peer).
func (c *rawClient) read(timeout time.Duration) (ch uint16, data []byte, from netip.AddrPort, err error) {
	buf := make([]byte, 2048)
	c.Conn().SetReadDeadline(time.Now().Add(timeout))
	n, _, err := c.Conn().ReadFromUDPAddrPort(buf)
	if err != nil {
		return 0, nil, from, err
	}
	b := buf[:n]
	if turnclient.IsChannelData(b) {
		ch, data, err = turnclient.ParseChannelData(b)
		return ch, data, from, err
	}
	m := &stun.Message{Raw: b}
	if err := m.Decode(); err != nil {
		return 0, nil, from, err
	}
	if m.Type != stun.NewType(stun.MethodData, stun.ClassIndication) {
		return 0, nil, from, fmt.Errorf("unexpected %v", m.Type)
	}
	data, err = m.Get(stun.AttrData)
	if err != nil {
		return 0, nil, from, err
	}
	var xa stun.XORMappedAddress
	if err := xa.GetFromAs(m, stun.AttrXORPeerAddress); err != nil {
		return 0, nil, from, err
	}
	ip, _ := netip.AddrFromSlice(xa.IP)
	return 0, data, netip.AddrPortFrom(ip.Unmap(), uint16(xa.Port)), nil
}

package interop

import (
	"bufio"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/pion/turn/v4"

	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/internal/privtest"
	"github.com/hybridrelay/hybridrelay/pkg/control"
)

// netnsRelay is a server process in the relay namespace of a
// netns.Topology, serving the client side (198.18.0.2, 2001:2::2) and
// relaying from the peer side (198.18.1.2, 2001:2:0:1::2). Unlike the
// loopback tests it runs with the default peer policy: no allow-list.
type netnsRelay struct {
	topo         *netns.Topology
	addr4, addr6 netip.AddrPort // UDP and TCP
	stats        control.ServerStats
	statsOK      bool
	stop         func()
}

// startNetnsRelay builds the topology and starts this test binary as a
// server (see serverHelperEnv) inside the relay namespace. t.Cleanup stops
// it and removes the namespaces. mods adjust the configuration.
func startNetnsRelay(t *testing.T, mods ...func(*control.Config)) *netnsRelay {
	t.Helper()
	return startNetnsRelayWith(t, func(_ *netns.Topology, c *control.Config) {
		for _, mod := range mods {
			mod(c)
		}
	})
}

// startNetnsRelayWith is startNetnsRelay with a hook that may change the
// relay namespace (add addresses) and the configuration before the server
// starts.
func startNetnsRelayWith(t *testing.T, tweak func(*netns.Topology, *control.Config)) *netnsRelay {
	t.Helper()
	topo := netns.ForTest(t, netns.TopologyOptions{})
	const port = 3478
	cfg := control.DefaultConfig()
	cfg.Listeners = []control.ListenerSpec{
		{Network: "udp", Addr: netip.AddrPortFrom(topo.RelayClientV4, port)},
		{Network: "tcp", Addr: netip.AddrPortFrom(topo.RelayClientV4, port)},
		{Network: "udp", Addr: netip.AddrPortFrom(topo.RelayClientV6, port)},
		{Network: "tcp", Addr: netip.AddrPortFrom(topo.RelayClientV6, port)},
	}
	cfg.RelayIPs = []netip.Addr{topo.RelayPeerV4, topo.RelayPeerV6}
	cfg.Realm = testRealm
	cfg.Users = map[string]string{testUser: testPass}
	cfg.AuthSecrets = []string{testSecret}
	cfg.Datapath = "plain"
	if tweak != nil {
		tweak(topo, &cfg)
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := topo.Relay.Exec(self, "-test.run=^$")
	cmd.Env = append(os.Environ(), serverHelperEnv+"="+string(cfgJSON))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start server helper: %v", err)
	}
	r := &netnsRelay{topo: topo,
		addr4: netip.AddrPortFrom(topo.RelayClientV4, port), addr6: netip.AddrPortFrom(topo.RelayClientV6, port)}
	lines := make(chan string, 2)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	done := make(chan error, 1)
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			_ = stdin.Close() // the helper closes the server and prints its stats
			select {
			case line, ok := <-lines:
				if ok && json.Unmarshal([]byte(line), &r.stats) == nil {
					r.statsOK = true
				}
			case <-time.After(5 * time.Second):
			}
			go func() { done <- cmd.Wait() }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-done
			}
		})
	}
	t.Cleanup(r.stop) // runs before the namespaces are removed
	select {
	case line, ok := <-lines:
		var ready helperReady
		if !ok || json.Unmarshal([]byte(line), &ready) != nil || len(ready.Addrs) != len(cfg.Listeners) {
			t.Fatalf("server helper did not start: %q\n%s", line, stderr.Bytes())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("server helper not ready after 10 s\n%s", stderr.Bytes())
	}
	return r
}

// startNetnsPeer runs turnutils_peer in the peer namespace on ip.
func startNetnsPeer(t *testing.T, r *netnsRelay, ip netip.Addr) netip.AddrPort {
	t.Helper()
	addr := netip.AddrPortFrom(ip, 3480)
	out := startProcess(t, "ip", "netns", "exec", r.topo.Peer.Name, "turnutils_peer", "-L", ip.String(), "-p", "3480")
	// Probe from the relay namespace, which is on the peer's link: the
	// client cannot reach the peer without a relay, since the relay
	// namespace does not forward (a server's default sysctls).
	err := r.topo.Relay.Do(func() error { return waitEcho(addr, 3*time.Second) })
	if err != nil {
		t.Fatalf("turnutils_peer on %s: %v\n%s", addr, err, out.Bytes())
	}
	return addr
}

// TestNetnsUclient runs turnutils_uclient in the client namespace against
// a server in the relay namespace, with turnutils_peer in the peer
// namespace: real routing over veth pairs, and the default peer policy
// (198.18.0.0/15 and 2001:2::/48 are not on the deny list).
func TestNetnsUclient(t *testing.T) {
	privtest.Need(t, "ip", "ethtool", "ping", "turnutils_uclient", "turnutils_peer")
	// Mostly waiting on timers; runs beside the other waiting tests, after
	// the serial ones (the flood test counts the process's goroutines).
	t.Parallel()
	r := startNetnsRelay(t)
	peer4 := startNetnsPeer(t, r, r.topo.PeerV4)
	peer6 := startNetnsPeer(t, r, r.topo.PeerV6)

	const msgs, msgLen = 20, 200
	tests := []struct {
		name    string
		server  netip.AddrPort
		peer    netip.AddrPort
		flags   []string
		streams int // message streams uclient counts (0: 1)
	}{
		{"udp4-channel-longterm", r.addr4, peer4, []string{"-w", testPass}, 1},
		{"tcp4-send-rest", r.addr4, peer4, []string{"-t", "-s", "-W", testSecret}, 1},
		{"udp4-channel-ipv6-relay", r.addr4, peer6, []string{"-x", "-w", testPass}, 1},
		{"udp6-channel-ipv6-relay", r.addr6, peer6, []string{"-x", "-W", testSecret}, 1},
		{"tcp6-send-ipv4-relay", r.addr6, peer4, []string{"-t", "-s", "-X", "-w", testPass}, 1},
		// -y: two allocations of this server talk to each other (hairpin)
		// under the default peer policy.
		{"udp4-channel-client-to-client", r.addr4, peer4, []string{"-y", "-w", testPass}, 2},
		{"tcp4-send-client-to-client", r.addr4, peer4, []string{"-y", "-t", "-s", "-w", testPass}, 2},
	}
	var argsList [][]string
	for _, tc := range tests {
		args := append([]string{"netns", "exec", r.topo.Client.Name, "turnutils_uclient",
			"-c", "-n", strconv.Itoa(msgs), "-l", strconv.Itoa(msgLen), "-z", "5",
			"-p", strconv.Itoa(int(tc.server.Port())),
			"-e", tc.peer.Addr().String(), "-r", strconv.Itoa(int(tc.peer.Port())),
			"-u", testUser}, tc.flags...)
		argsList = append(argsList, append(args, tc.server.Addr().String()))
	}
	results := runAll("ip", argsList, 30*time.Second)
	for i, tc := range tests {
		res := results[i]
		t.Run(tc.name, func(t *testing.T) {
			cmdline := res.cmdline
			if res.err != nil {
				t.Fatalf("%s: %v\n%s", cmdline, res.err, res.out)
			}
			rep, err := ParseUclient(res.out)
			if err != nil {
				t.Fatalf("%s: %v\n%s", cmdline, err, res.out)
			}
			want := int64(msgs * tc.streams)
			if rep.SentMsgs != want || rep.RecvMsgs != want || rep.LostPackets != 0 || len(rep.Errors) != 0 ||
				rep.RecvBytes != want*msgLen {
				t.Fatalf("%s: sent %d received %d (%d bytes) lost %d errors %q, want %d/%d/0/none\n%s",
					cmdline, rep.SentMsgs, rep.RecvMsgs, rep.RecvBytes, rep.LostPackets, rep.Errors, want, want, res.out)
			}
		})
	}

	// The server's own account: every message went out to a peer and
	// came back, and nothing panicked.
	r.stop()
	if !r.statsOK {
		t.Fatalf("the server helper printed no final stats")
	}
	want := uint64(0)
	for _, tc := range tests {
		want += uint64(tc.streams * msgs)
	}
	if r.stats.UserspaceToPeer.Packets < want || r.stats.UserspaceToClient.Packets < want {
		t.Errorf("server relayed %d packets to peers and %d to clients, want at least %d each",
			r.stats.UserspaceToPeer.Packets, r.stats.UserspaceToClient.Packets, want)
	}
	if p := r.stats.Drops["panics"]; p != 0 {
		t.Errorf("%d packet handlers panicked", p)
	}
}

// TestNetnsPion runs the pion scenario of TestPion across the namespaces:
// the client's sockets live in the client namespace, the peer's in the
// peer namespace, the server in the relay namespace.
func TestNetnsPion(t *testing.T) {
	privtest.Need(t, "ip", "ethtool", "ping")
	r := startNetnsRelay(t)
	// A second peer address, for the peer without permission.
	strayV4 := netip.MustParseAddr("198.18.1.3")
	if _, err := r.topo.Peer.IP("addr", "add", strayV4.String()+"/24", "dev", r.topo.PeerIf); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		network string
		server  netip.AddrPort
		family  byte
		relay   netip.Addr
		peerIP  netip.Addr
		strayIP netip.Addr
	}{
		{"udp4", "udp", r.addr4, 0, r.topo.RelayPeerV4, r.topo.PeerV4, strayV4},
		{"tcp4", "tcp", r.addr4, 0, r.topo.RelayPeerV4, r.topo.PeerV4, strayV4},
		{"udp6-ipv6-relay", "udp", r.addr6, 0x02, r.topo.RelayPeerV6, r.topo.PeerV6, netip.Addr{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var base net.PacketConn
			err := r.topo.Client.Do(func() error {
				switch tc.network {
				case "udp":
					c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(clientIP(r, tc.server), 0)))
					base = c
					return err
				default:
					c, err := net.DialTimeout("tcp", tc.server.String(), 3*time.Second)
					if err == nil {
						base = turn.NewSTUNConn(c)
					}
					return err
				}
			})
			if err != nil {
				t.Fatalf("client socket: %v", err)
			}
			p := newPionSession(t, tc.network, tc.server, base, tc.family)
			if got := p.relayAddr().Addr().Unmap(); got != tc.relay {
				t.Fatalf("relayed address %s, want one on %s", p.relayAddr(), tc.relay)
			}
			var peer, stray *net.UDPConn
			err = r.topo.Peer.Do(func() error {
				var err error
				if peer, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(tc.peerIP, 0))); err != nil {
					return err
				}
				if tc.strayIP.IsValid() {
					stray, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(tc.strayIP, 0)))
				}
				return err
			})
			if err != nil {
				t.Fatalf("peer socket: %v", err)
			}
			t.Cleanup(func() {
				_ = peer.Close()
				if stray != nil {
					_ = stray.Close()
				}
			})
			runPionScenario(t, p, peer, stray, nil, tc.network, nil)
		})
	}
}

func clientIP(r *netnsRelay, server netip.AddrPort) netip.Addr {
	if server.Addr().Is6() {
		return r.topo.ClientV6
	}
	return r.topo.ClientV4
}

// TestNetnsHairpinAndPolicy checks the default peer policy with pion
// clients (docs/design.md "Security defaults"): two clients relayed through the
// same server talk relay-to-relay (hairpin, both via Send/Data indications
// and over channels), while a permission for the server's own listener
// address or for loopback is refused with 403 (RFC 8656 section 9.2:
// "Forbidden").
func TestNetnsHairpinAndPolicy(t *testing.T) {
	privtest.Need(t, "ip", "ethtool", "ping")
	r := startNetnsRelay(t)
	dial := func() *pionSession {
		var base net.PacketConn
		err := r.topo.Client.Do(func() error {
			c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(r.topo.ClientV4, 0)))
			base = c
			return err
		})
		if err != nil {
			t.Fatalf("client socket: %v", err)
		}
		return newPionSession(t, "udp", r.addr4, base, 0)
	}
	a, b := dial(), dial()
	hairpinExchange(t, a, b, 5)
	buf := make([]byte, 2048)

	// The relay address is a permitted peer now (hairpin), but only its
	// live relay ports are: a local service on the relay host's address
	// must stay unreachable through the relay.
	var local *net.UDPConn
	if err := r.topo.Relay.Do(func() (err error) {
		local, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(r.topo.RelayPeerV4, 3479)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	for i := 0; i < 5; i++ {
		_, _ = a.relay.WriteTo([]byte("to a local service"), local.LocalAddr())
		time.Sleep(20 * time.Millisecond)
	}
	_ = local.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, from, err := local.ReadFromUDPAddrPort(buf); err == nil {
		t.Errorf("a service on the relay host's %s got %d bytes from %s through the relay", local.LocalAddr(), n, from)
	}

	// The same policy for peers in IPv6 and IPv4-mapped IPv6 form, on an
	// IPv6 relay: a mapped address must not slip past the IPv4 deny list.
	var base6 net.PacketConn
	if err := r.topo.Client.Do(func() error {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(r.topo.ClientV6, 0)))
		base6 = c
		return err
	}); err != nil {
		t.Fatal(err)
	}
	c6 := newPionSession(t, "udp", r.addr6, base6, 0x02)
	// Control: the same encoding of an allowed peer succeeds.
	if res := authedRequest(t, c6, stun.MethodCreatePermission, rawXORPeer{r.topo.PeerV6, 9}); res.Type.Class != stun.ClassSuccessResponse {
		var code stun.ErrorCodeAttribute
		_ = code.GetFrom(res)
		t.Fatalf("CreatePermission for the peer %s: %s %v", r.topo.PeerV6, res.Type, code)
	}
	for _, bad := range []string{
		"::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.1.2.3", "::ffff:192.168.0.1",
		"::ffff:" + r.topo.RelayClientV4.String(), // the listener, mapped
		"::1", "fe80::1", "fc00::1", "ff02::1", "::",
		r.topo.RelayClientV6.String(), // the IPv6 listener address
	} {
		res := authedRequest(t, c6, stun.MethodCreatePermission, rawXORPeer{netip.MustParseAddr(bad), 9})
		var code stun.ErrorCodeAttribute
		_ = code.GetFrom(res)
		if res.Type.Class != stun.ClassErrorResponse || (code.Code != stun.CodeForbidden && code.Code != stun.CodePeerAddrFamilyMismatch) {
			t.Errorf("CreatePermission for %s on an IPv6 relay: %s %v, want 403 Forbidden (or 443)", bad, res.Type, code)
		}
	}

	// Refused peers: the server's own listener address, and loopback.
	for _, bad := range []netip.AddrPort{r.addr4, netip.MustParseAddrPort("127.0.0.1:9")} {
		err := a.client.CreatePermission(net.UDPAddrFromAddrPort(bad))
		var te *stun.TurnError
		if !errors.As(err, &te) || te.ErrorCodeAttr.Code != stun.CodeForbidden {
			t.Errorf("CreatePermission(%s) with the default policy: %v, want 403 Forbidden", bad, err)
		}
	}
}

// hairpinExchange makes a and b, two allocations of the same server, talk
// relay-to-relay (docs/design.md "Security defaults": hairpin must work): each
// permits the other's relayed address, then datagrams go both ways,
// byte-exact, first as Send/Data indications and then over channels,
// until each side has sent at least `more` ChannelData.
func hairpinExchange(t *testing.T, a, b *pionSession, more int) {
	t.Helper()
	ra, rb := net.UDPAddrFromAddrPort(a.relayAddr()), net.UDPAddrFromAddrPort(b.relayAddr())
	if err := a.client.CreatePermission(rb); err != nil {
		t.Fatalf("permission for the other client's relayed address %s (hairpin): %v", rb, err)
	}
	if err := b.client.CreatePermission(ra); err != nil {
		t.Fatalf("permission for the other client's relayed address %s (hairpin): %v", ra, err)
	}
	// a -> b and b -> a, until both use channels, then `more` rounds.
	buf := make([]byte, 2048)
	send := func(from, to *pionSession, toAddr, fromAddr *net.UDPAddr, data []byte) {
		t.Helper()
		if _, err := from.relay.WriteTo(data, toAddr); err != nil {
			t.Fatalf("hairpin write: %v", err)
		}
		_ = to.relay.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, src, err := to.relay.ReadFrom(buf)
		if err != nil {
			t.Fatalf("hairpin %s -> %s (%d bytes): %v", fromAddr, toAddr, len(data), err)
		}
		if src.String() != fromAddr.String() || string(buf[:n]) != string(data) {
			t.Fatalf("hairpin: got %d bytes from %s, want %d bytes from %s", n, src, len(data), fromAddr)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for seq := 0; a.tap.outChannelData.Load() < int64(more) || b.tap.outChannelData.Load() < int64(more); seq++ {
		if time.Now().After(deadline) {
			t.Fatalf("hairpin never moved to channels: a sent %d ChannelData, b %d", a.tap.outChannelData.Load(), b.tap.outChannelData.Load())
		}
		send(a, b, rb, ra, payload(seq, 1+seq*37%1200))
		send(b, a, ra, rb, payload(seq, 1+seq*53%1200))
	}
	if a.tap.inChannelData.Load() == 0 || b.tap.inChannelData.Load() == 0 {
		t.Errorf("hairpin data never arrived over a channel (a got %d, b got %d ChannelData)",
			a.tap.inChannelData.Load(), b.tap.inChannelData.Load())
	}

}

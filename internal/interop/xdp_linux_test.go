package interop

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hybridrelay/hybridrelay/internal/admin"
	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/internal/privtest"
)

// TestNetnsXDP runs real clients against the real binary with
// `--datapath xdp` in the relay namespace: pion (byte-exact both ways over
// its channel) and turnutils_uclient (channel mode). The kernel path must
// deliver the same bytes userspace would (docs/design.md "A miss is always
// safe"), with checksums the receiving kernels accept (a bad UDP checksum
// is dropped by the peer's stack and the test times out). The XDP
// counters must show that the kernel, not userspace, forwarded the
// channel traffic.
func TestNetnsXDP(t *testing.T) {
	privtest.Need(t, "ip", "ethtool", "ping", "go", "turnutils_uclient", "turnutils_peer")
	// Mostly waiting on timers; runs beside the other waiting tests, after
	// the serial ones (the flood test counts the process's goroutines).
	t.Parallel()
	bin := buildRelayBinary(t)
	// On a host as it comes (forwarding off) and on a router: the kernel
	// path must not depend on the kernel's own forwarding (docs/design.md,
	// "Invariants for the kernel path" 6). One after the other, not
	// parallel: each floods.
	for _, v := range netns.Variants() {
		t.Run(v.Name, func(t *testing.T) { testNetnsXDP(t, bin, v.Options) })
	}
}

func testNetnsXDP(t *testing.T, bin string, to netns.TopologyOptions) {
	// A private bpffs for the relay's pins, unmounted at the end.
	bpfDir := t.TempDir()
	if err := unix.Mount("bpf", bpfDir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount a bpf filesystem: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(bpfDir, unix.MNT_DETACH) })

	topo := netns.ForTest(t, to)
	attachXDPPass(t, topo)
	// A second peer address, for traffic from a peer without permission.
	strayV4 := netip.MustParseAddr("198.18.1.3")
	if _, err := topo.Peer.IP("addr", "add", strayV4.String()+"/24", "dev", topo.PeerIf); err != nil {
		t.Fatal(err)
	}

	const port = 3478
	server := netip.AddrPortFrom(topo.RelayClientV4, port)
	server6 := netip.AddrPortFrom(topo.RelayClientV6, port)
	sock := filepath.Join(t.TempDir(), "admin.sock")
	cmd := exec.Command(bin, "serve", "--datapath", "xdp",
		"--listen", server.String(), "--listen", server6.String(),
		"--relay-ip", topo.RelayPeerV4.String(), "--relay-ip", topo.RelayPeerV6.String(),
		"--realm", testRealm, "--user", testUser+":"+testPass,
		"--bpffs", filepath.Join(bpfDir, "hybridrelay"),
		"--admin-socket", sock, "--metrics-listen", "off", "--log-level", "warn")
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = nil
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "HYBRIDRELAY_") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// Forked from a thread inside the relay namespace (like nsenter --net),
	// so /sys and the bpffs stay the host's.
	if err := topo.Relay.Do(cmd.Start); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("relay log:\n%s", log.Bytes())
		}
	})
	if err := topo.Client.Do(func() error { _, err := stunBinding(server, 15*time.Second); return err }); err != nil {
		t.Fatalf("relay not answering: %v\n%s", err, log.Bytes())
	}
	snap := func() admin.Snapshot {
		t.Helper()
		c, err := admin.Dial(sock)
		if err != nil {
			t.Fatalf("admin socket: %v", err)
		}
		defer c.Close()
		var s admin.Snapshot
		if err := c.Call("stats", &s); err != nil {
			t.Fatalf("admin stats: %v", err)
		}
		return s
	}
	if s := snap(); s.Datapath != "xdp" || s.Kernel == nil {
		t.Fatalf("the relay runs datapath %q (%s), kernel state %v; want xdp", s.Datapath, s.DatapathReason, s.Kernel)
	}

	for _, v := range []struct {
		name         string
		server       netip.AddrPort
		client, peer netip.Addr
		family       byte
	}{
		{"pion-ipv4", server, topo.ClientV4, topo.PeerV4, 0},
		{"pion-ipv6", server6, topo.ClientV6, topo.PeerV6, 0x02},
	} {
		t.Run(v.name, func(t *testing.T) {
			before := snap().Kernel.Counters
			var base net.PacketConn
			if err := topo.Client.Do(func() error {
				c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(v.client, 0)))
				base = c
				return err
			}); err != nil {
				t.Fatal(err)
			}
			p := newPionSession(t, "udp", v.server, base, v.family)
			var peer *net.UDPConn
			if err := topo.Peer.Do(func() (err error) {
				peer, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(v.peer, 0)))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = peer.Close() })
			extra := func(t *testing.T, p *pionSession, peer *net.UDPConn) {
				checkChannelDataFraming(t, p, peer)
				if v.family == 0 {
					strayFlood(t, topo.Peer, strayV4, p, peer)
				}
			}
			runPionScenario(t, p, peer, nil, nil, "udp", extra)
			after := snap().Kernel.Counters
			toPeer := after["fwd_to_peer_packets"] - before["fwd_to_peer_packets"]
			toClient := after["fwd_to_client_packets"] - before["fwd_to_client_packets"]
			t.Logf("kernel forwarded %d packets to the peer and %d to the client; counters %v", toPeer, toClient, after)
			// pion sent at least 2*len(sizes) ChannelData and the peer
			// sent len(sizes)+1 over the channel; a few may go to
			// userspace legitimately (docs/design.md), most must not.
			if toPeer < uint64(len(sizes)) || toClient < uint64(len(sizes))/2 {
				t.Errorf("the kernel forwarded %d packets to the peer and %d to the client; want most of the channel traffic", toPeer, toClient)
			}
		})
	}

	t.Run("pion-hairpin", func(t *testing.T) {
		// Relay-to-relay on one server broke a production XDP relay:
		// XDP_TX cannot deliver to the host itself, so the kernel turns
		// one client's ChannelData into the other's (docs/design.md
		// "Egress") once both have bound channels, and userspace carries
		// the rest (Send/Data indications, channels not yet bound on the
		// other side).
		dial := func() *pionSession {
			var base net.PacketConn
			if err := topo.Client.Do(func() error {
				c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(topo.ClientV4, 0)))
				base = c
				return err
			}); err != nil {
				t.Fatal(err)
			}
			return newPionSession(t, "udp", server, base, 0)
		}
		before := snap().Kernel.Counters
		hairpinExchange(t, dial(), dial(), 40)
		after := snap().Kernel.Counters
		hp := after["fwd_hairpin_packets"] - before["fwd_hairpin_packets"]
		t.Logf("kernel counters during the hairpin exchange: hairpin +%d, to peer +%d, to client +%d", hp,
			after["fwd_to_peer_packets"]-before["fwd_to_peer_packets"], after["fwd_to_client_packets"]-before["fwd_to_client_packets"])
		// Each side sent at least 40 ChannelData; the last 40 rounds run
		// with both channels bound.
		if hp < 40 {
			t.Errorf("the kernel hairpinned %d ChannelData, want at least 40 of the 80 or more sent", hp)
		}
	})

	t.Run("uclient", func(t *testing.T) {
		peerAddr := netip.AddrPortFrom(topo.PeerV4, 3480)
		out := startProcess(t, "ip", "netns", "exec", topo.Peer.Name, "turnutils_peer", "-L", topo.PeerV4.String(), "-p", "3480")
		// Probed from the relay namespace, on the peer's link: without a
		// relay the client reaches the peer only if the relay host routes.
		if err := topo.Relay.Do(func() error { return waitEcho(peerAddr, 3*time.Second) }); err != nil {
			t.Fatalf("turnutils_peer: %v\n%s", err, out.Bytes())
		}
		before := snap().Kernel.Counters
		const msgs, msgLen = 50, 333
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		args := []string{"netns", "exec", topo.Client.Name, "turnutils_uclient", "-c",
			"-n", strconv.Itoa(msgs), "-l", strconv.Itoa(msgLen), "-z", "5", "-p", strconv.Itoa(port),
			"-e", peerAddr.Addr().String(), "-r", strconv.Itoa(int(peerAddr.Port())),
			"-u", testUser, "-w", testPass, server.Addr().String()}
		res, err := runBounded(ctx, "ip", args...)
		if err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, res)
		}
		rep, err := ParseUclient(res)
		if err != nil || rep.SentMsgs != msgs || rep.RecvMsgs != msgs || rep.LostPackets != 0 || rep.RecvBytes != msgs*msgLen {
			t.Fatalf("ip %s: %+v %v\n%s", strings.Join(args, " "), rep, err, res)
		}
		after := snap().Kernel.Counters
		toPeer := after["fwd_to_peer_packets"] - before["fwd_to_peer_packets"]
		toClient := after["fwd_to_client_packets"] - before["fwd_to_client_packets"]
		t.Logf("kernel forwarded %d packets to the peer and %d to the client", toPeer, toClient)
		if toPeer < msgs/2 || toClient < msgs/2 {
			t.Errorf("the kernel forwarded %d packets to the peer and %d to the client of %d each way", toPeer, toClient, msgs)
		}
	})
}

// buildRelayBinary builds cmd/hybridrelay into a temporary directory, or
// returns HYBRIDRELAY_INTEROP_BINARY when that names an already built one
// (the build is most of this test's time on a loaded machine).
func buildRelayBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("HYBRIDRELAY_INTEROP_BINARY"); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("HYBRIDRELAY_INTEROP_BINARY: %v", err)
		}
		return bin
	}
	bin := filepath.Join(t.TempDir(), "hybridrelay")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/hybridrelay")
	cmd.Dir = filepath.Join("..", "..") // the module root, from internal/interop
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/hybridrelay: %v\n%s", err, out)
	}
	return bin
}

// attachXDPPass attaches an XDP_PASS program to the client's and the
// peer's veth ends for the test's lifetime (netns.Topology.AttachXDPPass).
func attachXDPPass(t *testing.T, topo *netns.Topology) {
	t.Helper()
	links, err := topo.AttachXDPPass()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, l := range links {
			_ = l.Close()
		}
	})
}

// strayFlood sends random datagrams from stray (an address in ns without a
// permission) to the client's relayed address, then a marker from the
// real peer: the client must get the marker and nothing before it. On the
// xdp datapath the program finds no channel entry for the stray source and
// must pass the packets to userspace, which drops them (RFC 8656 section 9).
func strayFlood(t *testing.T, ns *netns.NS, stray netip.Addr, p *pionSession, peer *net.UDPConn) {
	t.Helper()
	var c *net.UDPConn
	if err := ns.Do(func() (err error) {
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(stray, 0)))
		return err
	}); err != nil {
		t.Fatalf("stray socket: %v", err)
	}
	defer c.Close()
	const n = 2000
	for i := 0; i < n; i++ {
		b := payload(i, 1+i%1200)
		if i%3 == 0 && len(b) >= 4 {
			// Looks like ChannelData on the client's channel.
			b[0], b[1] = byte(p.tap.lastChannel.Load()>>8), byte(p.tap.lastChannel.Load())
		}
		_, _ = c.WriteToUDPAddrPort(b, p.relayAddr())
		if i%50 == 49 {
			time.Sleep(time.Millisecond)
		}
	}
	time.Sleep(100 * time.Millisecond)
	marker := payload(424242, 99)
	if _, err := peer.WriteToUDPAddrPort(marker, p.relayAddr()); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	foreign := 0
	for {
		_ = p.relay.SetReadDeadline(time.Now().Add(2 * time.Second))
		k, _, err := p.relay.ReadFrom(buf)
		if err != nil {
			t.Fatalf("the peer's marker never arrived after the stray flood (%d foreign datagrams before): %v", foreign, err)
		}
		if string(buf[:k]) == string(marker) {
			break
		}
		foreign++
	}
	if foreign != 0 {
		t.Errorf("the client received %d of %d datagrams sent by %s, which has no permission", foreign, n, stray)
	}
}

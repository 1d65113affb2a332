package dpe2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/internal/privtest"
	"github.com/hybridrelay/hybridrelay/internal/turnclient"
	"github.com/hybridrelay/hybridrelay/pkg/control"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// The TURN server of TestTURNBytesEqual runs in a child process started
// inside the relay namespace (`ip netns exec`): the control plane opens
// relay sockets from whatever goroutine handles an Allocate, so every thread
// of its process must be in that namespace. The child is this test binary;
// TestMain turns it into the server when serverEnv is set.
const serverEnv = "HYBRIDRELAY_DPE2E_SERVER"

type serverSpec struct {
	Datapath string `json:"datapath"`
	Listen   string `json:"listen"`
	RelayIP  string `json:"relay_ip"`
	Port     uint16 `json:"port"`
}

const (
	turnUser, turnPass = "alice", "correct horse"
	turnRelayPort      = 50000
	channel            = 0x4000
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(serverEnv); spec != "" {
		os.Exit(runServer(spec))
	}
	os.Exit(m.Run())
}

// runServer serves until stdin closes, then prints the datapath's Stats as
// one JSON line.
func runServer(specJSON string) int {
	var spec serverSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "server spec:", err)
		return 2
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var dp dataplane.Datapath
	switch spec.Datapath {
	case "plain":
		dp = dataplane.NewPlain()
	case "gso":
		var err error
		if dp, err = dataplane.NewGSO(dataplane.GSOOptions{Logger: logger}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
	}
	cfg := control.DefaultConfig()
	cfg.Listeners = []control.ListenerSpec{{Network: "udp", Addr: netip.MustParseAddrPort(spec.Listen)}}
	cfg.RelayIPs = []netip.Addr{netip.MustParseAddr(spec.RelayIP)}
	cfg.MinPort, cfg.MaxPort = spec.Port, spec.Port
	cfg.Users = map[string]string{turnUser: turnPass}
	cfg.AllowPeers = []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("2001:2::/48")}
	cfg.Datapath = spec.Datapath
	srv, err := control.NewServer(cfg, control.Options{Datapath: dp, Logger: logger})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := srv.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	out, _ := json.Marshal(dp.Stats())
	fmt.Printf("stats %s\n", out)
	srv.Close()
	dp.Close()
	return 0
}

// server is the child process seen from the test.
type server struct {
	stdin  io.WriteCloser
	lines  chan string
	stderr bytes.Buffer
	wait   func() error
}

func startServer(t *testing.T, topo *netns.Topology, spec serverSpec) *server {
	t.Helper()
	js, _ := json.Marshal(spec)
	cmd := topo.Relay.Exec(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), serverEnv+"="+string(js))
	s := &server{lines: make(chan string, 4)}
	cmd.Stderr = &s.stderr
	var err error
	if s.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.wait = cmd.Wait
	t.Cleanup(func() {
		s.stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
		}
	})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	if l := s.next(t); l != "ready" {
		t.Fatalf("server: %q; stderr:\n%s", l, s.stderr.String())
	}
	return s
}

func (s *server) next(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-s.lines:
		if !ok {
			t.Fatalf("server exited; stderr:\n%s", s.stderr.String())
		}
		return l
	case <-time.After(10 * time.Second):
		t.Fatalf("server silent; stderr:\n%s", s.stderr.String())
	}
	return ""
}

// stop closes the server's stdin and returns its datapath stats.
func (s *server) stop(t *testing.T) dataplane.Stats {
	t.Helper()
	s.stdin.Close()
	l := s.next(t)
	var st dataplane.Stats
	js, ok := strings.CutPrefix(l, "stats ")
	if !ok {
		t.Fatalf("server: %q", l)
	}
	if err := json.Unmarshal([]byte(js), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// sendGSO sends frames from c to dst, runs of equal size (the last may be
// shorter) as UDP_SEGMENT sendmsg calls so that they reach the relay back
// to back, the rest one by one.
func sendGSO(c *net.UDPConn, dst netip.AddrPort, frames [][]byte) error {
	for len(frames) > 0 {
		seg := len(frames[0])
		n := 1
		// Each segment must fit the 1500-byte MTU of the veths (IPv6: 1452).
		for seg <= 1452 && n < len(frames) && n < 64 && (n+1)*seg <= 65000 && len(frames[n]) <= seg {
			n++
			if len(frames[n-1]) < seg {
				break
			}
		}
		if n == 1 {
			if _, err := c.WriteToUDPAddrPort(frames[0], dst); err != nil {
				return err
			}
		} else {
			oob := make([]byte, unix.CmsgSpace(2))
			h := (*unix.Cmsghdr)(unsafePointer(oob))
			h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
			h.SetLen(unix.CmsgLen(2))
			binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], uint16(seg))
			if _, _, err := c.WriteMsgUDPAddrPort(bytes.Join(frames[:n], nil), oob, dst); err != nil {
				return err
			}
		}
		frames = frames[n:]
	}
	return nil
}

// turnTraffic is the payload sequence of one direction: bursts (sent with
// UDP_SEGMENT so the relay reads them in batches) and odd sizes. Sizes stay
// below what fits a 1500-byte MTU once wrapped in a Data indication.
func turnTraffic(dir byte) [][][]byte {
	mk := func(n, size, last int, tag byte) [][]byte {
		var b [][]byte
		for i := 0; i < n; i++ {
			sz := size
			if i == n-1 && last > 0 {
				sz = last
			}
			p := make([]byte, sz)
			for j := range p {
				p[j] = byte(j*13 + i*5 + int(dir) + int(tag))
			}
			p[0] = dir
			b = append(b, p)
		}
		return b
	}
	var odd [][]byte
	for i, sz := range []int{1, 33, 1300, 7, 999, 1396, 64} {
		odd = append(odd, bytes.Repeat([]byte{dir, byte(i)}, sz)[:sz])
	}
	return [][][]byte{mk(48, 120, 60, 1), mk(20, 1200, 0, 2), mk(70, 100, 0, 3), odd}
}

type turnRun struct {
	toPeer, toClient []Datagram
	stats            dataplane.Stats
}

func runTURN(t *testing.T, topo *netns.Topology, dpName string, v6 bool) turnRun {
	t.Helper()
	lisIP, relayIP, clientIP, peerIP := topo.RelayClientV4, topo.RelayPeerV4, topo.ClientV4, topo.PeerV4
	if v6 {
		lisIP, relayIP, clientIP, peerIP = topo.RelayClientV6, topo.RelayPeerV6, topo.ClientV6, topo.PeerV6
	}
	lisAddr := netip.AddrPortFrom(lisIP, 3478)
	srv := startServer(t, topo, serverSpec{Datapath: dpName, Listen: lisAddr.String(), RelayIP: relayIP.String(), Port: turnRelayPort})

	var cconn *net.UDPConn
	var ccap, pcap *Capture
	var peer1, peer2 *net.UDPConn
	if err := topo.Client.Do(func() (err error) {
		if ccap, err = NewCapture(topo.ClientIf); err != nil {
			return err
		}
		cconn, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(clientIP, clientPort)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ccap.Close()
	if err := topo.Peer.Do(func() (err error) {
		if pcap, err = NewCapture(topo.PeerIf); err != nil {
			return err
		}
		if peer1, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(peerIP, peerPort))); err != nil {
			return err
		}
		peer2, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(peerIP, peerPort+1)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pcap.Close()
	defer peer1.Close()
	defer peer2.Close()
	for _, c := range []*net.UDPConn{cconn, peer1, peer2} {
		c.SetReadBuffer(8 << 20)
	}
	p1, p2 := netip.AddrPortFrom(peerIP, peerPort), netip.AddrPortFrom(peerIP, peerPort+1)

	cl, err := turnclient.New(turnclient.Config{Server: lisAddr, Conn: cconn, Credentials: turnclient.Credentials{Username: turnUser, Password: turnPass}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	alloc, err := cl.Allocate(ctx, turnclient.AllocateOptions{IPv6: v6})
	if err != nil {
		t.Fatalf("allocate: %v; server stderr:\n%s", err, srv.stderr.String())
	}
	if want := netip.AddrPortFrom(relayIP, turnRelayPort); alloc.Relayed != want {
		t.Fatalf("relayed %v, want %v", alloc.Relayed, want)
	}
	if err := cl.ChannelBind(ctx, channel, p1); err != nil {
		t.Fatal(err)
	}
	if err := cl.CreatePermission(ctx, peerIP); err != nil {
		t.Fatal(err)
	}
	// Permission and channel are in place (their responses came back), so
	// the control plane has installed them; the exchange can start.

	recv := func(c *net.UDPConn, n int) [][]byte {
		t.Helper()
		var out [][]byte
		buf := make([]byte, 65536)
		for len(out) < n {
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			m, _, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("%s: received %d of %d: %v", dpName, len(out), n, err)
			}
			out = append(out, bytes.Clone(buf[:m]))
		}
		return out
	}
	check := func(what string, got, want [][]byte) {
		t.Helper()
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("%s %s %d: got %d bytes, want %d", dpName, what, i, len(got[i]), len(want[i]))
			}
		}
	}
	// Client -> peer: ChannelData to peer1, Send indications to peer2.
	for _, burst := range turnTraffic('u') {
		var frames [][]byte
		for _, p := range burst {
			frames = append(frames, turnclient.AppendChannelData(nil, channel, p))
		}
		if err := sendGSO(cconn, lisAddr, frames); err != nil {
			t.Fatal(err)
		}
		check("channeldata to peer", recv(peer1, len(burst)), burst)
	}
	for _, burst := range turnTraffic('s') {
		for _, p := range burst[:min(len(burst), 12)] {
			if err := cl.SendIndication(p2, p); err != nil {
				t.Fatal(err)
			}
		}
		check("send indication to peer", recv(peer2, min(len(burst), 12)), burst[:min(len(burst), 12)])
	}
	// Peer -> client: from peer1 as ChannelData, from peer2 as Data
	// indications.
	for _, burst := range turnTraffic('d') {
		if err := sendGSO(peer1, alloc.Relayed, burst); err != nil {
			t.Fatal(err)
		}
		for i, f := range recv(cconn, len(burst)) {
			ch, data, err := turnclient.ParseChannelData(f)
			if err != nil || ch != channel || !bytes.Equal(data, burst[i]) {
				t.Fatalf("%s channeldata to client %d: channel %#x, %d bytes, err %v", dpName, i, ch, len(data), err)
			}
		}
	}
	for _, burst := range turnTraffic('i') {
		if err := sendGSO(peer2, alloc.Relayed, burst); err != nil {
			t.Fatal(err)
		}
		for i, f := range recv(cconn, len(burst)) {
			from, data, err := turnclient.ParseDataIndication(f)
			if err != nil || from != p2 || !bytes.Equal(data, burst[i]) {
				t.Fatalf("%s data indication %d: from %v, %d bytes, err %v", dpName, i, from, len(data), err)
			}
		}
	}
	var run turnRun
	toClient, err := ccap.Drain(netip.AddrPortFrom(clientIP, clientPort))
	if err != nil {
		t.Fatal(err)
	}
	// Relayed data only: the control responses carry per-run nonces and
	// integrity and are not the datapath's concern.
	for _, d := range toClient {
		if p := d.Payload(); turnclient.IsChannelData(p) || len(p) >= 2 && binary.BigEndian.Uint16(p) == 0x0117 {
			run.toClient = append(run.toClient, d)
		}
	}
	all, err := pcap.DrainAll()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range all {
		if d.Dst == p1 || d.Dst == p2 {
			run.toPeer = append(run.toPeer, d)
		}
	}
	run.stats = srv.stop(t)
	return run
}

// normalize returns what must be identical between two runs: for a Data
// indication the transaction ID, the FINGERPRINT and so the UDP checksum
// are random per message and are zeroed; ChannelData and relayed payloads
// are kept whole.
func normalize(d Datagram) []byte {
	u := bytes.Clone(d.UDP)
	p := u[8:]
	if len(p) >= 20 && p[0]&0xC0 == 0 && binary.BigEndian.Uint32(p[4:8]) == 0x2112A442 && d.Src.Port() == 3478 {
		clear(p[8:20])
		if n := len(p); n >= 28 && binary.BigEndian.Uint16(p[n-8:n-6]) == 0x8028 {
			clear(p[n-4:])
		}
		clear(u[6:8])
	}
	return append(bytes.Clone(d.L3), u...)
}

// TestTURNBytesEqual runs the real control plane over each datapath and
// checks that what leaves the relay toward the client (ChannelData, Data
// indications) and toward the peers (relayed payloads
// from ChannelData and Send indications) is the same on both, with valid
// checksums, IPv4 and IPv6, without and with GRO on the relay's links.
func TestTURNBytesEqual(t *testing.T) {
	privtest.Need(t, "ip", "ethtool", "ping")
	topo := netns.ForTest(t, netns.TopologyOptions{})
	forEachVariant(t, topo, func(t *testing.T, v6, gro bool) {
		plain := runTURN(t, topo, "plain", v6)
		gso := runTURN(t, topo, "gso", v6)
		for _, dir := range []struct {
			name       string
			plain, gso []Datagram
		}{{"to peers", plain.toPeer, gso.toPeer}, {"to client", plain.toClient, gso.toClient}} {
			if len(dir.plain) != len(dir.gso) || len(dir.plain) < 100 {
				t.Fatalf("%s: %d (plain) vs %d (gso) datagrams", dir.name, len(dir.plain), len(dir.gso))
			}
			for i := range dir.plain {
				a, b := dir.plain[i], dir.gso[i]
				if a.Fragment != nil || b.Fragment != nil {
					t.Fatalf("%s %d: unexpected fragment", dir.name, i)
				}
				for _, d := range []Datagram{a, b} {
					if err := d.VerifyChecksum(); err != nil {
						t.Fatalf("%s %d: %v", dir.name, i, err)
					}
				}
				if a.Src != b.Src || a.Dst != b.Dst || !bytes.Equal(normalize(a), normalize(b)) {
					t.Fatalf("%s %d differs:\nplain %v->%v %x\ngso   %v->%v %x", dir.name, i, a.Src, a.Dst, normalize(a)[:min(64, len(normalize(a)))], b.Src, b.Dst, normalize(b)[:min(64, len(normalize(b)))])
				}
			}
		}
		st := gso.stats
		t.Logf("gso relay: %d read calls (%d GRO) for %d datagrams; %d GSO sends (%d segments), %d sendmmsg (%d datagrams), %d single",
			st.ReadCalls, st.RxGROReads, st.RxPackets, st.TxGSOSends, st.TxGSOSegments, st.TxMmsgCalls, st.TxMmsgPackets, st.TxSingleSends)
		if st.TxGSOSends == 0 || st.GSOFallbacks != 0 {
			t.Fatalf("gso relay did not coalesce: %+v", st)
		}
		if gro && st.RxGROReads == 0 {
			t.Fatalf("no GRO read with GRO on the relay's links: %+v", st)
		}
	})
}

func unsafePointer(b []byte) unsafe.Pointer { return unsafe.Pointer(&b[0]) }

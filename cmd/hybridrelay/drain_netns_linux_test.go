//go:build linux

package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pion/logging"
	"github.com/pion/turn/v4"

	"github.com/hybridrelay/hybridrelay/internal/admin"
	"github.com/hybridrelay/hybridrelay/internal/interop"
	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/internal/privtest"
	"github.com/hybridrelay/hybridrelay/internal/turnclient"
)

// TestDrainAlternateNetns: two edges of a fleet in the relay namespace, A
// (198.18.0.2, kernel path) and B (198.18.0.3, gso), A configured with B
// as its alternate-server. After `hybridrelay drain` on A:
//   - a channel bound on A before the drain keeps being forwarded;
//   - hybridrelay's own client, sent to A, follows the 300 to B and relays
//     through B's relay address;
//   - coturn's turnutils_uclient follows the 300 too (it prints "error 300
//     (Try Alternate)" and completes on B, every message echoed);
//   - pion/turn's client does not follow it: its Allocate fails with 300.
func TestDrainAlternateNetns(t *testing.T) {
	privtest.Need(t, "ip", "ethtool", "ping", "turnutils_uclient", "turnutils_peer")
	topo, err := netns.NewTopology()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { topo.Close() })
	bListen, bRelay := netip.MustParseAddr("198.18.0.3"), netip.MustParseAddr("198.18.1.3")
	for _, a := range []struct{ addr, dev string }{{bListen.String() + "/24", topo.RelayClientIf}, {bRelay.String() + "/24", topo.RelayPeerIf}} {
		if out, err := topo.Relay.IP("addr", "add", a.addr, "dev", a.dev); err != nil {
			t.Fatalf("ip addr add %s: %v %s", a.addr, err, out)
		}
	}
	dir := t.TempDir()
	sockA, sockB := filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock")
	lo, hi := relayRange(t)
	common := []string{"--user", "u:p", "--min-port", fmt.Sprint(lo), "--max-port", fmt.Sprint(hi)}
	startInNS(t, topo.Relay, append(common, "--listen", "udp://"+bListen.String()+":3478", "--relay-ip", bRelay.String(),
		"--datapath", "gso", "--admin-socket", sockB)...)
	aAddr := netip.AddrPortFrom(topo.RelayClientV4, 3478)
	bAddr := netip.AddrPortFrom(bListen, 3478)
	startInNS(t, topo.Relay, append(common, "--listen", "udp://"+aAddr.String(), "--relay-ip", topo.RelayPeerV4.String(),
		"--datapath", "xdp", "--bpffs", fmt.Sprintf("/sys/fs/bpf/hrtest-%d-drain", lo),
		"--alternate-server", bAddr.String(), "--admin-socket", sockA)...)

	// Before the drain: a channel on A, forwarded by the kernel.
	existing := dialFromClient(t, topo)
	bindChannel(t, existing, "u", "p", topo.PeerV4.String()+":9000", 0x4001)
	if got := sendChannelData(t, topo, existing, 0x4001, 9000, 20); got != 20 {
		t.Fatalf("before the drain: peer got %d of 20", got)
	}
	out, stderr, code := runBinary(t, nil, "drain", "--admin-socket", sockA)
	if code != 0 || !strings.Contains(out, "new clients are sent to "+bAddr.String()) {
		t.Fatalf("drain: exit %d %s\n%s", code, stderr, out)
	}
	if got := sendChannelData(t, topo, existing, 0x4001, 9000, 20); got != 20 {
		t.Errorf("while draining: the existing channel delivered %d of 20", got)
	}

	// hybridrelay's client follows the redirect.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var conn *net.UDPConn
	if err := topo.Client.Do(func() (err error) {
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: topo.ClientV4.AsSlice()})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	tc, err := turnclient.New(turnclient.Config{Server: aAddr, Conn: conn, Credentials: turnclient.Credentials{Username: "u", Password: "p"}})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	al, err := tc.Allocate(ctx, turnclient.AllocateOptions{})
	if err != nil {
		t.Fatalf("turnclient Allocate via A: %v", err)
	}
	if tc.Server() != bAddr || al.Relayed.Addr() != bRelay {
		t.Fatalf("turnclient: server %v relayed %v, want %v and a relay on %v", tc.Server(), al.Relayed, bAddr, bRelay)
	}
	var peer *net.UDPConn
	if err := topo.Peer.Do(func() (err error) {
		peer, err = net.ListenUDP("udp4", &net.UDPAddr{IP: topo.PeerV4.AsSlice(), Port: 9100})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	if err := tc.CreatePermission(ctx, topo.PeerV4); err != nil {
		t.Fatal(err)
	}
	if err := tc.SendIndication(netip.AddrPortFrom(topo.PeerV4, 9100), []byte("via B")); err != nil {
		t.Fatal(err)
	}
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n, from, err := peer.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "via B" || from != al.Relayed {
		t.Fatalf("peer: %q from %v (%v), want \"via B\" from %v", buf[:n], from, err, al.Relayed)
	}

	// coturn's turnutils_uclient, echoed by turnutils_peer.
	echo := topo.Peer.Exec("turnutils_peer", "-L", topo.PeerV4.String(), "-p", "3480")
	if err := echo.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { echo.Process.Kill(); echo.Wait() }()
	time.Sleep(200 * time.Millisecond)
	before := allocsOK(t, sockB)
	uctx, ucancel := context.WithTimeout(ctx, 25*time.Second)
	defer ucancel()
	ucOut, err := exec.CommandContext(uctx, "ip", "netns", "exec", topo.Client.Name, "turnutils_uclient",
		"-n", "10", "-l", "100", "-z", "5", "-p", "3478", "-e", topo.PeerV4.String(), "-r", "3480",
		"-u", "u", "-w", "p", aAddr.Addr().String()).CombinedOutput()
	if err != nil {
		t.Fatalf("turnutils_uclient: %v\n%s", err, ucOut)
	}
	rep, err := interop.ParseUclient(ucOut)
	if err != nil || rep.SentMsgs == 0 || rep.RecvMsgs != rep.SentMsgs || !strings.Contains(string(ucOut), "error 300 (Try Alternate)") {
		t.Fatalf("turnutils_uclient through the redirect: %+v %v\n%s", rep, err, ucOut)
	}
	if after := allocsOK(t, sockB); after <= before {
		t.Errorf("B created no allocation for turnutils_uclient (%d before, %d after)", before, after)
	}

	// pion/turn's client does not implement ALTERNATE-SERVER.
	var pconn net.PacketConn
	if err := topo.Client.Do(func() (err error) {
		pconn, err = net.ListenPacket("udp4", topo.ClientV4.String()+":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	pc, err := turn.NewClient(&turn.ClientConfig{STUNServerAddr: aAddr.String(), TURNServerAddr: aAddr.String(), Conn: pconn,
		Username: "u", Password: "p", Realm: "hybridrelay", LoggerFactory: logging.NewDefaultLoggerFactory()})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if err := pc.Listen(); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.Allocate(); err == nil || !strings.Contains(err.Error(), "300") {
		t.Errorf("pion/turn Allocate against a draining server: %v (expected the 300 as an error: pion does not follow it)", err)
	}

	var s admin.Snapshot
	cl, err := admin.Dial(sockA)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.Call("stats", &s); err != nil {
		t.Fatal(err)
	}
	if s.Server.Allocations != 1 || !s.Server.Draining || s.Server.Requests["allocate"]["300"] < 3 {
		t.Errorf("A: %d allocations left, draining %v, 300s %d", s.Server.Allocations, s.Server.Draining, s.Server.Requests["allocate"]["300"])
	}
}

// allocsOK is the number of successful Allocates a daemon answered.
func allocsOK(t *testing.T, sock string) uint64 {
	t.Helper()
	cl, err := admin.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var s admin.Snapshot
	if err := cl.Call("stats", &s); err != nil {
		t.Fatal(err)
	}
	return s.Server.Requests["allocate"]["ok"]
}

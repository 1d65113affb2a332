//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"golang.org/x/sys/unix"

	"github.com/hybridrelay/hybridrelay/internal/admin"
	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/internal/privtest"
)

// TestServeExplicitXDPMissingFeature: --datapath xdp where XDP cannot
// attach is an error that says what is missing and that gso works.
func TestServeExplicitXDPMissingFeature(t *testing.T) {
	port := freePort(t)
	_, stderr, code := runBinary(t, nil, "serve", "--listen", fmt.Sprintf("udp://127.0.0.1:%d", port),
		"--datapath", "xdp", "--xdp-iface", "nosuch0", "--admin-socket", "off", "--bpffs", "/sys/fs/bpf/hrtest-none")
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, stderr)
	}
	for _, want := range []string{"datapath xdp: this host lacks", "attach on nosuch0 (no such interface)", "--datapath gso works"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
}

// TestServeAutoPicksXDP runs serve inside the relay namespace of a netns
// topology: auto must choose xdp (root, BPF, bpffs, veths that take XDP),
// attach to both relay interfaces, answer STUN from the client namespace,
// and on SIGTERM exit 0 with the program detached and the pins removed.
// It runs on each relay-host variant (forEachVariant).
func TestServeAutoPicksXDP(t *testing.T) { forEachVariant(t, testServeAutoPicksXDP) }

// forEachVariant runs test as subtests on a relay namespace with default
// sysctls (forwarding off, a server as it comes) and on one that is also
// an IP router (netns.Variants): the kernel path must forward on both
// (docs/design.md, "Invariants for the kernel path" 6).
func forEachVariant(t *testing.T, test func(t *testing.T, to netns.TopologyOptions)) {
	for _, v := range netns.Variants() {
		t.Run(v.Name, func(t *testing.T) { test(t, v.Options) })
	}
}

func testServeAutoPicksXDP(t *testing.T, to netns.TopologyOptions) {
	privtest.Need(t, "ip", "ethtool", "ping")
	topo, err := netns.NewTopologyWith(to)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { topo.Close() })

	pinDir := fmt.Sprintf("/sys/fs/bpf/hrtest-%d-serve", os.Getpid())
	sock := filepath.Join(t.TempDir(), "admin.sock")
	lo, hi := relayRange(t)
	cmd := topo.Relay.Exec(binary, "serve",
		"--listen", "udp://"+topo.RelayClientV4.String()+":3478",
		"--relay-ip", topo.RelayPeerV4.String(),
		"--min-port", fmt.Sprint(lo), "--max-port", fmt.Sprint(hi),
		"--user", "u:p", "--admin-socket", sock, "--bpffs", pinDir, "--metrics-listen", topo.RelayClientV4.String()+":9641")
	// `ip netns exec` runs the daemon in its own mount namespace, so its
	// pins live there and vanish with it; the check below looks inside it
	// through the daemon's own log and the interface state.
	d := runDaemon(t, cmd, nil, 30*time.Second)
	log := d.stderr.String()
	if !strings.Contains(log, `msg="datapath selected" datapath=xdp reason="auto: XDP attaches (`) {
		t.Fatalf("auto did not pick xdp:\n%s", log)
	}
	linkOut, err := topo.Relay.IP("link", "show", topo.RelayClientIf)
	if err != nil || !strings.Contains(linkOut, "xdp") {
		t.Fatalf("no XDP program on %s: %s %v", topo.RelayClientIf, linkOut, err)
	}

	c := dialFromClient(t, topo)
	res := stunRoundTrip(t, c, stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint))
	var xor stun.XORMappedAddress
	if err := xor.GetFrom(res); err != nil || !xor.IP.Equal(topo.ClientV4.AsSlice()) {
		t.Fatalf("XOR-MAPPED-ADDRESS %v (%v), want %v", xor, err, topo.ClientV4)
	}

	// Bind a channel to the peer: the daemon installs it in the kernel,
	// and the operator tools show it.
	bindChannel(t, c, "u", "p", topo.PeerV4.String()+":9000", 0x4001)
	out, stderr, code := runBinary(t, nil, "maps", "dump", "channels", "--admin-socket", sock, "--bpffs", pinDir)
	if code != 0 {
		t.Fatalf("maps dump channels: exit %d: %s", code, stderr)
	}
	// The pins are private to the daemon's mount namespace, so the table
	// comes from the daemon itself.
	want := fmt.Sprintf("0x4001   %s", c.LocalAddr())
	if !strings.Contains(out, "1 channels (daemon on "+sock+")") || !strings.Contains(out, want) ||
		!strings.Contains(out, topo.PeerV4.String()+":9000") {
		t.Fatalf("maps dump channels:\n%s\nwant a line starting %q", out, want)
	}
	out, stderr, code = runBinary(t, nil, "stats", "--admin-socket", sock)
	if code != 0 || !strings.Contains(out, "datapath xdp") || !strings.Contains(out, "kernel fast path (daemon, "+pinDir+"): 1 of 16384 channels, on cli0, peer0") ||
		!strings.Contains(out, "channels 1 (1 in the kernel)") {
		t.Fatalf("stats: exit %d %s\n%s", code, stderr, out)
	}

	// ChannelData from the client is forwarded by the kernel to the peer,
	// and the kernel counters reach stats and the metrics endpoint.
	const sent = 20
	got := sendChannelData(t, topo, c, 0x4001, 9000, sent)
	if got == 0 {
		t.Fatal("the peer received nothing")
	}
	var snap struct {
		Snapshot admin.Snapshot `json:"snapshot"`
	}
	out, stderr, code = runBinary(t, nil, "stats", "--admin-socket", sock, "--json")
	if code != 0 || json.Unmarshal([]byte(out), &snap) != nil || snap.Snapshot.Kernel == nil {
		t.Fatalf("stats --json: exit %d %s\n%s", code, stderr, out)
	}
	kfwd := snap.Snapshot.Kernel.Counters["fwd_to_peer_packets"]
	if kfwd == 0 {
		t.Fatalf("kernel forwarded nothing (peer got %d): %v", got, snap.Snapshot.Kernel.Counters)
	}
	t.Logf("peer received %d of %d; kernel forwarded %d, userspace %d", got, sent, kfwd, snap.Snapshot.Server.UserspaceToPeer.Packets)
	body := scrapeInNS(t, topo.Relay, fmt.Sprintf("http://%s:9641/metrics", topo.RelayClientV4))
	if want := fmt.Sprintf(`hybridrelay_relayed_packets_total{datapath="xdp",direction="to_peer"} %d`, kfwd); !strings.Contains(body, want) {
		t.Errorf("metrics lack %q", want)
	}
	if !strings.Contains(body, `hybridrelay_kernel_channels 1`) || !strings.Contains(body, `hybridrelay_kernel_pass_total{group="normal",reason="no_entry"}`) {
		t.Errorf("metrics lack the kernel table or pass reasons")
	}

	// The in-place cost of the attached program, measured by stats with
	// BPF statistics on for the window only, while ChannelData flows.
	stop := make(chan struct{})
	go func() {
		cd := []byte{0x40, 0x01, 0, 4, 'c', 'o', 's', 't'}
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
				c.Write(cd)
			}
		}
	}()
	out, stderr, code = runBinary(t, nil, "stats", "--admin-socket", sock, "--prog-cost", "500ms", "--json")
	close(stop)
	var pc struct {
		ProgCost struct {
			ProgramID uint32  `json:"program_id"`
			Runs      uint64  `json:"runs"`
			NsPerPkt  float64 `json:"ns_per_packet"`
		} `json:"prog_cost"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &pc) != nil || pc.ProgCost.ProgramID == 0 || pc.ProgCost.Runs < 20 || pc.ProgCost.NsPerPkt <= 0 {
		t.Fatalf("stats --prog-cost: exit %d %s\n%s", code, stderr, out)
	}
	if b, err := os.ReadFile("/proc/sys/kernel/bpf_stats_enabled"); err != nil || strings.TrimSpace(string(b)) != "0" {
		t.Errorf("kernel.bpf_stats_enabled is %q after the measurement (%v), want 0 restored", b, err)
	}
	t.Logf("stats --prog-cost: program %d, %.0f ns per packet over %d runs", pc.ProgCost.ProgramID, pc.ProgCost.NsPerPkt, pc.ProgCost.Runs)
	if code := d.stop(t, syscall.SIGTERM, 15*time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit %d", code)
	}
	out, _ = topo.Relay.IP("link", "show", topo.RelayClientIf)
	if strings.Contains(out, "xdp") {
		t.Fatalf("XDP still attached after shutdown: %s", out)
	}
	// Pins made inside `ip netns exec` are private to that mount
	// namespace; the root namespace must not see any either way.
	if _, err := os.Stat(pinDir); err == nil {
		t.Fatalf("pin directory %s left behind", pinDir)
	}
	if !strings.Contains(d.stderr.String(), "msg=stopped") {
		t.Fatalf("no graceful stop:\n%s", d.stderr.String())
	}
	t.Logf("daemon log:\n%s", d.stderr.String())
}

// TestServeNoArguments runs `hybridrelay serve` exactly as the README's
// quick start does, inside the relay namespace of a topology (so 3478 is
// free and the host is untouched): the embedded default on 0.0.0.0:3478
// UDP and TCP, a relay address picked from the interfaces, the best
// datapath, and a printed demo user that can allocate. Only the admin
// socket is moved out of /run, through the environment.
func TestServeNoArguments(t *testing.T) {
	privtest.Need(t, "ip", "ethtool", "ping")
	topo, err := netns.NewTopology()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { topo.Close() })
	d := runDaemon(t, topo.Relay.Exec(binary, "serve"),
		[]string{"HYBRIDRELAY_ADMIN_SOCKET=" + filepath.Join(t.TempDir(), "admin.sock")}, 30*time.Second)
	out := d.waitDemo(t, 10*time.Second)
	log := d.stderr.String()
	for _, want := range []string{
		`listeners="[{Network:udp Addr:0.0.0.0:3478} {Network:tcp Addr:0.0.0.0:3478}]"`,
		"relay-ip not set; picked one",
		`msg="datapath selected" datapath=xdp`,
		"level=WARN msg=\"no users or auth secrets configured",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	i := strings.Index(out, "password: ")
	if i < 0 {
		t.Fatalf("no demo password printed:\n%s", out)
	}
	pass := strings.Fields(out[i+len("password: "):])[0]
	if !strings.Contains(out, "url: turn:"+topo.RelayClientV4.String()+":3478?transport=udp") &&
		!strings.Contains(out, "url: turn:"+topo.RelayPeerV4.String()+":3478?transport=udp") {
		t.Errorf("printed URLs do not name a relay address:\n%s", out)
	}
	c := dialFromClient(t, topo)
	if res := allocate(t, c, "demo", pass); res.Type != stun.NewType(stun.MethodAllocate, stun.ClassSuccessResponse) {
		t.Fatalf("Allocate with the printed demo user: %v", res)
	}
	if code := d.stop(t, os.Interrupt, 15*time.Second); code != 0 {
		t.Fatalf("Ctrl-C: exit %d", code)
	}
}

// sendChannelData sends n ChannelData messages (RFC 8656 section 12.4) on
// c for channel and counts what arrives at the peer on port, within 3 s.
// The peer's end of the veth gets an XDP_PASS program, without which
// frames the relay program redirects into the veth are dropped.
func sendChannelData(t *testing.T, topo *netns.Topology, c *net.UDPConn, channel uint16, port, n int) int {
	t.Helper()
	defer attachPassEnds(t, topo)()
	var peer *net.UDPConn
	if err := topo.Peer.Do(func() error {
		var err error
		peer, err = net.ListenUDP("udp4", &net.UDPAddr{IP: topo.PeerV4.AsSlice(), Port: port})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	payload := []byte("hybridrelay channel data 0123456789")
	msg := make([]byte, 4+len(payload))
	msg[0], msg[1] = byte(channel>>8), byte(channel)
	msg[2], msg[3] = byte(len(payload)>>8), byte(len(payload))
	copy(msg[4:], payload)
	for i := 0; i < n; i++ {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
	}
	got := 0
	buf := make([]byte, 2048)
	peer.SetReadDeadline(time.Now().Add(3 * time.Second))
	for got < n {
		m, _, err := peer.ReadFromUDP(buf)
		if err != nil {
			break
		}
		if string(buf[:m]) != string(payload) {
			t.Fatalf("peer got %q, want %q", buf[:m], payload)
		}
		got++
	}
	return got
}

// scrapeInNS fetches url from inside ns (the daemon's endpoint is bound
// to an address of that namespace).
func scrapeInNS(t *testing.T, ns *netns.NS, url string) string {
	t.Helper()
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			var err error
			c, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// dialFromClient opens a UDP socket in the client namespace connected to
// the relay's listener (198.18.0.2:3478), closed when the test ends.
func dialFromClient(t *testing.T, topo *netns.Topology) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := topo.Client.Do(func() (err error) {
		c, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: topo.RelayClientV4.AsSlice(), Port: 3478})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// startInNS starts serve inside ns with args and waits until it serves.
func startInNS(t *testing.T, ns *netns.NS, args ...string) *daemonProc {
	t.Helper()
	return runDaemon(t, ns.Exec(binary, append([]string{"serve"}, args...)...), nil, 30*time.Second)
}

// TestServeRestartKeepsKernelPath: with a state file, SIGTERM is a restart:
// the kernel keeps forwarding the bound channel while no daemon runs (the
// operator tools read it from the pins), and the next serve re-adopts the
// maps and the allocation. maps unpin finally removes everything. It runs
// on each relay-host variant (forEachVariant).
func TestServeRestartKeepsKernelPath(t *testing.T) {
	forEachVariant(t, testServeRestartKeepsKernelPath)
}

func testServeRestartKeepsKernelPath(t *testing.T, to netns.TopologyOptions) {
	privtest.Need(t, "ip", "ethtool", "ping")
	topo, err := netns.NewTopologyWith(to)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { topo.Close() })
	// `ip netns exec` gives every daemon its own /sys, so the pins go to a
	// bpffs mounted where both daemons and this test see it.
	dir := t.TempDir()
	mnt := filepath.Join(dir, "bpf")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", mnt, "bpf", 0, "mode=0700"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	pins := filepath.Join(mnt, "hybridrelay")
	sock := filepath.Join(dir, "admin.sock")
	lo, hi := relayRange(t)
	args := []string{"--listen", "udp://" + topo.RelayClientV4.String() + ":3478", "--relay-ip", topo.RelayPeerV4.String(),
		"--min-port", fmt.Sprint(lo), "--max-port", fmt.Sprint(hi), "--user", "u:p", "--datapath", "xdp",
		"--bpffs", pins, "--state-file", filepath.Join(dir, "state.json"), "--admin-socket", sock}

	d := startInNS(t, topo.Relay, args...)
	c := dialFromClient(t, topo)
	bindChannel(t, c, "u", "p", topo.PeerV4.String()+":9000", 0x4123)
	if got := sendChannelData(t, topo, c, 0x4123, 9000, 10); got != 10 {
		t.Fatalf("before restart: peer got %d of 10", got)
	}
	if code := d.stop(t, syscall.SIGTERM, 15*time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit %d", code)
	}
	if !strings.Contains(d.stderr.String(), "keeping kernel fast path entries for re-adoption") {
		t.Fatalf("no restart-style shutdown logged")
	}

	// No daemon: the kernel still forwards, and the tools read the pins.
	if got := sendChannelData(t, topo, c, 0x4123, 9000, 10); got != 10 {
		t.Fatalf("while down: peer got %d of 10", got)
	}
	out, stderr, code := runBinary(t, nil, "maps", "dump", "channels", "--bpffs", pins, "--admin-socket", sock)
	if code != 0 || !strings.Contains(out, "1 channels (pinned maps in "+pins+")") || !strings.Contains(out, "0x4123") {
		t.Fatalf("maps dump while down: exit %d %s\n%s", code, stderr, out)
	}
	out, stderr, code = runBinary(t, nil, "stats", "--bpffs", pins, "--admin-socket", sock, "--json")
	var snap struct {
		Snapshot admin.Snapshot `json:"snapshot"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &snap) != nil || snap.Snapshot.Kernel == nil ||
		snap.Snapshot.Kernel.Counters["fwd_to_peer_packets"] < 20 {
		t.Fatalf("stats while down: exit %d %s\n%s", code, stderr, out)
	}
	d2 := startInNS(t, topo.Relay, args...)
	if !strings.Contains(d2.stderr.String(), "readopted_channels=1") {
		t.Errorf("second daemon did not re-adopt the channel")
	}
	if got := sendChannelData(t, topo, c, 0x4123, 9000, 10); got != 10 {
		t.Fatalf("after restart: peer got %d of 10", got)
	}
	out, _, _ = runBinary(t, nil, "stats", "--admin-socket", sock)
	if !strings.Contains(out, "allocations 1 ") || !strings.Contains(out, "(1 in the kernel)") {
		t.Errorf("allocation not restored:\n%s", out)
	}
	_, stderr, code = runBinary(t, nil, "maps", "unpin", "--bpffs", pins, "--admin-socket", sock)
	if code != 1 || !strings.Contains(stderr, "stop it first") {
		t.Fatalf("unpin with a daemon running: exit %d %s", code, stderr)
	}
	if code := d2.stop(t, syscall.SIGTERM, 15*time.Second); code != 0 {
		t.Fatalf("second SIGTERM: exit %d", code)
	}
	out, stderr, code = runBinary(t, nil, "maps", "unpin", "--bpffs", pins, "--admin-socket", sock)
	if code != 0 || !strings.Contains(out, "removed "+pins+" (1 channels, 2 XDP links detached)") {
		t.Fatalf("unpin: exit %d %s\n%s", code, stderr, out)
	}
	for _, ifc := range []string{topo.RelayClientIf, topo.RelayPeerIf} {
		if out, _ := topo.Relay.IP("link", "show", ifc); strings.Contains(out, "xdp") {
			t.Errorf("XDP still on %s after unpin: %s", ifc, out)
		}
	}
}

//go:build linux

package main

import (
	be "encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hybridrelay/hybridrelay/internal/admin"
	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/internal/privtest"
	"github.com/hybridrelay/hybridrelay/pkg/control"
	"github.com/hybridrelay/hybridrelay/pkg/loader"
)

// attachPassEnds puts an XDP_PASS program on the client's and the peer's
// veth ends: frames the relay program redirects into a veth are dropped
// unless the other end has an XDP program. It returns the cleanup.
func attachPassEnds(t *testing.T, topo *netns.Topology) func() {
	t.Helper()
	x, err := loader.Load(loader.Options{DisablePin: true})
	if err != nil {
		t.Fatal(err)
	}
	closers := []interface{ Close() error }{x}
	for _, end := range []struct {
		ns    *netns.NS
		iface string
	}{{topo.Peer, topo.PeerIf}, {topo.Client, topo.ClientIf}} {
		var closer interface{ Close() error }
		var idx int
		// The index is resolved inside the namespace (netns.NS.Ifindex
		// reads the root namespace's /sys, which has its own eth0).
		if err := end.ns.Do(func() error {
			ifc, err := net.InterfaceByName(end.iface)
			if err != nil {
				return err
			}
			idx = ifc.Index
			closer, err = x.AttachPass(idx, loader.ModeNative)
			return err
		}); err != nil {
			out, _ := end.ns.IP("-d", "link", "show", end.iface)
			t.Fatalf("pass program on %s/%s (ifindex %d): %v\n%s", end.ns.Name, end.iface, idx, err, out)
		}
		closers = append([]interface{ Close() error }{closer}, closers...)
	}
	return func() {
		for _, c := range closers {
			c.Close()
		}
	}
}

// podGap is how long no daemon runs between the old pod's exit and the
// new pod's start (a kubelet restarting a container takes about as long).
const podGap = 2 * time.Second

// flow sends sequence-numbered datagrams at a fixed rate and counts the
// distinct sequence numbers that arrive.
type flow struct {
	sent     atomic.Uint64
	received atomic.Uint64
	seenMu   sync.Mutex
	seen     map[uint32]bool
}

func (f *flow) mark(seq uint32) {
	f.seenMu.Lock()
	defer f.seenMu.Unlock()
	if !f.seen[seq] {
		f.seen[seq] = true
		f.received.Add(1)
	}
}

// TestServeRestartFlowDelivery is the DaemonSet's pod restart, measured: a
// channel relayed by the kernel carries a steady flow in both directions
// (1000 datagrams/s each way) while the daemon goes through what the
// kubelet does to a pod — the preStop hook (`hybridrelay drain --wait`),
// SIGTERM with a state file, and a new process on the same bpffs and state
// file, started podGap after the old one exited. At least 99 % of each
// direction must arrive, and the kernel must have forwarded at least 99 %
// of what was sent.
func TestServeRestartFlowDelivery(t *testing.T) {
	privtest.Need(t, "ip", "ethtool", "ping")
	topo, err := netns.NewTopology()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { topo.Close() })
	// The hostPath volumes: a bpffs and a state directory both processes
	// see (`ip netns exec` gives every process its own /sys).
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
	defer attachPassEnds(t, topo)()

	const channel, peerPort = 0x4321, 9000
	client := dialFromClient(t, topo)
	bindChannel(t, client, "u", "p", fmt.Sprintf("%s:%d", topo.PeerV4, peerPort), channel)
	var allocs []control.AllocationInfo
	cl, err := admin.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	err = cl.Call("allocations", &allocs)
	cl.Close()
	if err != nil || len(allocs) != 1 || len(allocs[0].Relays) != 1 {
		t.Fatalf("allocations: %v %v", allocs, err)
	}
	relayed := net.UDPAddrFromAddrPort(allocs[0].Relays[0])
	var peer *net.UDPConn
	if err := topo.Peer.Do(func() (err error) {
		peer, err = net.ListenUDP("udp4", &net.UDPAddr{IP: topo.PeerV4.AsSlice(), Port: peerPort})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	for _, c := range []*net.UDPConn{client, peer} {
		c.SetReadBuffer(4 << 20)
		c.SetReadDeadline(time.Time{}) // the STUN exchange left one
	}

	// Client to peer: ChannelData with a sequence number; peer to client:
	// plain datagrams to the relayed address, arriving as ChannelData.
	const rate = 1000 // datagrams per second per direction
	up, down := &flow{seen: map[uint32]bool{}}, &flow{seen: map[uint32]bool{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	send := func(f *flow, write func(seq uint32) error) {
		defer wg.Done()
		start := time.Now()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		var seq uint32
		for {
			select {
			case <-stop:
				return
			case now := <-tick.C:
				for due := uint32(now.Sub(start) * rate / time.Second); seq < due; seq++ {
					if err := write(seq); err != nil {
						t.Errorf("send %d: %v", seq, err)
						return
					}
					f.sent.Add(1)
				}
			}
		}
	}
	recv := func(c *net.UDPConn, f *flow, off int) {
		defer wg.Done()
		buf := make([]byte, 2048)
		for {
			n, err := c.Read(buf)
			if errors.Is(err, net.ErrClosed) {
				return // closed at the end
			}
			if err != nil {
				t.Errorf("receive: %v", err)
				return
			}
			if n >= off+4 {
				f.mark(be.BigEndian.Uint32(buf[off:]))
			}
		}
	}
	wg.Add(4)
	go recv(peer, up, 0)
	go recv(client, down, 4) // after the ChannelData header
	go send(up, func(seq uint32) error {
		var m [4 + 64]byte
		be.BigEndian.PutUint16(m[0:], channel)
		be.BigEndian.PutUint16(m[2:], 64)
		be.BigEndian.PutUint32(m[4:], seq)
		_, err := client.Write(m[:])
		return err
	})
	go send(down, func(seq uint32) error {
		var m [64]byte
		be.BigEndian.PutUint32(m[:], seq)
		_, err := peer.WriteToUDP(m[:], relayed)
		return err
	})

	// Steady flow, then the pod restart as the kubelet runs it.
	time.Sleep(time.Second)
	restartAt := time.Now()
	if out, stderr, code := runBinary(t, nil, "drain", "--wait", "1s", "--admin-socket", sock); code != 0 {
		t.Fatalf("preStop drain: exit %d %s\n%s", code, stderr, out)
	}
	if code := d.stop(t, syscall.SIGTERM, 15*time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit %d", code)
	}
	down1 := time.Now()
	// The kubelet starts the new pod's container some time after the old
	// one exited; the kernel path must carry the flow alone meanwhile.
	time.Sleep(podGap)
	d2 := startInNS(t, topo.Relay, args...)
	restartDone := time.Now()
	time.Sleep(2 * time.Second)
	close(stop)
	time.Sleep(300 * time.Millisecond) // in flight
	peer.Close()
	client.Close()
	wg.Wait()

	cl, err = admin.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var snap admin.Snapshot
	if err := cl.Call("stats", &snap); err != nil {
		t.Fatal(err)
	}
	if snap.Kernel == nil {
		t.Fatal("no kernel counters after the restart")
	}
	fwdUp, fwdDown := snap.Kernel.Counters["fwd_to_peer_packets"], snap.Kernel.Counters["fwd_to_client_packets"]
	readopted := d2.stderr.String()
	t.Logf("restart: preStop drain and SIGTERM took %s; the new process served %s after the old one exited (%s of it with no process at all)",
		down1.Sub(restartAt).Round(time.Millisecond), restartDone.Sub(down1).Round(time.Millisecond), podGap)
	for _, r := range []struct {
		name string
		f    *flow
		fwd  uint64
	}{{"client to peer", up, fwdUp}, {"peer to client", down, fwdDown}} {
		sent, got := r.f.sent.Load(), r.f.received.Load()
		share := float64(got) / float64(sent)
		t.Logf("%s: sent %d, delivered %d (%.2f %%), kernel forwarded %d (%.2f %%)", r.name, sent, got, 100*share, r.fwd, 100*float64(r.fwd)/float64(sent))
		if sent < 5*rate {
			t.Errorf("%s: only %d sent; the flow did not run through the restart", r.name, sent)
		}
		if share < 0.99 {
			t.Errorf("%s: %.2f %% delivered through the restart, want >= 99 %%", r.name, 100*share)
		}
		if float64(r.fwd) < 0.99*float64(sent) {
			t.Errorf("%s: the kernel forwarded %d of %d: the flow left the kernel path", r.name, r.fwd, sent)
		}
	}
	if !strings.Contains(readopted, "readopted_channels=1") {
		t.Errorf("the new process did not re-adopt the channel")
	}
	if snap.Server == nil || snap.Server.Allocations != 1 || snap.Server.Draining {
		t.Errorf("after the restart: %+v (want the allocation restored, not draining)", snap.Server)
	}
}

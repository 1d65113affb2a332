package xdpe2e

import (
	"context"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/interop"
	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/internal/privtest"
	"github.com/hybridrelay/hybridrelay/pkg/loader"
)

// startTurnutilsPeer runs coturn's echo peer in the peer namespace.
func startTurnutilsPeer(t *testing.T, e *env, port uint16) netip.AddrPort {
	t.Helper()
	addr := netip.AddrPortFrom(e.peerIP(), port)
	cmd := exec.Command("ip", "netns", "exec", e.topo.Peer.Name, "turnutils_peer",
		"-L", addr.Addr().String(), "-p", strconv.Itoa(int(port)))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	// Wait until it echoes (probed from the relay namespace, which routes
	// to the peer directly).
	deadline := time.Now().Add(5 * time.Second)
	for {
		var err error
		derr := e.topo.Relay.Do(func() error {
			var c *net.UDPConn
			c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
			if err != nil {
				return nil
			}
			defer c.Close()
			c.Write([]byte("probe"))
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			buf := make([]byte, 16)
			_, err = c.Read(buf)
			return nil
		})
		if derr == nil && err == nil {
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("turnutils_peer on %v does not echo: %v %v", addr, derr, err)
		}
	}
}

// runUclient runs turnutils_uclient (channel mode, no RTCP) in the client
// namespace against the relay, with msgs messages of msgLen bytes to
// peer, plus extra flags; it returns the parsed summary, the command line
// and the output.
func runUclient(t *testing.T, e *env, msgs, msgLen int, peer netip.AddrPort, extra ...string) (interop.UclientReport, string, []byte) {
	t.Helper()
	args := append([]string{"netns", "exec", e.topo.Client.Name, "turnutils_uclient"}, extra...)
	args = append(args, "-c", "-n", strconv.Itoa(msgs), "-l", strconv.Itoa(msgLen), "-z", "5",
		"-p", strconv.Itoa(listenPort), "-e", peer.Addr().String(), "-r", strconv.Itoa(int(peer.Port())),
		"-u", user, "-w", pass)
	if e.v6 {
		args = append(args, "-x")
	}
	args = append(args, e.listener().Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	cmdline := "ip " + strings.Join(args, " ")
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmdline, err, out)
	}
	rep, err := interop.ParseUclient(out)
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmdline, err, out)
	}
	return rep, cmdline, out
}

// TestUclientThroughXDP: coturn's turnutils_uclient (ChannelData mode)
// against the relay with the XDP program attached, echoed by
// turnutils_peer. The channel is installed before the ChannelBind success
// response leaves, so every data message is forwarded by the kernel in
// both directions.
func TestUclientThroughXDP(t *testing.T) {
	privtest.Need(t, "turnutils_uclient", "turnutils_peer")
	forEachVariant(t, testUclientThroughXDP)
}

func testUclientThroughXDP(t *testing.T, to netns.TopologyOptions) {
	for _, fam := range []struct {
		name string
		v6   bool
	}{{"ipv4", false}, {"ipv6", true}} {
		t.Run(fam.name, func(t *testing.T) {
			e := newEnv(t, to, fam.v6, nil)
			peer := startTurnutilsPeer(t, e, 3480)
			const msgs, msgLen = 20, 200
			before := counters(t, e.path.X)
			rep, cmdline, out := runUclient(t, e, msgs, msgLen, peer)
			if rep.SentMsgs != msgs || rep.RecvMsgs != msgs || rep.LostPackets != 0 || len(rep.Errors) != 0 || rep.RecvBytes != msgs*msgLen {
				t.Fatalf("%s: sent %d received %d (%d bytes) lost %d errors %q\n%s",
					cmdline, rep.SentMsgs, rep.RecvMsgs, rep.RecvBytes, rep.LostPackets, rep.Errors, out)
			}
			after := counters(t, e.path.X)
			if st := e.srv.Stats(); st.OffloadInstallErrors != 0 {
				t.Errorf("%d offload install errors", st.OffloadInstallErrors)
			}
			toPeer := after.Get(loader.FwdToPeerPackets) - before.Get(loader.FwdToPeerPackets)
			toClient := after.Get(loader.FwdToClientPackets) - before.Get(loader.FwdToClientPackets)
			if toPeer != msgs || toClient != msgs {
				t.Fatalf("xdp forwarded %d to the peer and %d to the client, want %d each (counters %v)", toPeer, toClient, msgs, after.Map())
			}
			if b := after.Get(loader.FwdToPeerBytes) - before.Get(loader.FwdToPeerBytes); b != msgs*msgLen {
				t.Fatalf("xdp forwarded %d data bytes to the peer, want %d", b, msgs*msgLen)
			}
		})
	}
}

// TestUclientHairpinInKernel: turnutils_uclient -y makes two allocations of
// this server talk to each other through their relayed addresses over
// channels (relay to relay). The program turns each ChannelData into the
// other client's ChannelData itself: every message is delivered byte-exact
// and counted as hairpin, none goes to a peer or through userspace.
func TestUclientHairpinInKernel(t *testing.T) {
	privtest.Need(t, "turnutils_uclient")
	forEachVariant(t, testUclientHairpinInKernel)
}

func testUclientHairpinInKernel(t *testing.T, to netns.TopologyOptions) {
	for _, fam := range []struct {
		name string
		v6   bool
	}{{"ipv4", false}, {"ipv6", true}} {
		t.Run(fam.name, func(t *testing.T) {
			e := newEnv(t, to, fam.v6, nil)
			const msgs, msgLen = 20, 160
			before := counters(t, e.path.X)
			// -e/-r are required but unused with -y.
			rep, cmdline, out := runUclient(t, e, msgs, msgLen, netip.AddrPortFrom(e.peerIP(), 3480), "-y")
			if rep.RecvMsgs != rep.SentMsgs || rep.SentMsgs < msgs || rep.LostPackets != 0 || len(rep.Errors) != 0 ||
				rep.RecvBytes != rep.RecvMsgs*msgLen {
				t.Fatalf("%s: sent %d received %d (%d bytes) lost %d errors %q\n%s",
					cmdline, rep.SentMsgs, rep.RecvMsgs, rep.RecvBytes, rep.LostPackets, rep.Errors, out)
			}
			after := counters(t, e.path.X)
			hp := after.Get(loader.FwdHairpinPackets) - before.Get(loader.FwdHairpinPackets)
			toPeer := after.Get(loader.FwdToPeerPackets) - before.Get(loader.FwdToPeerPackets)
			local := after.Get(loader.PassLocal) - before.Get(loader.PassLocal)
			t.Logf("uclient sent %d messages client to client; kernel hairpin %d, to peer %d, passed as local %d",
				rep.SentMsgs, hp, toPeer, local)
			// Both clients' channels are bound before any data flows,
			// so every message takes the kernel's relay-to-relay path.
			if hp != uint64(rep.SentMsgs) || toPeer != 0 || local != 0 {
				t.Fatalf("kernel hairpin %d of %d messages (to peer %d, local %d; counters %v)", hp, rep.SentMsgs, toPeer, local, after.Map())
			}
			if b := after.Get(loader.FwdHairpinBytes) - before.Get(loader.FwdHairpinBytes); b != uint64(rep.SentMsgs*msgLen) {
				t.Fatalf("kernel hairpin carried %d data bytes, want %d", b, rep.SentMsgs*msgLen)
			}
		})
	}
}

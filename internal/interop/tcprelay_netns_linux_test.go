package interop

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/privtest"
)

// TestNetnsTCPRelay: RFC 6062 across the namespaces under the default
// peer policy (no allow-list). turnutils_uclient -T pairs in the client
// namespace reach each other's TCP relayed addresses (this server's own
// address, reachable as a peer only on live TCP relays); pion's client in
// the client namespace connects through a TCP allocation to a TCP echo
// peer in the peer namespace, which it cannot reach directly (the relay
// namespace does not forward).
func TestNetnsTCPRelay(t *testing.T) {
	privtest.Need(t, "ip", "ethtool", "ping", "turnutils_uclient")
	t.Parallel()
	r := startNetnsRelay(t)

	t.Run("uclient-client-to-client", func(t *testing.T) {
		const msgs, msgLen = 20, 300
		args := []string{"netns", "exec", r.topo.Client.Name, "turnutils_uclient", "-T", "-m", "2",
			"-n", strconv.Itoa(msgs), "-l", strconv.Itoa(msgLen), "-z", "5",
			"-p", strconv.Itoa(int(r.addr4.Port())), "-u", testUser, "-w", testPass, r.addr4.Addr().String()}
		ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
		defer cancel()
		out, err := runBounded(ctx, "ip", args...)
		cmdline := "ip " + strings.Join(args, " ")
		if err != nil {
			t.Fatalf("%s: %v\n%s", cmdline, err, out)
		}
		rep, err := ParseUclient(out)
		if err != nil {
			t.Fatalf("%s: %v\n%s", cmdline, err, out)
		}
		want := int64(2 * msgs)
		if rep.SentMsgs != want || rep.RecvMsgs != want || rep.LostPackets != 0 || len(rep.Errors) != 0 ||
			rep.RecvBytes != want*msgLen || rep.SentBytes != want*msgLen {
			t.Fatalf("%s: sent %d received %d (%d bytes) lost %d errors %q, want %d/%d/0/none\n%s",
				cmdline, rep.SentMsgs, rep.RecvMsgs, rep.RecvBytes, rep.LostPackets, rep.Errors, want, want, out)
		}
	})

	t.Run("pion-to-peer-namespace", func(t *testing.T) {
		var ln *net.TCPListener
		if err := r.topo.Peer.Do(func() error {
			var err error
			ln, err = net.ListenTCP("tcp4", &net.TCPAddr{IP: r.topo.PeerV4.AsSlice(), Port: 0})
			return err
		}); err != nil {
			t.Fatalf("peer listener: %v", err)
		}
		defer ln.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			if c, err := ln.Accept(); err == nil {
				accepted <- c
			}
		}()
		var alloc pionTCP
		var dc net.Conn
		if err := r.topo.Client.Do(func() error {
			alloc = pionTCPAllocation(t, r.addr4)
			var err error
			dc, err = alloc.Dial("tcp4", ln.Addr().String())
			return err
		}); err != nil {
			t.Fatalf("pion Dial through the TCP allocation: %v", err)
		}
		defer dc.Close()
		var pc net.Conn
		select {
		case pc = <-accepted:
		case <-time.After(5 * time.Second):
			t.Fatal("the peer saw no connection")
		}
		defer pc.Close()
		if got, want := pc.RemoteAddr().String(), alloc.Addr().String(); got != want {
			t.Fatalf("peer connection from %s, want the relayed address %s", got, want)
		}
		pipeBytes(t, "client to peer", dc, pc, 300000)
		pipeBytes(t, "peer to client", pc, dc, 300000)
	})

	r.stop()
	if !r.statsOK {
		t.Fatal("the server helper printed no final stats")
	}
	if p := r.stats.Protocol; p["tcp_binds"] < 3 || p["tcp_bytes_to_peer"] < 300000 {
		t.Errorf("protocol counters %v", p)
	}
	if r.stats.Drops["panics"] != 0 {
		t.Errorf("%d panics", r.stats.Drops["panics"])
	}
}

package dpe2e

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/internal/privtest"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// BenchmarkRelaySendVeth measures the relay's send path per datagram across
// a real veth link (checksum offload off, as in the benchmark topology, so a
// UDP_SEGMENT super-packet is segmented in software at the veth): a trigger
// datagram from the client makes the relay's listener handler send a burst
// of 64 datagrams through Tx to the peer on the relay socket (the
// client->peer shape of one read batch). plain and gso run in the same
// process, alternating per -count.
//
//	go test -run '^$' -bench RelaySendVeth -count 6 ./internal/dpe2e
func BenchmarkRelaySendVeth(b *testing.B) {
	privtest.Need(b, "ip", "ethtool", "ping")
	topo := netns.ForTest(b, netns.TopologyOptions{})
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, size := range []int{120, 1200} {
		for _, name := range []string{"plain", "gso"} {
			b.Run(fmt.Sprintf("%dB/%s", size, name), func(b *testing.B) {
				var dp dataplane.Datapath
				var err error
				if name == "plain" {
					dp = dataplane.NewPlain()
				} else if dp, err = dataplane.NewGSO(dataplane.GSOOptions{Logger: quiet}); err != nil {
					b.Fatal(err)
				}
				defer dp.Close()
				benchBurst(b, topo, dp, size)
			})
		}
	}
}

func benchBurst(b *testing.B, topo *netns.Topology, dp dataplane.Datapath, size int) {
	const burst = 64
	var peer, client *net.UDPConn
	if err := topo.Peer.Do(func() (err error) {
		peer, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(topo.PeerV4, 0)))
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer peer.Close() // never read: the kernel drops once its queue is full
	if err := topo.Client.Do(func() (err error) {
		client, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(topo.ClientV4, 0)))
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	peerAddr := peer.LocalAddr().(*net.UDPAddr).AddrPort()
	payload := make([]byte, size)
	done := make(chan struct{}, 1)
	var rel, lis dataplane.Conn
	if err := topo.Relay.Do(func() (err error) {
		rel, err = dp.OpenRelay(netip.AddrPortFrom(topo.RelayPeerV4, 0), func(dataplane.Tx, dataplane.Conn, netip.AddrPort, []byte) {})
		if err != nil {
			return err
		}
		lis, err = dp.Listen(netip.AddrPortFrom(topo.RelayClientV4, 0), func(tx dataplane.Tx, _ dataplane.Conn, _ netip.AddrPort, _ []byte) {
			for i := 0; i < burst; i++ {
				tx.Send(rel, payload, peerAddr)
			}
			done <- struct{}{}
		})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	trigger := func() {
		if _, err := client.WriteToUDPAddrPort([]byte{1}, lis.LocalAddr()); err != nil {
			b.Fatal(err)
		}
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			b.Fatal("relay handler did not run")
		}
	}
	trigger() // warm up
	before := dp.Stats()
	b.SetBytes(int64(size))
	n := 0
	for b.Loop() {
		if n%burst == 0 {
			trigger()
		}
		n++
	}
	trigger() // flushes the last burst (gso sends after the handler returns)
	after := dp.Stats()
	sent := after.TxPackets - before.TxPackets
	calls := (after.TxGSOSends + after.TxMmsgCalls + after.TxSingleSends) - (before.TxGSOSends + before.TxMmsgCalls + before.TxSingleSends)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(sent), "ns/sent")
	b.ReportMetric(float64(calls)/float64(sent), "syscalls/datagram")
}

package dpe2e

import (
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/internal/privtest"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// Fixed ports, so the 5-tuples (and so the UDP headers) are the same in
// every run and whole datagrams can be compared.
const (
	listenPort = 3478
	relayPort  = 50000
	clientPort = 40000
	peerPort   = 40001
)

// burstMarker as the first payload byte makes the relay handler wait at the
// gate before handling the datagram, so the rest of the burst is queued on
// the socket and read in one batch.
const burstMarker = 0xB0

// chanHdr is the 4-byte ChannelData-shaped header (RFC 8656 section 12.4)
// the toy relay strips client->peer and prepends peer->client.
func chanHdr(n int) []byte { return []byte{0x40, 0x00, byte(n >> 8), byte(n)} }

// traffic is the test's payload sequence: bursts of same-size datagrams
// (one above 64 segments, so runs are split), a short last one, and odd
// sizes that never coalesce. Payloads differ by direction and index.
func traffic(dir byte) [][][]byte {
	var bursts [][][]byte
	mk := func(n, size, last int) [][]byte {
		var b [][]byte
		for i := 0; i < n; i++ {
			sz := size
			if i == n-1 && last > 0 {
				sz = last
			}
			p := make([]byte, sz)
			for j := range p {
				p[j] = byte(j*31 + i*7 + int(dir))
			}
			p[0] = dir
			if i == 0 {
				p[0] = burstMarker
			}
			b = append(b, p)
		}
		return b
	}
	bursts = append(bursts, mk(40, 120, 60), mk(20, 1200, 0), mk(70, 100, 0), mk(16, 1400, 1399))
	var odd [][]byte
	// 3000 bytes is above the 1500-byte MTU: fragmented by the relay's
	// kernel, without DF, on both datapaths (relay sockets start without
	// DONT-FRAGMENT, listeners fragment what does not fit).
	for i, sz := range []int{1, 17, 1300, 2, 3000, 999, 1448, 64, 1201} {
		p := bytes.Repeat([]byte{dir, byte(i)}, sz)[:sz]
		if i == 0 {
			p[0] = burstMarker
		}
		odd = append(odd, p)
	}
	return append(bursts, odd)
}

// relay is the toy relay-shaped handler pair: the listener strips the
// header and forwards to the peer through the relay socket; the relay
// socket prepends the header and forwards to the client through the
// listener. Both wait at gate on a burst's first datagram.
type relay struct {
	dp        dataplane.Datapath
	lis, rel  dataplane.Conn
	peer      netip.AddrPort
	client    atomic.Pointer[netip.AddrPort]
	gate      chan struct{}
	forwarded atomic.Int64
}

func startRelay(topo *netns.Topology, dp dataplane.Datapath, v6 bool) (*relay, error) {
	r := &relay{dp: dp, gate: make(chan struct{})}
	lisAddr, relAddr := topo.RelayClientV4, topo.RelayPeerV4
	r.peer = netip.AddrPortFrom(topo.PeerV4, peerPort)
	if v6 {
		lisAddr, relAddr = topo.RelayClientV6, topo.RelayPeerV6
		r.peer = netip.AddrPortFrom(topo.PeerV6, peerPort)
	}
	err := topo.Relay.Do(func() (err error) {
		r.rel, err = dp.OpenRelay(netip.AddrPortFrom(relAddr, relayPort), func(tx dataplane.Tx, _ dataplane.Conn, _ netip.AddrPort, p []byte) {
			if len(p) > 0 && p[0] == burstMarker {
				<-r.gate
			}
			cl := r.client.Load()
			if cl == nil {
				return
			}
			out := append(chanHdr(len(p)), p...)
			tx.Send(r.lis, out, *cl)
			r.forwarded.Add(1)
		})
		if err != nil {
			return err
		}
		r.lis, err = dp.Listen(netip.AddrPortFrom(lisAddr, listenPort), func(tx dataplane.Tx, _ dataplane.Conn, from netip.AddrPort, p []byte) {
			if len(p) < 4 || int(binary.BigEndian.Uint16(p[2:4])) != len(p)-4 {
				return
			}
			if len(p) > 4 && p[4] == burstMarker {
				<-r.gate
			}
			if cl := r.client.Load(); cl == nil || *cl != from {
				r.client.Store(&from)
			}
			tx.Send(r.rel, p[4:], r.peer)
			r.forwarded.Add(1)
		})
		return err
	})
	if err != nil {
		if r.rel != nil {
			r.rel.Close()
		}
		return nil, err
	}
	return r, nil
}

// endpoint is a client or peer socket plus a capture on its link.
type endpoint struct {
	conn *net.UDPConn
	cap  *Capture
	addr netip.AddrPort
}

func openEndpoint(ns *netns.NS, ifname string, addr netip.AddrPort) (*endpoint, error) {
	e := &endpoint{addr: addr}
	err := ns.Do(func() (err error) {
		if e.cap, err = NewCapture(ifname); err != nil {
			return err
		}
		e.conn, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		if e.cap != nil {
			e.cap.Close()
		}
		return nil, err
	}
	e.conn.SetReadBuffer(8 << 20)
	return e, nil
}

func (e *endpoint) Close() {
	e.conn.Close()
	e.cap.Close()
}

// recvAll reads want datagrams (or fails after a quiet period).
func (e *endpoint) recvAll(t *testing.T, want int) [][]byte {
	t.Helper()
	var got [][]byte
	buf := make([]byte, 65536)
	for len(got) < want {
		e.conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, _, err := e.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("%v: received %d of %d datagrams: %v", e.addr, len(got), want, err)
		}
		got = append(got, bytes.Clone(buf[:n]))
	}
	return got
}

// result is what one datapath produced, per direction: the datagrams as
// captured on the receiving link.
type result struct {
	toPeer, toClient []Datagram
	stats            dataplane.Stats
}

func runDatapath(t *testing.T, topo *netns.Topology, dp dataplane.Datapath, v6 bool) result {
	t.Helper()
	defer dp.Close()
	r, err := startRelay(topo, dp, v6)
	if err != nil {
		t.Fatal(err)
	}
	// On failure a handler may be waiting at the gate: open it for good
	// before dp.Close waits for the handlers.
	defer close(r.gate)
	clientIP, peerIP := topo.ClientV4, topo.PeerV4
	if v6 {
		clientIP, peerIP = topo.ClientV6, topo.PeerV6
	}
	cl, err := openEndpoint(topo.Client, topo.ClientIf, netip.AddrPortFrom(clientIP, clientPort))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	pe, err := openEndpoint(topo.Peer, topo.PeerIf, netip.AddrPortFrom(peerIP, peerPort))
	if err != nil {
		t.Fatal(err)
	}
	defer pe.Close()

	// sendBursts sends every burst from src to dst, holding the relay at
	// its gate until the burst is queued, and checks what dst receives.
	sendBursts := func(src, dst *endpoint, to netip.AddrPort, dir byte, frame func([]byte) []byte) {
		for _, burst := range traffic(dir) {
			// Runs leave the sender as UDP_SEGMENT super-packets, segmented
			// at its veth: they reach the relay back to back, as from a
			// GSO-capable generator (and are GRO-merged when the relay's
			// link has GRO on).
			frames := make([][]byte, len(burst))
			for i, p := range burst {
				frames[i] = frame(p)
			}
			if err := sendGSO(src.conn, to, frames); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond) // let the burst reach the relay's socket
			r.gate <- struct{}{}
			got := dst.recvAll(t, len(burst))
			for i, p := range burst {
				want := p
				if dir == 'd' {
					want = append(chanHdr(len(p)), p...)
				}
				if !bytes.Equal(got[i], want) {
					t.Fatalf("%s: datagram %d: got %d bytes, want %d", dp.Name(), i, len(got[i]), len(want))
				}
			}
		}
	}
	lisAddr := r.lis.LocalAddr()
	relAddr := r.rel.LocalAddr()
	// Client -> peer first: it teaches the relay the client's address.
	sendBursts(cl, pe, lisAddr, 'u', func(p []byte) []byte { return append(chanHdr(len(p)), p...) })
	sendBursts(pe, cl, relAddr, 'd', func(p []byte) []byte { return p })

	var res result
	if res.toPeer, err = pe.cap.Drain(pe.addr); err != nil {
		t.Fatal(err)
	}
	if res.toClient, err = cl.cap.Drain(cl.addr); err != nil {
		t.Fatal(err)
	}
	// Counters are added after the sends return.
	time.Sleep(10 * time.Millisecond)
	res.stats = dp.Stats()
	return res
}

// snmpCsumErrors returns Udp and Udp6 InCsumErrors of a namespace.
func snmpCsumErrors(t *testing.T, ns *netns.NS) (v4, v6 uint64) {
	t.Helper()
	out, err := ns.Sh("cat", "/proc/net/snmp", "/proc/net/snmp6")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out, "\n")
	for i := 0; i+1 < len(lines); i++ {
		h, v := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(h) > 0 && h[0] == "Udp:" && len(v) == len(h) && v[0] == "Udp:" {
			for j := range h {
				if h[j] == "InCsumErrors" {
					v4, _ = strconv.ParseUint(v[j], 10, 64)
				}
			}
		}
	}
	for _, l := range lines {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "Udp6InCsumErrors" {
			v6, _ = strconv.ParseUint(f[1], 10, 64)
		}
	}
	return v4, v6
}

// forEachVariant runs fn as a subtest for IPv4 and IPv6, first without and
// then with GRO on the relay's links (GRO stays on once enabled), and
// fails it when the client's or the peer's UDP InCsumErrors grew: the
// receiving kernels verify every checksum as well.
func forEachVariant(t *testing.T, topo *netns.Topology, fn func(t *testing.T, v6, gro bool)) {
	for _, tc := range []struct {
		v6, gro bool
	}{{false, false}, {true, false}, {false, true}, {true, true}} {
		name := map[bool]string{false: "ipv4", true: "ipv6"}[tc.v6] + map[bool]string{false: "", true: "-gro"}[tc.gro]
		if tc.gro {
			enableGRO(t, topo)
		}
		t.Run(name, func(t *testing.T) {
			c4, c6 := snmpCsumErrors(t, topo.Client)
			p4, p6 := snmpCsumErrors(t, topo.Peer)
			fn(t, tc.v6, tc.gro)
			if c4b, c6b := snmpCsumErrors(t, topo.Client); c4b != c4 || c6b != c6 {
				t.Fatalf("client InCsumErrors grew: %d/%d -> %d/%d", c4, c6, c4b, c6b)
			}
			if p4b, p6b := snmpCsumErrors(t, topo.Peer); p4b != p4 || p6b != p6 {
				t.Fatalf("peer InCsumErrors grew: %d/%d -> %d/%d", p4, p6, p4b, p6b)
			}
		})
	}
}

// enableGRO puts the relay's veth ends in NAPI mode with GRO, as physical
// NICs are by default: veth merges only in NAPI mode, which it enters when
// GRO is switched on (it is reported on but inactive until then), so it is
// switched off and on. UDP GRO then merges datagrams for sockets with
// UDP_GRO set (the gso datapath's), not for plain's.
func enableGRO(t *testing.T, topo *netns.Topology) {
	t.Helper()
	for _, ifn := range []string{topo.RelayClientIf, topo.RelayPeerIf} {
		for _, v := range []string{"off", "on"} {
			if _, err := topo.Relay.Sh("ethtool", "-K", ifn, "gro", v); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestRelayBytesEqual relays the same traffic through plain and gso, IPv4
// and IPv6, both directions, and checks that the receivers see identical
// datagrams (UDP header and payload, IP header but for the IPv4 ID) with
// checksums that verify, and that gso really coalesced; then again with GRO
// on the relay's links, where gso reads merged datagrams and splits them.
func TestRelayBytesEqual(t *testing.T) {
	privtest.Need(t, "ip", "ethtool", "ping")
	topo := netns.ForTest(t, netns.TopologyOptions{})
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		quiet = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	forEachVariant(t, topo, func(t *testing.T, v6, gro bool) {
		plain := runDatapath(t, topo, dataplane.NewPlain(), v6)
		gdp, err := dataplane.NewGSO(dataplane.GSOOptions{Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		gso := runDatapath(t, topo, gdp, v6)

		for _, dir := range []struct {
			name       string
			plain, gso []Datagram
		}{{"client->peer", plain.toPeer, gso.toPeer}, {"peer->client", plain.toClient, gso.toClient}} {
			want := 2 // the 3000-byte datagram leaves as 3 fragments
			for _, b := range traffic('u') {
				want += len(b)
			}
			if len(dir.plain) != want || len(dir.gso) != want {
				t.Fatalf("%s: captured %d (plain) and %d (gso) frames, want %d", dir.name, len(dir.plain), len(dir.gso), want)
			}
			frags := 0
			for i := range dir.plain {
				a, b := dir.plain[i], dir.gso[i]
				if a.Fragment != nil || b.Fragment != nil {
					frags++
					if !bytes.Equal(a.L3, b.L3) || !bytes.Equal(a.Fragment, b.Fragment) {
						t.Fatalf("%s frame %d: fragments differ:\nplain %x\ngso   %x", dir.name, i, a.L3, b.L3)
					}
					continue
				}
				for _, d := range []Datagram{a, b} {
					if err := d.VerifyChecksum(); err != nil {
						t.Fatalf("%s datagram %d: %v", dir.name, i, err)
					}
				}
				if a.Src != b.Src || a.Dst != b.Dst || !bytes.Equal(a.UDP, b.UDP) {
					t.Fatalf("%s datagram %d differs:\nplain %v->%v %x\ngso   %v->%v %x", dir.name, i, a.Src, a.Dst, a.UDP[:min(24, len(a.UDP))], b.Src, b.Dst, b.UDP[:min(24, len(b.UDP))])
				}
				if !bytes.Equal(a.L3, b.L3) {
					t.Fatalf("%s datagram %d: ip header differs:\nplain %x\ngso   %x", dir.name, i, a.L3, b.L3)
				}
				// A relay socket without DONT-FRAGMENT never sets DF,
				// like the kernel path (RFC 8656 section 14).
				if !v6 && dir.name == "client->peer" && a.L3[6]&0x40 != 0 {
					t.Fatalf("%s datagram %d: DF set without DONT-FRAGMENT", dir.name, i)
				}
			}
			if frags != 3 {
				t.Fatalf("%s: %d fragments, want 3", dir.name, frags)
			}
			// The checksum check must be able to fail.
			bad := dir.gso[0]
			bad.UDP = bytes.Clone(bad.UDP)
			bad.UDP[len(bad.UDP)-1] ^= 1
			if bad.VerifyChecksum() == nil {
				t.Fatal("a corrupted datagram verifies")
			}
		}
		st := gso.stats
		t.Logf("gso: %d read calls (%d GRO) for %d datagrams; %d GSO sends (%d segments), %d sendmmsg (%d datagrams), %d single",
			st.ReadCalls, st.RxGROReads, st.RxPackets, st.TxGSOSends, st.TxGSOSegments, st.TxMmsgCalls, st.TxMmsgPackets, st.TxSingleSends)
		if st.TxGSOSends == 0 || st.TxGSOSegments < 100 || st.GSOFallbacks != 0 || st.TxErrors != 0 {
			t.Fatalf("gso did not coalesce: %+v", st)
		}
		if gro && st.RxGROReads == 0 {
			t.Fatalf("no GRO read with GRO on the relay's links: %+v", st)
		}
		if plain.stats.TxPackets != gso.stats.TxPackets {
			t.Fatalf("sent %d (plain) vs %d (gso)", plain.stats.TxPackets, gso.stats.TxPackets)
		}
	})
}

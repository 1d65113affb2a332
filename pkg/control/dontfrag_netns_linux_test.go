package control

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"github.com/pion/stun/v3"
	"golang.org/x/sys/unix"

	"github.com/hybridrelay/hybridrelay/internal/dpe2e"
	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/internal/privtest"
	"github.com/hybridrelay/hybridrelay/internal/testutil"
	"github.com/hybridrelay/hybridrelay/internal/testutil/turntest"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// sendSegmented sends frames (all of one size) as one UDP_SEGMENT sendmsg
// on the connected c, so they reach the relay back to back and are read in
// batches by the gso datapath.
func sendSegmented(c *net.UDPConn, frames [][]byte) error {
	oob := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], uint16(len(frames[0])))
	_, _, err := c.WriteMsgUDP(bytes.Join(frames, nil), oob, nil)
	return err
}

// TestDontFragmentOnTheWire runs the control plane on each userspace
// datapath between network namespaces and captures what reaches the peer
// from a relayed address: the IPv4 DF bit must be 1 on every datagram iff
// the allocation asked for DONT-FRAGMENT, as the kernel path writes it
// (bpf/relay.bpf.c, RFC 8656 section 14), for ChannelData relayed in GSO
// batches and for Send indications. A datagram above the 1500-byte MTU is
// fragmented without DF when DONT-FRAGMENT was not asked, and not sent
// (counted in Stats.Drops) when it was.
func TestDontFragmentOnTheWire(t *testing.T) {
	privtest.Need(t, "ip", "ethtool")
	topo := netns.ForTest(t, netns.TopologyOptions{})
	for _, name := range []string{"plain", "gso"} {
		for _, df := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/dont-fragment=%v", name, df), func(t *testing.T) {
				dfOnTheWire(t, topo, datapaths(t)[name](), df)
			})
		}
	}
}

func dfOnTheWire(t *testing.T, topo *netns.Topology, dp dataplane.Datapath, df bool) {
	const (
		burst    = 32
		burstLen = 1200
		bigLen   = 3000 // above the veths' 1500-byte MTU
		sendLen  = 500
		chanNum  = 0x4000
	)
	cfg := testConfig()
	lis := netip.AddrPortFrom(topo.RelayClientV4, 3478)
	cfg.Listeners = []ListenerSpec{{Network: "udp", Addr: lis}}
	cfg.RelayIPs = []netip.Addr{topo.RelayPeerV4}
	cfg.MinPort, cfg.MaxPort = 50000, 50099
	cfg.AllowPeers = []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15")}
	s, err := NewServer(cfg, Options{Datapath: turntest.InNamespace(dp, topo.Relay), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); dp.Close() })

	peerAddr := netip.AddrPortFrom(topo.PeerV4, 40001)
	var capt *dpe2e.Capture
	var peer, cconn *net.UDPConn
	if err := topo.Peer.Do(func() (err error) {
		if capt, err = dpe2e.NewCapture(topo.PeerIf); err != nil {
			return err
		}
		peer, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(peerAddr))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { capt.Close(); peer.Close() })
	if err := topo.Client.Do(func() (err error) {
		cconn, err = net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(topo.ClientV4, 0)), net.UDPAddrFromAddrPort(lis))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cconn.Close() })
	c := &rawClient{t: t, conn: cconn, user: testUser, pass: testPass, realm: testRealm}

	var extra []stun.Setter
	if df {
		extra = append(extra, dontFragment)
	}
	relay := c.allocate(extra...)
	if r := c.do(methodCreatePermission, peerAttr(peerAddr)); code(r) != 0 {
		t.Fatalf("CreatePermission: %d", code(r))
	}
	if r := c.do(methodChannelBind, channelAttr(chanNum), peerAttr(peerAddr)); code(r) != 0 {
		t.Fatalf("ChannelBind: %d", code(r))
	}

	chanData := func(p []byte) []byte {
		return append(binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, chanNum), uint16(len(p))), p...)
	}
	var frames [][]byte
	for i := range burst {
		frames = append(frames, chanData(bytes.Repeat([]byte{byte(i)}, burstLen)))
	}
	if err := sendSegmented(cconn, frames); err != nil {
		t.Fatal(err)
	}
	c.write(chanData(bytes.Repeat([]byte{0xbb}, bigLen)))
	c.write(c.build(methodSend, stun.ClassIndication, false, peerAttr(peerAddr), attr{stun.AttrData, bytes.Repeat([]byte{0x55}, sendLen)}).Raw)

	// What the peer's socket gets: the burst, the big one unless dropped
	// (reassembled from its fragments), the Send indication's data.
	want := map[int]int{burstLen: burst, sendLen: 1}
	if !df {
		want[bigLen] = 1
	}
	got := map[int]int{}
	buf := make([]byte, 65536)
	for n := burst + len(want) - 1; n > 0; n-- {
		peer.SetReadDeadline(time.Now().Add(3 * time.Second))
		m, from, err := peer.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("peer received %v, want %v: %v", got, want, err)
		}
		if from != relay {
			t.Fatalf("datagram from %v, want the relayed address %v", from, relay)
		}
		got[m]++
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("peer received %v (size: count), want %v", got, want)
	}
	if df {
		testutil.WaitFor(t, 3*time.Second, "the oversize datagram counted as a drop", func() bool { return dp.Stats().Drops >= 1 })
	} else if d := dp.Stats().Drops; d != 0 {
		t.Fatalf("%d drops without DONT-FRAGMENT", d)
	}

	caught, err := capt.Drain(peerAddr)
	if err != nil {
		t.Fatal(err)
	}
	whole, frags := 0, 0
	for i, d := range caught {
		if d.Src.Addr() != relay.Addr() {
			continue
		}
		dfBit := d.L3[6]&0x40 != 0 // flags: reserved, DF, MF (RFC 791)
		if d.Fragment != nil {
			frags++
			if dfBit {
				t.Fatalf("frame %d: a fragment with DF", i)
			}
			continue
		}
		whole++
		if dfBit != df {
			t.Fatalf("datagram %d (%d bytes): DF %v, want %v (DONT-FRAGMENT %v)", i, len(d.Payload()), dfBit, df, df)
		}
	}
	if whole != burst+1 {
		t.Fatalf("captured %d whole datagrams from %v, want %d", whole, relay, burst+1)
	}
	if wantFrags := map[bool]int{false: 3, true: 0}[df]; frags != wantFrags {
		t.Fatalf("captured %d fragments, want %d", frags, wantFrags)
	}
	st := dp.Stats()
	t.Logf("%s: %d GSO sends (%d segments), %d sendmmsg datagrams, %d single sends, %d drops, %d errors",
		dp.Name(), st.TxGSOSends, st.TxGSOSegments, st.TxMmsgPackets, st.TxSingleSends, st.Drops, st.TxErrors)
	if dp.Name() == "gso" && st.TxGSOSegments < 2 {
		t.Fatalf("gso sent no UDP_SEGMENT run, so its DF on segments was not exercised: %+v", st)
	}
}

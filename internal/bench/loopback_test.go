package bench

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/turnclient"
)

func listen(t *testing.T, network, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestGeneratorReceiverLoopback sends bounded batches over loopback in each
// framing and checks that every packet is counted, attributed to its flow
// and stamped.
func TestGeneratorReceiverLoopback(t *testing.T) {
	tests := []struct {
		name    string
		network string
		addr    string
		encap   Encap
		rate    float64
		size    int
	}{
		{"raw flood v4", "udp4", "127.0.0.1:0", EncapRaw, 0, 120},
		{"channeldata flood v4", "udp4", "127.0.0.1:0", EncapChannelData, 0, 1200},
		{"send indication flood v6", "udp6", "[::1]:0", EncapSend, 0, 121},
		{"paced v4", "udp4", "127.0.0.1:0", EncapChannelData, 500, 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rx := listen(t, tt.network, tt.addr)
			const flows = 3
			var fs []*Flow
			for i := 0; i < flows; i++ {
				tx := listen(t, tt.network, tt.addr)
				fs = append(fs, &Flow{ID: uint32(i), Conn: tx, Dst: addrOf(rx), Encap: tt.encap, Channel: 0x4000 + uint16(i), Peer: netip.MustParseAddrPort("198.18.1.1:9")})
			}
			recv := NewReceiver(RecvConfig{Conns: []*net.UDPConn{rx}, Flows: flows})
			if err := recv.Start(); err != nil {
				t.Fatal(err)
			}
			recv.Measure(true)
			max := uint64(3000)
			if tt.rate > 0 {
				max = 150 // 3 flows x 500 pps: about 100 ms
			}
			g, err := NewGenerator(GenConfig{Flows: fs, PayloadSize: tt.size, Rate: tt.rate, Duration: 5 * time.Second, MaxPackets: max})
			if err != nil {
				t.Fatal(err)
			}
			if err := g.Run(context.Background()); err != nil {
				t.Fatal(err)
			}
			if g.Sent() != max {
				t.Fatalf("sent %d, want %d", g.Sent(), max)
			}
			// Loopback does not drop at this volume with 8 MiB buffers;
			// wait for the receive loop to catch up.
			deadline := time.Now().Add(3 * time.Second)
			for recv.Packets() < max && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			recv.Stop()
			if recv.Packets() != max || recv.Invalid() != 0 {
				t.Fatalf("received %d (invalid %d), want %d", recv.Packets(), recv.Invalid(), max)
			}
			if recv.Bytes() != max*uint64(tt.size) {
				t.Fatalf("bytes %d, want %d", recv.Bytes(), max*uint64(tt.size))
			}
			var sum uint64
			for i := 0; i < flows; i++ {
				if recv.FlowPackets(i) != g.FlowSent(i) {
					t.Fatalf("flow %d: received %d, sent %d", i, recv.FlowPackets(i), g.FlowSent(i))
				}
				sum += g.FlowSent(i)
			}
			if sum != max {
				t.Fatalf("per-flow sum %d", sum)
			}
			if recv.Lost() != 0 || recv.FlowsSeen() != flows {
				t.Fatalf("lost %d, flows seen %d", recv.Lost(), recv.FlowsSeen())
			}
			if recv.Latency.Count() != max || recv.Latency.Quantile(0.99) <= 0 || recv.Latency.Quantile(0.99) > 3*time.Second {
				t.Fatalf("latency count %d p99 %v", recv.Latency.Count(), recv.Latency.Quantile(0.99))
			}
		})
	}
}

// TestReflector echoes ChannelData-free payloads back to the sender.
func TestReflector(t *testing.T) {
	peer := listen(t, "udp4", "127.0.0.1:0")
	client := listen(t, "udp4", "127.0.0.1:0")
	refl := NewReceiver(RecvConfig{Conns: []*net.UDPConn{peer}, Flows: 1, Reflect: true})
	back := NewReceiver(RecvConfig{Conns: []*net.UDPConn{client}, Flows: 1})
	if err := refl.Start(); err != nil {
		t.Fatal(err)
	}
	if err := back.Start(); err != nil {
		t.Fatal(err)
	}
	g, err := NewGenerator(GenConfig{Flows: []*Flow{{ID: 0, Conn: client, Dst: addrOf(peer)}}, PayloadSize: 200, Duration: 5 * time.Second, MaxPackets: 500})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for back.Packets() < 500 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	refl.Stop()
	back.Stop()
	if refl.Packets() != 500 || refl.Reflected() != 500 || back.Packets() != 500 {
		t.Fatalf("peer got %d, reflected %d, client got back %d", refl.Packets(), refl.Reflected(), back.Packets())
	}
}

// TestReceiverLoss feeds sequence gaps and reordering by hand.
func TestReceiverLoss(t *testing.T) {
	rx := listen(t, "udp4", "127.0.0.1:0")
	tx := listen(t, "udp4", "127.0.0.1:0")
	r := NewReceiver(RecvConfig{Conns: []*net.UDPConn{rx}, Flows: 4})
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	sends := []struct {
		flow uint32
		seq  uint64
	}{{0, 0}, {0, 1}, {0, 5}, {0, 3}, {2, 9}, {7, 0}} // flow 7 is past Flows: counted, not tracked
	for _, s := range sends {
		b := make([]byte, 40)
		PutPayloadHeader(b, s.flow, s.seq, nowNs())
		if _, err := tx.WriteToUDPAddrPort(b, addrOf(rx)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tx.WriteToUDPAddrPort([]byte("not a measurement packet"), addrOf(rx)); err != nil {
		t.Fatal(err)
	}
	waitFor(func() bool { return r.Packets()+r.Invalid() >= uint64(len(sends)+1) })
	r.Stop()
	// flow 0: 6 expected (0..5), 4 received; flow 2: 10 expected, 1 received.
	if r.Packets() != 6 || r.Invalid() != 1 || r.Lost() != 2+9 || r.FlowsSeen() != 2 {
		t.Fatalf("packets %d invalid %d lost %d flows %d", r.Packets(), r.Invalid(), r.Lost(), r.FlowsSeen())
	}
}

func TestHistogramQuantiles(t *testing.T) {
	var h Histogram
	for i := 1; i <= 1000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	tests := []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Microsecond}, {0.99, 990 * time.Microsecond}, {1, 1000 * time.Microsecond}}
	for _, tt := range tests {
		got := h.Quantile(tt.q)
		if diff := float64(got-tt.want) / float64(tt.want); diff > 0.07 || diff < -0.07 {
			t.Errorf("q%.2f = %v, want %v within 7%%", tt.q, got, tt.want)
		}
	}
	for v := uint64(0); v < 1<<20; v = v*3/2 + 1 {
		b := histBucket(v)
		if histLow(b) > v || histLow(b+1) <= v {
			t.Fatalf("value %d in bucket %d [%d, %d)", v, b, histLow(b), histLow(b+1))
		}
	}
	var empty Histogram
	if empty.Quantile(0.5) != 0 {
		t.Fatal("empty histogram quantile")
	}
}

func TestPayloadHeader(t *testing.T) {
	b := make([]byte, 30)
	PutPayloadHeader(b, 7, 1<<40, -5)
	f, s, ts, ok := ParsePayloadHeader(b)
	if !ok || f != 7 || s != 1<<40 || ts != -5 {
		t.Fatalf("got %d %d %d %v", f, s, ts, ok)
	}
	if _, _, _, ok := ParsePayloadHeader(b[:23]); ok {
		t.Fatal("short header accepted")
	}
	b[0] ^= 1
	if _, _, _, ok := ParsePayloadHeader(b); ok {
		t.Fatal("bad magic accepted")
	}
}

func TestParseProcStat(t *testing.T) {
	s := "cpu  100 5 50 1000 20 3 7 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"
	c, err := parseProcStat(s)
	if err != nil {
		t.Fatal(err)
	}
	if c.Busy != 165*10*time.Millisecond || c.Total != 1185*10*time.Millisecond {
		t.Fatalf("%+v", c)
	}
	if _, err := parseProcStat("intr 1 2 3"); err == nil {
		t.Fatal("bad /proc/stat accepted")
	}
	d, err := parsePidStat("1234 (hybrid relay) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0")
	if err != nil || d != 3*time.Second {
		t.Fatalf("pid stat %v %v", d, err)
	}
}

// FuzzReceiverDecap feeds arbitrary datagrams to the receiver's demux
// (ChannelData, STUN indications, raw payloads): it must never panic and
// never count a packet without a valid measurement header.
func FuzzReceiverDecap(f *testing.F) {
	b := make([]byte, 40)
	PutPayloadHeader(b, 1, 2, 3)
	f.Add(b)
	f.Add(append([]byte{0x40, 0x00, 0x00, 0x28}, b...))
	m, _ := turnclient.BuildSendIndication(netip.MustParseAddrPort("198.18.1.1:9"), b)
	f.Add(m.Raw)
	f.Add([]byte{0x00, 0x17, 0x00, 0x00})
	f.Fuzz(func(t *testing.T, d []byte) {
		r := NewReceiver(RecvConfig{Flows: 2})
		payload, ok := r.decap(d, nil)
		if !ok {
			return
		}
		if len(payload) > len(d) {
			t.Fatalf("payload %d bytes from a %d-byte datagram", len(payload), len(d))
		}
		_, _, _, _ = ParsePayloadHeader(payload)
	})
}

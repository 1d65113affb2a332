package bench

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/internal/turnclient"
)

// RecvConfig configures a Receiver.
type RecvConfig struct {
	Conns []*net.UDPConn
	// Flows is the number of flow ids to keep per-flow counts for.
	Flows int
	// Reflect echoes every datagram back to its source unchanged (the
	// peer-side reflector: a packet relayed to the peer returns through
	// the relay to the client, which measures the round trip).
	Reflect bool
	// Batch is the recvmmsg batch size (default 64).
	Batch int
	// SocketBuffer for the receiving sockets (0: 8 MiB).
	SocketBuffer int
	// NoGRO keeps UDP_GRO off. By default it is on when there are at most
	// 4 sockets (each then reads into 64 KiB buffers).
	NoGRO bool
	// Control receives STUN messages other than Data indications read on
	// a socket (responses to Refresh/ChannelBind sent while this receiver
	// owns the socket's reads).
	Control map[*net.UDPConn]*turnclient.Client
}

// Receiver counts measurement packets on a set of sockets: packets,
// bytes, per-flow counts and highest sequence, and one-way latency (or
// round trip, for reflected packets) while measuring. Datagrams may be raw
// payloads, ChannelData or Data indications; each is recognised.
type Receiver struct {
	cfg      RecvConfig
	packets  atomic.Uint64
	bytes    atomic.Uint64
	invalid  atomic.Uint64
	reflect  atomic.Uint64
	flowRecv []atomic.Uint64
	flowNext []atomic.Uint64 // highest sequence seen + 1
	Latency  Histogram
	measure  atomic.Bool
	wg       sync.WaitGroup
	stopping atomic.Bool
}

// NewReceiver prepares a receiver; Start begins reading.
func NewReceiver(cfg RecvConfig) *Receiver {
	// Many sockets (one per allocation) each carry little: smaller
	// batches and buffers keep memory proportionate.
	many := len(cfg.Conns) > 64
	if cfg.Batch <= 0 {
		cfg.Batch = 64
		if many {
			cfg.Batch = 8
		}
	}
	if cfg.SocketBuffer == 0 {
		cfg.SocketBuffer = 8 << 20
		if many {
			cfg.SocketBuffer = 1 << 20
		}
	}
	return &Receiver{cfg: cfg, flowRecv: make([]atomic.Uint64, cfg.Flows), flowNext: make([]atomic.Uint64, cfg.Flows)}
}

// Start reads every socket on its own goroutine.
func (r *Receiver) Start() error {
	for _, c := range r.cfg.Conns {
		gro := !r.cfg.NoGRO && len(r.cfg.Conns) <= 4
		batch, size := r.cfg.Batch, 2048
		if gro {
			batch, size = 16, 65536
		}
		bc, err := newBatchConn(c, batch, size)
		if err != nil {
			return err
		}
		if gro {
			bc.enableGRO()
		}
		setBuffers(c, r.cfg.SocketBuffer)
		_ = c.SetReadDeadline(time.Time{})
		r.wg.Add(1)
		go r.loop(c, bc)
	}
	return nil
}

// Measure turns latency recording on or off (counters always run; callers
// take deltas).
func (r *Receiver) Measure(on bool) { r.measure.Store(on) }

// Stop ends the reads (through a read deadline) and waits for the loops.
// The sockets stay open and their deadlines are cleared.
func (r *Receiver) Stop() {
	r.stopping.Store(true)
	for _, c := range r.cfg.Conns {
		_ = c.SetReadDeadline(time.Now())
	}
	r.wg.Wait()
	for _, c := range r.cfg.Conns {
		_ = c.SetReadDeadline(time.Time{})
	}
}

// Packets is the number of measurement packets received.
func (r *Receiver) Packets() uint64 { return r.packets.Load() }

// Bytes is the number of payload bytes received.
func (r *Receiver) Bytes() uint64 { return r.bytes.Load() }

// Invalid counts datagrams that were not measurement packets.
func (r *Receiver) Invalid() uint64 { return r.invalid.Load() }

// Reflected counts datagrams echoed back.
func (r *Receiver) Reflected() uint64 { return r.reflect.Load() }

// FlowPackets is the number of packets received for flow id.
func (r *Receiver) FlowPackets(id int) uint64 {
	if id < 0 || id >= len(r.flowRecv) {
		return 0
	}
	return r.flowRecv[id].Load()
}

// Lost estimates the packets lost so far from the sequence numbers: for
// every flow seen, (highest sequence + 1) minus the packets received. It
// cannot see losses after a flow's last received packet.
func (r *Receiver) Lost() uint64 {
	var expect, got uint64
	for i := range r.flowNext {
		if n := r.flowNext[i].Load(); n > 0 {
			expect += n
			got += r.flowRecv[i].Load()
		}
	}
	if got >= expect {
		return 0
	}
	return expect - got
}

// FlowsSeen is the number of flow ids that received at least one packet.
func (r *Receiver) FlowsSeen() int {
	n := 0
	for i := range r.flowRecv {
		if r.flowRecv[i].Load() > 0 {
			n++
		}
	}
	return n
}

func (r *Receiver) loop(c *net.UDPConn, bc *batchConn) {
	defer r.wg.Done()
	var echo []byte
	ctl := r.cfg.Control[c]
	for {
		dgs, err := bc.ReadBatch()
		if err != nil {
			if r.stopping.Load() || errClosed(err) {
				return
			}
			time.Sleep(time.Millisecond) // ICMP errors surface here; keep reading
			continue
		}
		measuring := r.measure.Load()
		now := nowNs()
		for i := range dgs {
			d := dgs[i].b
			payload, ok := r.decap(d, ctl)
			if !ok {
				continue
			}
			flow, seq, sent, ok := ParsePayloadHeader(payload)
			if !ok {
				r.invalid.Add(1)
				continue
			}
			r.packets.Add(1)
			r.bytes.Add(uint64(len(payload)))
			if int(flow) < len(r.flowRecv) {
				r.flowRecv[flow].Add(1)
				for next := &r.flowNext[flow]; ; {
					cur := next.Load()
					if seq+1 <= cur || next.CompareAndSwap(cur, seq+1) {
						break
					}
				}
			}
			if measuring {
				r.Latency.Record(time.Duration(now - sent))
			}
		}
		if r.cfg.Reflect {
			echo = r.reflectBatch(bc, dgs, echo)
		}
	}
}

// decap returns the measurement payload of a datagram: ChannelData
// stripped, Data indications opened, anything else taken as raw.
func (r *Receiver) decap(d []byte, ctl *turnclient.Client) ([]byte, bool) {
	switch {
	case turnclient.IsChannelData(d):
		_, data, err := turnclient.ParseChannelData(d)
		if err != nil {
			r.invalid.Add(1)
			return nil, false
		}
		return data, true
	case stun.IsMessage(d):
		// Data indication 0x0017 (RFC 8656 section 11.4); a Send
		// indication 0x0016 is opened too, so a receiver can check what a
		// generator puts on the wire.
		if t := binary.BigEndian.Uint16(d[0:2]); t == 0x0017 || t == 0x0016 {
			data, err := indicationData(d)
			if err != nil {
				r.invalid.Add(1)
				return nil, false
			}
			return data, true
		}
		if ctl != nil && ctl.Deliver(d) {
			return nil, false
		}
		r.invalid.Add(1)
		return nil, false
	}
	return d, true
}

// reflectBatch echoes a batch back: runs of same-source, same-size
// datagrams leave as one GSO send.
func (r *Receiver) reflectBatch(bc *batchConn, dgs []datagram, buf []byte) []byte {
	for i := 0; i < len(dgs); {
		if len(dgs[i].b) == 0 {
			i++
			continue
		}
		j := i + 1
		for j < len(dgs) && dgs[j].from == dgs[i].from && len(dgs[j].b) == len(dgs[i].b) && j-i < maxGSOSegments {
			j++
		}
		buf = buf[:0]
		for k := i; k < j; k++ {
			buf = append(buf, dgs[k].b...)
		}
		if n, err := bc.WriteSegments(buf, len(dgs[i].b), dgs[i].from); err == nil {
			r.reflect.Add(uint64(n))
		}
		i = j
	}
	return buf
}

// addrOf returns a UDP socket's bound address.
func addrOf(c *net.UDPConn) netip.AddrPort {
	ap := c.LocalAddr().(*net.UDPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// indicationData returns the DATA attribute of a Send or Data indication.
func indicationData(b []byte) ([]byte, error) {
	m := &stun.Message{Raw: b}
	if err := m.Decode(); err != nil {
		return nil, err
	}
	return m.Get(stun.AttrData)
}

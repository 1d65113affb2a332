package bench

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/hybridrelay/hybridrelay/internal/turnclient"
)

// Encap is how a measurement payload travels on the generator's wire.
type Encap int

const (
	// EncapRaw is the payload alone in a UDP datagram: the direct path,
	// and what a peer sends to a relayed address.
	EncapRaw Encap = iota
	// EncapChannelData prefixes the 4-byte ChannelData header (RFC 8656
	// section 12.4).
	EncapChannelData
	// EncapSend wraps the payload in a Send indication (RFC 8656 section
	// 11.1).
	EncapSend
)

func (e Encap) String() string {
	switch e {
	case EncapRaw:
		return "raw"
	case EncapChannelData:
		return "channeldata"
	case EncapSend:
		return "send"
	}
	return fmt.Sprintf("encap(%d)", int(e))
}

// Flow is one stream of measurement packets: from Conn to Dst, framed by
// Encap. Several flows may share a Conn (a peer flooding many relayed
// addresses from one socket).
type Flow struct {
	ID      uint32
	Conn    *net.UDPConn
	Dst     netip.AddrPort
	Encap   Encap
	Channel uint16         // EncapChannelData
	Peer    netip.AddrPort // EncapSend: XOR-PEER-ADDRESS
}

// template returns the bytes that precede the payload of every packet of
// the flow, and the offset of the transaction ID inside them (-1 if none).
func (f *Flow) template(payloadSize int) (prefix []byte, tidOff int, trailer int, err error) {
	switch f.Encap {
	case EncapRaw:
		return nil, -1, 0, nil
	case EncapChannelData:
		if !turnclient.ValidChannel(f.Channel) {
			return nil, -1, 0, fmt.Errorf("flow %d: channel 0x%04x invalid", f.ID, f.Channel)
		}
		hdr := make([]byte, turnclient.ChannelDataHeaderSize)
		turnclient.PutChannelDataHeader(hdr, f.Channel, payloadSize)
		return hdr, -1, 0, nil
	case EncapSend:
		m, err := turnclient.BuildSendIndication(f.Peer, make([]byte, payloadSize))
		if err != nil {
			return nil, -1, 0, err
		}
		// Header, XOR-PEER-ADDRESS and the DATA attribute header; the
		// payload follows, then the DATA padding (RFC 8489 section 14).
		hlen := turnclient.SendIndicationOverhead(f.Peer.Addr().Unmap().Is6())
		pad := len(m.Raw) - hlen - payloadSize
		return append([]byte(nil), m.Raw[:hlen]...), 8, pad, nil
	}
	return nil, -1, 0, fmt.Errorf("flow %d: unknown encapsulation %v", f.ID, f.Encap)
}

// flowWriter fills and sends batches of one flow's packets.
type flowWriter struct {
	f       *Flow
	bc      *batchConn
	seg     int // bytes per datagram
	prefix  int
	tidOff  int
	buf     []byte // maxGSOSegments datagrams, prefilled
	seq     uint64
	tidBase uint32
	sent    uint64
}

func newFlowWriter(f *Flow, bc *batchConn, payloadSize int) (*flowWriter, error) {
	prefix, tidOff, trailer, err := f.template(payloadSize)
	if err != nil {
		return nil, err
	}
	seg := len(prefix) + payloadSize + trailer
	n := segmentsPerSend(seg)
	w := &flowWriter{f: f, bc: bc, seg: seg, prefix: len(prefix), tidOff: tidOff, buf: make([]byte, n*seg)}
	var r [4]byte
	_, _ = rand.Read(r[:])
	w.tidBase = binary.BigEndian.Uint32(r[:])
	for i := 0; i < n; i++ {
		d := w.buf[i*seg : (i+1)*seg]
		copy(d, prefix)
		for j := len(prefix) + PayloadHeaderSize; j < len(prefix)+payloadSize; j++ {
			d[j] = byte(j) // deterministic filler, checkable at the receiver
		}
	}
	return w, nil
}

// send sends n (<= capacity) packets in one batch, stamped now.
func (w *flowWriter) send(n int) (int, error) {
	if max := len(w.buf) / w.seg; n > max {
		n = max
	}
	now := nowNs()
	for i := 0; i < n; i++ {
		d := w.buf[i*w.seg:]
		PutPayloadHeader(d[w.prefix:], w.f.ID, w.seq+uint64(i), now)
		if w.tidOff >= 0 {
			// A fresh transaction ID per indication (RFC 8489 section 6):
			// a random 4 bytes then a per-flow counter.
			binary.BigEndian.PutUint32(d[w.tidOff:], w.tidBase)
			binary.BigEndian.PutUint64(d[w.tidOff+4:], w.seq+uint64(i))
		}
	}
	sent, err := w.bc.WriteSegments(w.buf[:n*w.seg], w.seg, w.f.Dst)
	w.seq += uint64(n) // unsent sequence numbers count as lost
	w.sent += uint64(sent)
	return sent, err
}

package bench

import (
	"encoding/binary"
	"time"
)

// PayloadHeaderSize is the measurement header at the start of every
// generated payload: magic (4), flow id (4), sequence (8), send time (8).
const PayloadHeaderSize = 24

// payloadMagic starts with 0b11 so a raw measurement payload is never
// taken for STUN (0b00) or ChannelData (0b01) by a receiver that demuxes
// (RFC 8656 section 12: the first two bits tell them apart).
const payloadMagic = 0xC8524C47

// PutPayloadHeader writes the measurement header into b (len(b) >= 24).
func PutPayloadHeader(b []byte, flow uint32, seq uint64, sentNs int64) {
	binary.BigEndian.PutUint32(b[0:4], payloadMagic)
	binary.BigEndian.PutUint32(b[4:8], flow)
	binary.BigEndian.PutUint64(b[8:16], seq)
	binary.BigEndian.PutUint64(b[16:24], uint64(sentNs))
}

// ParsePayloadHeader reads the header written by PutPayloadHeader; ok is
// false for anything else.
func ParsePayloadHeader(b []byte) (flow uint32, seq uint64, sentNs int64, ok bool) {
	if len(b) < PayloadHeaderSize || binary.BigEndian.Uint32(b[0:4]) != payloadMagic {
		return 0, 0, 0, false
	}
	return binary.BigEndian.Uint32(b[4:8]), binary.BigEndian.Uint64(b[8:16]), int64(binary.BigEndian.Uint64(b[16:24])), true
}

// nowNs is the send/receive clock: wall-clock nanoseconds through the vDSO
// (cheap, and comparable between processes on one host, which the sink and
// the generator are; CLOCK_MONOTONIC would need a real syscall from Go).
func nowNs() int64 { return time.Now().UnixNano() }

package bench

import "net/netip"

// maxGSOSegments bounds one UDP_SEGMENT send: the kernel accepts at most
// UDP_MAX_SEGMENTS (64 on older kernels) segments and 64 KiB in total.
const maxGSOSegments = 64

// maxGSOBytes is the payload bound of one GSO send (IP total length).
const maxGSOBytes = 65000

// segmentsPerSend is how many datagrams of segSize bytes fit one GSO send.
func segmentsPerSend(segSize int) int {
	n := maxGSOBytes / segSize
	if n > maxGSOSegments {
		n = maxGSOSegments
	}
	if n < 1 {
		n = 1
	}
	return n
}

// IOStats counts what a batchConn did.
type IOStats struct {
	GSOSends   uint64 // sendmsg calls with UDP_SEGMENT
	MmsgSends  uint64 // sendmmsg calls (GSO unavailable)
	ReadCalls  uint64 // recvmmsg calls returning data
	GSOFailure string // why GSO was turned off, if it was
}

// datagram is one received datagram inside a batchConn's buffers.
type datagram struct {
	b    []byte
	from netip.AddrPort
}

// UDP sockets made by the caller (inside a namespace) are wrapped by
// newBatchConn: udpio_linux.go is the batched implementation,
// udpio_default.go the portable one.

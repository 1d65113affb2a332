package dataplane

import (
	"log/slog"
	"runtime"
	"time"
)

// GSOOptions configure the gso datapath. The zero value is usable.
type GSOOptions struct {
	// BatchSize is the number of datagrams one recvmmsg call may return
	// (default 64, at most 1024). Each message has a 64 KiB buffer (the
	// largest UDP payload or GRO read), so a goroutine that is reading
	// holds BatchSize x 64 KiB of address space (4 MiB by default); only
	// the pages datagrams are written to become resident, and idle sockets
	// hold none (buffers are pooled).
	BatchSize int
	// Loops is the number of SO_REUSEPORT sockets, each with its own
	// goroutine, opened for every listener (0 = GOMAXPROCS). Relay sockets
	// have one goroutine each and are spread over the loops for
	// [LoopStatser] accounting.
	Loops int
	// SocketBuffer is the size asked for SO_RCVBUF and SO_SNDBUF in bytes
	// (0 = 4 MiB). SO_RCVBUFFORCE/SO_SNDBUFFORCE are tried first so the
	// size is not capped by net.core.rmem_max/wmem_max when the process has
	// CAP_NET_ADMIN.
	SocketBuffer int
	// MaxQueueDelay bounds how long a datagram may wait in a socket's
	// receive queue: one that waited longer (by its SO_TIMESTAMPNS kernel
	// receive time) is dropped unread and counted in Stats.RxStaleDrops.
	// Under overload the queue then holds about MaxQueueDelay of traffic
	// instead of a full buffer's worth, so what is relayed stays fresh:
	// for real-time media a packet that is late is worse than one that is
	// lost. 0 or negative: no bound (the default, see
	// RecommendedMaxQueueDelay).
	MaxQueueDelay time.Duration
	// Logger receives the one-time warnings (GSO fallback, missing kernel
	// features). nil = slog.Default().
	Logger *slog.Logger
}

// RecommendedMaxQueueDelay is the bound for a media edge that must add at
// most 10 ms of latency under overload: half of it, leaving the rest for
// processing and the send queue. It is not the default: the bound drops
// whatever waited past it, also in a burst on a host whose CPU is busy with
// other work, which an operator chooses (docs/design.md, Queue delay).
const RecommendedMaxQueueDelay = 5 * time.Millisecond

const (
	defaultBatchSize    = 64
	defaultSocketBuffer = 4 << 20
	maxBatchSize        = 1024
)

func (o GSOOptions) withDefaults() GSOOptions {
	if o.BatchSize <= 0 {
		o.BatchSize = defaultBatchSize
	}
	if o.BatchSize > maxBatchSize {
		o.BatchSize = maxBatchSize
	}
	if o.Loops <= 0 {
		o.Loops = runtime.GOMAXPROCS(0)
	}
	if o.SocketBuffer <= 0 {
		o.SocketBuffer = defaultSocketBuffer
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Features are the UDP offloads the running kernel offers, as probed by
// [DetectFeatures].
type Features struct {
	// UDPSegment: setsockopt(SOL_UDP, UDP_SEGMENT) works (Linux >= 4.18),
	// so sendmsg may carry a UDP_SEGMENT cmsg.
	UDPSegment bool `json:"udp_segment"`
	// UDPGRO: setsockopt(SOL_UDP, UDP_GRO) works (Linux >= 5.0), so reads
	// may return several datagrams coalesced, split by the UDP_GRO cmsg.
	UDPGRO bool `json:"udp_gro"`
	// Kernel is the release from uname(2), "" when unknown.
	Kernel string `json:"kernel"`
	// Reason says why a feature is missing ("" when all are present).
	Reason string `json:"reason,omitempty"`
}

// LoopStatser is implemented by datapaths that keep counters per I/O loop
// (the gso datapath). LoopStats returns one [Stats] per loop: loop i holds
// socket i of every listener's SO_REUSEPORT group and the relay sockets
// assigned to i (round robin at OpenRelay), including sockets already
// closed. The sum over the loops equals Datapath.Stats.
type LoopStatser interface {
	LoopStats() []Stats
}

package dataplane

import (
	"errors"
	"log/slog"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
)

// gsoDP is the batched datapath (see doc.go). Every socket has one
// goroutine reading it with recvmmsg through its RawConn, so Go's netpoller
// parks the goroutine while the socket is empty. What the handler sends
// during a read batch is queued in the batch state of that goroutine and
// leaves at the end of the batch (flush), planned by planSends.
type gsoDP struct {
	opts GSOOptions
	feat Features
	log  *slog.Logger
	lim  planLimits

	mu      sync.Mutex // guards conns, closed, retired; never taken per packet
	conns   map[*gsoConn]struct{}
	closed  bool
	retired []Stats // per loop: counters of sockets already closed

	nextLoop atomic.Uint32
	nextID   atomic.Uint64
	// Batch states, one held by each goroutine while it reads: small ones
	// (smallBatch messages) for a socket's first read after waking, large
	// ones (BatchSize) once a read came back full.
	small, large sync.Pool
	// largeInUse counts large states held; at most maxLarge, beyond which
	// a socket goes on with small ones (bounds memory when the host is so
	// loaded that many relay sockets have queues at once).
	largeInUse atomic.Int32
	maxLarge   int32
	warned     atomic.Bool

	// testGSOErr, set only by tests, replaces the result of every
	// UDP_SEGMENT sendmsg with its return value when that is not 0.
	testGSOErr func() syscall.Errno
}

// NewGSO returns the batched datapath: recvmmsg (+UDP_GRO) reads, sends
// queued per read batch and flushed as UDP_SEGMENT sendmsg runs and
// sendmmsg. Without kernel UDP_SEGMENT support it still batches (sendmmsg
// only) and logs why.
func NewGSO(opts GSOOptions) (Datapath, error) {
	opts = opts.withDefaults()
	dp := &gsoDP{
		opts:    opts,
		feat:    DetectFeatures(),
		log:     opts.Logger,
		lim:     defaultPlanLimits,
		conns:   map[*gsoConn]struct{}{},
		retired: make([]Stats, opts.Loops),
	}
	dp.maxLarge = int32(opts.Loops + 2*runtime.GOMAXPROCS(0))
	dp.small.New = func() any { return dp.newState(false) }
	dp.large.New = func() any { return dp.newState(true) }
	if !dp.feat.UDPSegment || !dp.feat.UDPGRO {
		dp.log.Warn("gso datapath: kernel lacks UDP offloads, batching without them",
			"udp_segment", dp.feat.UDPSegment, "udp_gro", dp.feat.UDPGRO,
			"kernel", dp.feat.Kernel, "reason", dp.feat.Reason)
	}
	return dp, nil
}

func (dp *gsoDP) Name() string { return "gso" }

// Features returns what DetectFeatures found when the datapath was made.
func (dp *gsoDP) Features() Features { return dp.feat }

func (dp *gsoDP) Listen(addr netip.AddrPort, h Handler) (Conn, error) {
	return dp.open(addr, h, dp.opts.Loops, true)
}

func (dp *gsoDP) OpenRelay(addr netip.AddrPort, h Handler) (Conn, error) {
	return dp.open(addr, h, 1, false)
}

func (dp *gsoDP) Stats() Stats {
	var s Stats
	for _, l := range dp.LoopStats() {
		s.Add(l)
	}
	s.Datapath = "gso"
	s.Loops = dp.opts.Loops
	return s
}

// LoopStats implements LoopStatser.
func (dp *gsoDP) LoopStats() []Stats {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	out := make([]Stats, dp.opts.Loops)
	copy(out, dp.retired)
	for c := range dp.conns {
		for _, s := range c.socks {
			out[s.loop].Add(s.ctr.snapshot())
		}
	}
	for i := range out {
		out[i].Datapath = "gso"
		out[i].Loops = 1
	}
	return out
}

func (dp *gsoDP) Close() error {
	dp.mu.Lock()
	dp.closed = true
	conns := make([]*gsoConn, 0, len(dp.conns))
	for c := range dp.conns {
		conns = append(conns, c)
	}
	dp.mu.Unlock()
	var errs []error
	for _, c := range conns {
		if err := c.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

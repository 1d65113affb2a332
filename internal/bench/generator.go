package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"
)

// GenConfig configures a Generator.
type GenConfig struct {
	Flows []*Flow
	// PayloadSize is the application payload per packet (what a peer
	// receives), at least PayloadHeaderSize.
	PayloadSize int
	// Rate is packets per second per flow; 0 floods.
	Rate float64
	// Duration bounds the run (required, > 0).
	Duration time.Duration
	// MaxPackets bounds the run too (0: only Duration).
	MaxPackets uint64
	// SocketBuffer for the sending sockets (0: 4 MiB).
	SocketBuffer int
}

// Generator sends measurement packets for a set of flows, either as a
// flood (one GSO send of up to 64 datagrams per flow in turn) or at a fixed
// rate per flow (a 1 ms scheduler; flows are phase-shifted so they do not
// send in lockstep, as independent WebRTC senders would not).
type Generator struct {
	cfg     GenConfig
	writers []*flowWriter
	conns   map[*net.UDPConn]*batchConn
	sent    atomic.Uint64
	stats   IOStats
}

// NewGenerator validates cfg and prepares the send buffers.
func NewGenerator(cfg GenConfig) (*Generator, error) {
	if len(cfg.Flows) == 0 {
		return nil, errors.New("generator: no flows")
	}
	if cfg.PayloadSize < PayloadHeaderSize || cfg.PayloadSize > 65000 {
		return nil, fmt.Errorf("generator: payload size %d outside %d-65000", cfg.PayloadSize, PayloadHeaderSize)
	}
	if cfg.Duration <= 0 {
		return nil, errors.New("generator: duration must be positive")
	}
	if cfg.Rate < 0 {
		return nil, errors.New("generator: negative rate")
	}
	if cfg.SocketBuffer == 0 {
		cfg.SocketBuffer = 4 << 20
	}
	g := &Generator{cfg: cfg, conns: make(map[*net.UDPConn]*batchConn)}
	for _, f := range cfg.Flows {
		bc, ok := g.conns[f.Conn]
		if !ok {
			var err error
			if bc, err = newBatchConn(f.Conn, 1, 16); err != nil {
				return nil, fmt.Errorf("generator: %w", err)
			}
			setBuffers(f.Conn, cfg.SocketBuffer)
			g.conns[f.Conn] = bc
		}
		w, err := newFlowWriter(f, bc, cfg.PayloadSize)
		if err != nil {
			return nil, fmt.Errorf("generator: %w", err)
		}
		g.writers = append(g.writers, w)
	}
	return g, nil
}

// Sent is the number of datagrams the kernel accepted so far.
func (g *Generator) Sent() uint64 { return g.sent.Load() }

// FlowSent is the number of datagrams sent on flow i (valid after Run).
func (g *Generator) FlowSent(i int) uint64 { return g.writers[i].sent }

// IOStats sums the send statistics of the generator's sockets (after Run).
func (g *Generator) IOStats() IOStats { return g.stats }

// WireSize is the size of one datagram of flow i on the wire (UDP payload).
func (g *Generator) WireSize(i int) int { return g.writers[i].seg }

// Run sends until ctx ends, Duration passes or MaxPackets were sent.
func (g *Generator) Run(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, g.cfg.Duration)
	defer cancel()
	// A flood blocks in the kernel when the socket buffer is full; the
	// write deadline is what interrupts it at the end.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-ctx.Done():
			for c := range g.conns {
				_ = c.SetWriteDeadline(time.Now())
			}
		case <-stop:
		}
	}()
	defer func() {
		for c, bc := range g.conns {
			_ = c.SetWriteDeadline(time.Time{})
			g.stats.GSOSends += bc.Stats.GSOSends
			g.stats.MmsgSends += bc.Stats.MmsgSends
			if bc.Stats.GSOFailure != "" {
				g.stats.GSOFailure = bc.Stats.GSOFailure
			}
		}
	}()
	var err error
	if g.cfg.Rate == 0 {
		err = g.flood(ctx)
	} else {
		err = g.paced(ctx)
	}
	if err != nil && (errClosed(err) || ctx.Err() != nil) {
		return nil
	}
	return err
}

// budget returns how many more packets MaxPackets allows (a large number
// when unbounded).
func (g *Generator) budget() uint64 {
	if g.cfg.MaxPackets == 0 {
		return 1 << 62
	}
	s := g.sent.Load()
	if s >= g.cfg.MaxPackets {
		return 0
	}
	return g.cfg.MaxPackets - s
}

func (g *Generator) flood(ctx context.Context) error {
	for {
		for _, w := range g.writers {
			if ctx.Err() != nil {
				return nil
			}
			left := g.budget()
			if left == 0 {
				return nil
			}
			n := len(w.buf) / w.seg
			if uint64(n) > left {
				n = int(left)
			}
			sent, err := w.send(n)
			g.sent.Add(uint64(sent))
			if err != nil {
				return err
			}
		}
	}
}

func (g *Generator) paced(ctx context.Context) error {
	const tick = time.Millisecond
	period := float64(time.Second) / g.cfg.Rate
	nflows := len(g.writers)
	start := time.Now()
	due := make([]uint64, nflows)
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	for {
		if ctx.Err() != nil {
			return nil
		}
		elapsed := float64(time.Since(start))
		for i, w := range g.writers {
			// Flow i's k-th packet is due at (k + i/nflows) periods.
			phase := float64(i) / float64(nflows) * period
			if elapsed < phase {
				continue
			}
			due[i] = uint64((elapsed-phase)/period) + 1
			want := due[i] - w.seq
			if want == 0 {
				continue
			}
			left := g.budget()
			if left == 0 {
				return nil
			}
			if want > left {
				want = left
			}
			max := uint64(len(w.buf) / w.seg)
			if want > max {
				// Far behind (the machine stalled): send one batch, skip
				// the rest so the rate stays what was asked.
				w.seq = due[i] - max
				want = max
			}
			sent, err := w.send(int(want))
			g.sent.Add(uint64(sent))
			if err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

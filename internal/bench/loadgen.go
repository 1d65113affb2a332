package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"
)

// MaxRunDuration bounds every loadgen run: a forgotten flood must end.
const MaxRunDuration = 24 * time.Hour

// ClientRunConfig is `hybridrelay loadgen` (the TURN client side).
type ClientRunConfig struct {
	TURN        TURNConfig
	PayloadSize int
	Rate        float64 // per allocation; 0 floods
	Duration    time.Duration
	MaxPackets  uint64
	// Progress gets a line per second (nil: none).
	Progress io.Writer
	// RefreshEvery refreshes allocations, channels and permissions during
	// long runs (default 60 s; permissions last 300 s, RFC 8656 section 9).
	RefreshEvery time.Duration
}

// ClientResult summarises a client run. "Returned" packets are those that
// came back to the client: echoes from a reflecting sink (the latency is
// then a round trip) or packets a sink sent towards the relayed addresses.
type ClientResult struct {
	Allocations int      `json:"allocations"`
	Relayed     []string `json:"relayed_addresses"`
	Seconds     float64  `json:"seconds"`
	Sent        uint64   `json:"sent"`
	SentPPS     float64  `json:"sent_pps"`
	Returned    uint64   `json:"returned"`
	ReturnedPPS float64  `json:"returned_pps"`
	LostBySeq   uint64   `json:"returned_lost_by_sequence"`
	P50us       float64  `json:"latency_p50_us"`
	P99us       float64  `json:"latency_p99_us"`
	Invalid     uint64   `json:"invalid"`
	GSOSends    uint64   `json:"gso_sends"`
	MmsgSends   uint64   `json:"sendmmsg_calls"`
	GSOFailure  string   `json:"gso_failure,omitempty"`
}

// RunClient makes the allocations, sends for the duration (or packet
// count) and counts what comes back.
func RunClient(ctx context.Context, cfg ClientRunConfig) (*ClientResult, error) {
	if cfg.Duration <= 0 || cfg.Duration > MaxRunDuration {
		return nil, fmt.Errorf("loadgen: duration %v: want more than 0, at most %v", cfg.Duration, MaxRunDuration)
	}
	if cfg.RefreshEvery <= 0 {
		cfg.RefreshEvery = time.Minute
	}
	if cfg.TURN.Lifetime == 0 {
		cfg.TURN.Lifetime = 10 * time.Minute
	}
	setupCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	load, err := SetupTURN(setupCtx, cfg.TURN)
	cancel()
	if err != nil {
		return nil, err
	}
	defer load.Close()
	res := &ClientResult{Allocations: len(load.Clients)}
	for _, c := range load.Clients {
		res.Relayed = append(res.Relayed, c.Relayed().String())
	}
	if cfg.Progress != nil {
		for i, c := range load.Clients {
			if i == 8 && len(load.Clients) > 9 {
				fmt.Fprintf(cfg.Progress, "... and %d more allocations\n", len(load.Clients)-8)
				break
			}
			fmt.Fprintf(cfg.Progress, "allocation %d: local %v relayed %v channel %#04x\n", i, c.LocalAddr(), c.Relayed(), load.Channels[i])
		}
	}
	recv := NewReceiver(RecvConfig{Conns: load.Conns(), Flows: len(load.Clients), Control: load.Control()})
	for _, c := range load.Clients {
		c.SetExternalReader(true) // the receiver owns the reads now
	}
	if err := recv.Start(); err != nil {
		return nil, err
	}
	recv.Measure(true)
	gen, err := NewGenerator(GenConfig{Flows: load.ClientFlows(), PayloadSize: cfg.PayloadSize, Rate: cfg.Rate, Duration: cfg.Duration, MaxPackets: cfg.MaxPackets})
	if err != nil {
		recv.Stop()
		return nil, err
	}
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- gen.Run(runCtx) }()

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastRefresh := time.Now()
	var lastSent, lastRecv uint64
	var runErr error
loop:
	for {
		select {
		case runErr = <-done:
			break loop
		case <-tick.C:
			s, r := gen.Sent(), recv.Packets()
			if cfg.Progress != nil {
				fmt.Fprintf(cfg.Progress, "%6.0fs sent %d (%d pps)  returned %d (%d pps)  latency p50 %v p99 %v\n",
					time.Since(start).Seconds(), s, s-lastSent, r, r-lastRecv, recv.Latency.Quantile(0.5).Round(time.Microsecond), recv.Latency.Quantile(0.99).Round(time.Microsecond))
			}
			lastSent, lastRecv = s, r
			if time.Since(lastRefresh) >= cfg.RefreshEvery {
				lastRefresh = time.Now()
				rctx, cancel := context.WithTimeout(runCtx, 30*time.Second)
				if err := load.Refresh(rctx); err != nil && cfg.Progress != nil {
					fmt.Fprintf(cfg.Progress, "refresh: %v\n", err)
				}
				cancel()
			}
		}
	}
	elapsed := time.Since(start)
	// Let the last packets in flight come back.
	_ = sleepCtx(ctx, 200*time.Millisecond)
	recv.Stop()
	for _, c := range load.Clients {
		c.SetExternalReader(false)
	}
	res.Seconds = elapsed.Seconds()
	res.Sent = gen.Sent()
	res.SentPPS = float64(res.Sent) / res.Seconds
	res.Returned = recv.Packets()
	res.ReturnedPPS = float64(res.Returned) / res.Seconds
	res.LostBySeq = recv.Lost()
	res.P50us = float64(recv.Latency.Quantile(0.5)) / 1e3
	res.P99us = float64(recv.Latency.Quantile(0.99)) / 1e3
	res.Invalid = recv.Invalid()
	st := gen.IOStats()
	res.GSOSends, res.MmsgSends, res.GSOFailure = st.GSOSends, st.MmsgSends, st.GSOFailure
	if runErr != nil && !errors.Is(runErr, context.Canceled) {
		return res, runErr
	}
	return res, ctx.Err()
}

// SinkConfig is `hybridrelay loadgen sink`: the peer side.
type SinkConfig struct {
	Listen  netip.AddrPort
	Reflect bool
	// SendTo makes the sink a sender too: measurement flows from its
	// socket to these addresses (the relayed addresses a client printed),
	// for the peer-to-client direction.
	SendTo      []netip.AddrPort
	PayloadSize int
	Rate        float64
	MaxPackets  uint64
	Duration    time.Duration
	MaxFlows    int // flow ids tracked (default 65536)
	Progress    io.Writer
}

// SinkResult summarises a sink run. Latency is one way (sender and sink on
// one host share the clock; across hosts it is only as good as their
// clock sync).
type SinkResult struct {
	Listen      string  `json:"listen"`
	Seconds     float64 `json:"seconds"`
	Received    uint64  `json:"received"`
	Bytes       uint64  `json:"bytes"`
	ReceivedPPS float64 `json:"received_pps"`
	FlowsSeen   int     `json:"flows_seen"`
	LostBySeq   uint64  `json:"lost_by_sequence"`
	Reflected   uint64  `json:"reflected"`
	Sent        uint64  `json:"sent"`
	Invalid     uint64  `json:"invalid"`
	P50us       float64 `json:"latency_p50_us"`
	P99us       float64 `json:"latency_p99_us"`
}

// RunSink counts (and optionally reflects) measurement packets on Listen
// for the duration, sending to SendTo as well when set.
func RunSink(ctx context.Context, cfg SinkConfig) (*SinkResult, error) {
	if cfg.Duration <= 0 || cfg.Duration > MaxRunDuration {
		return nil, fmt.Errorf("sink: duration %v: want more than 0, at most %v", cfg.Duration, MaxRunDuration)
	}
	if cfg.MaxFlows <= 0 {
		cfg.MaxFlows = 1 << 16
	}
	network := "udp4"
	if cfg.Listen.Addr().Is6() && !cfg.Listen.Addr().Is4In6() {
		network = "udp6"
	}
	conn, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(cfg.Listen))
	if err != nil {
		return nil, fmt.Errorf("sink: listen: %w", err)
	}
	defer conn.Close()
	res := &SinkResult{Listen: addrOf(conn).String()}
	if cfg.Progress != nil {
		fmt.Fprintf(cfg.Progress, "sink listening on %s (reflect %v)\n", res.Listen, cfg.Reflect)
	}
	recv := NewReceiver(RecvConfig{Conns: []*net.UDPConn{conn}, Flows: cfg.MaxFlows, Reflect: cfg.Reflect})
	if err := recv.Start(); err != nil {
		return nil, err
	}
	recv.Measure(true)
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	var gen *Generator
	genDone := make(chan error, 1)
	if len(cfg.SendTo) > 0 {
		var flows []*Flow
		for i, dst := range cfg.SendTo {
			flows = append(flows, &Flow{ID: uint32(i), Conn: conn, Dst: dst})
		}
		if gen, err = NewGenerator(GenConfig{Flows: flows, PayloadSize: cfg.PayloadSize, Rate: cfg.Rate, Duration: cfg.Duration, MaxPackets: cfg.MaxPackets}); err != nil {
			recv.Stop()
			return nil, err
		}
		go func() { genDone <- gen.Run(ctx) }()
	}
	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var last uint64
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
			if cfg.Progress != nil {
				r := recv.Packets()
				line := fmt.Sprintf("%6.0fs received %d (%d pps) from %d flow(s), lost %d, one-way p50 %v p99 %v",
					time.Since(start).Seconds(), r, r-last, recv.FlowsSeen(), recv.Lost(), recv.Latency.Quantile(0.5).Round(time.Microsecond), recv.Latency.Quantile(0.99).Round(time.Microsecond))
				if cfg.Reflect {
					line += fmt.Sprintf(", reflected %d", recv.Reflected())
				}
				if gen != nil {
					line += fmt.Sprintf(", sent %d", gen.Sent())
				}
				fmt.Fprintln(cfg.Progress, line)
				last = r
			}
		}
	}
	var genErr error
	if gen != nil {
		genErr = <-genDone
	}
	recv.Stop()
	res.Seconds = time.Since(start).Seconds()
	res.Received = recv.Packets()
	res.Bytes = recv.Bytes()
	res.ReceivedPPS = float64(res.Received) / res.Seconds
	res.FlowsSeen = recv.FlowsSeen()
	res.LostBySeq = recv.Lost()
	res.Reflected = recv.Reflected()
	res.Invalid = recv.Invalid()
	res.P50us = float64(recv.Latency.Quantile(0.5)) / 1e3
	res.P99us = float64(recv.Latency.Quantile(0.99)) / 1e3
	if gen != nil {
		res.Sent = gen.Sent()
	}
	if genErr != nil {
		return res, genErr
	}
	if err := ctx.Err(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return res, err
	}
	return res, nil
}

// Package bench is the load-generation and benchmark library behind
// `hybridrelay loadgen` and `hybridrelay compare`.
//
// It owns: the measurement payload (flow id, sequence number and send
// timestamp in every packet, for loss and latency), the latency histogram,
// batched UDP senders and receivers (UDP_SEGMENT GSO sends with a sendmmsg
// fallback, recvmmsg reads), TURN load clients (many allocations with
// channel binds, built on internal/turnclient), the peer sink/reflector,
// CPU accounting from /proc, and the network-namespace harness that runs
// the real hybridrelay binary per datapath against the direct and the
// routed baselines (docs/design.md "Benchmark method"), and the in-place
// cost of attached BPF programs from kernel run-time statistics
// (ProgCostMeter, MeasureProgCost), with JSON, table and SVG output.
package bench

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hybridrelay/hybridrelay/internal/bench"
)

func init() {
	register(&cli.Command{
		Name:      "compare",
		Usage:     "benchmark the datapaths against the direct and the routed path in private network namespaces",
		UsageText: "hybridrelay compare [--duration D] [--repeats N] [--datapaths xdp,gso,plain] [--flows 1,500] [--size 120,1200] [--direction both] [--family both] [--json] [--chart FILE.svg]",
		Description: `Builds a client, a relay and a peer network namespace (198.18.0.0/15 and
2001:2::/48 only), runs this binary's "serve" in the relay namespace once per
datapath and run, and drives the same load through each: a one-flow flood
from a GSO sender (--flows 1) and WebRTC-like many-flow load (--flows N > 1:
N allocations at --rate packets per second each, --flow-size bytes). Two
baselines run in every repeat: "direct" (client to peer over a veth of their
own, no relay hop: the machine's ceiling) and "routed" (client to peer
through the relay namespace as an IP router, no relay process: the kernel's
own forwarding on the relay's hops). The relay namespace forwards only
during routed runs; every datapath runs on a host that does not route, as
servers come. Variants alternate (direct routed plain gso xdp direct
routed ...) so drift hits all alike.

Per run: offered and delivered packets per second (at the receiver), relay
process CPU, system CPU-ns per delivered packet (all non-idle time from
/proc/stat), one-way latency p50/p99 from timestamps in the payload, the
relay namespace's forwarding state, and the in-place cost of the relay's XDP
program and of the trivial XDP_PASS program on the client and peer veths
(ns per packet from kernel BPF run-time statistics, on only during the
window). The table shows medians over the repeats, with ratios to direct and
to routed, and for xdp the bars: delivered >= 0.95 x routed, system CPU-ns
per packet <= 1.1 x routed, program <= 150 ns per packet and <= 3 x XDP_PASS.
A datapath the binary or the host cannot run is reported as unavailable, not
as a failure.

Needs root. Namespaces, relay processes and BPF pins are removed on every
exit, Ctrl-C included.`,
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "duration", Value: 5 * time.Second, Usage: "measurement window per run"},
			&cli.DurationFlag{Name: "warmup", Value: time.Second, Usage: "load before each window opens"},
			&cli.IntFlag{Name: "repeats", Value: 3, Usage: "runs per variant and case (medians are reported)"},
			&cli.StringFlag{Name: "datapaths", Value: "xdp,gso,plain", Usage: "datapaths to compare with direct and routed, comma-separated"},
			&cli.StringFlag{Name: "flows", Value: "1,500", Usage: "flow counts, comma-separated: 1 floods, more run at --rate each"},
			&cli.StringFlag{Name: "size", Value: "120,1200", Usage: "payload bytes of the one-flow floods, comma-separated"},
			&cli.IntFlag{Name: "flow-size", Value: 1000, Usage: "payload bytes of the many-flow cases"},
			&cli.Float64Flag{Name: "rate", Value: 50, Usage: "packets per second per flow in the many-flow cases"},
			&cli.StringFlag{Name: "direction", Value: "both", Usage: "client-to-peer, peer-to-client or both"},
			&cli.StringFlag{Name: "family", Value: "both", Usage: "ipv4, ipv6 or both (many-flow cases: the first of these)"},
			&cli.BoolFlag{Name: "json", Usage: "print the report as JSON instead of the table"},
			&cli.StringFlag{Name: "json-out", Usage: "also write the JSON report to `FILE` (the table still goes to stdout)"},
			&cli.StringFlag{Name: "chart", Usage: "write an SVG bar chart of the ratios to direct to `FILE`"},
			&cli.StringFlag{Name: "relay-binary", Usage: "hybridrelay binary to run as the relay (default: this one)"},
			&cli.StringFlag{Name: "relay-log", Usage: "append the relays' output to `FILE`"},
			&cli.StringSliceFlag{Name: "serve-arg", Usage: "extra `ARG` for every serve command (repeatable), e.g. --serve-arg=--batch-size=32"},
			&cli.BoolFlag{Name: "quiet", Usage: "no progress lines on stderr"},
		},
		Action: compareAction,
	})
}

func compareAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return usageErrorf("compare takes no arguments, got %q", c.Args().Slice())
	}
	opts, err := compareOptions(c)
	if err != nil {
		return asUsage(err)
	}
	if os.Geteuid() != 0 {
		return errors.New("compare needs root (it creates network namespaces and runs the relay)")
	}
	stderr := c.App.ErrWriter
	if !c.Bool("quiet") {
		opts.Progress = stderr
	}
	if path := c.String("relay-log"); path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return asUsage(fmt.Errorf("relay log: %w", err))
		}
		defer f.Close()
		opts.RelayLog = f
	}
	if opts.RelayBinary == "" {
		if opts.RelayBinary, err = os.Executable(); err != nil {
			return fmt.Errorf("find this executable to run as the relay: %w", err)
		}
	}

	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, runErr := bench.Compare(ctx, opts)
	if rep == nil {
		return runErr
	}
	rep.Command = strings.Join(os.Args, " ")
	if err := writeCompare(c, rep); err != nil {
		return err
	}
	if runErr != nil {
		if errors.Is(runErr, context.Canceled) {
			return errors.New("interrupted; the runs finished so far are shown")
		}
		return runErr
	}
	return nil
}

func writeCompare(c *cli.Context, rep *bench.Report) error {
	out := c.App.Writer
	var err error
	if c.Bool("json") {
		err = rep.WriteJSON(out)
	} else {
		err = rep.WriteTable(out)
	}
	if err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	if path := c.String("json-out"); path != "" {
		if err := writeReportFile(path, rep.WriteJSON); err != nil {
			return fmt.Errorf("json-out: %w", err)
		}
	}
	if path := c.String("chart"); path != "" {
		if err := writeReportFile(path, rep.WriteSVG); err != nil {
			return fmt.Errorf("chart: %w", err)
		}
	}
	return nil
}

func writeReportFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// compareOptions turns the flags into harness options and cases.
func compareOptions(c *cli.Context) (bench.Options, error) {
	o := bench.Options{
		Duration:       c.Duration("duration"),
		Warmup:         c.Duration("warmup"),
		Repeats:        c.Int("repeats"),
		RelayBinary:    c.String("relay-binary"),
		ExtraServeArgs: c.StringSlice("serve-arg"),
	}
	if o.Duration <= 0 || o.Duration > time.Hour {
		return o, fmt.Errorf("--duration %v: want more than 0 and at most 1h", o.Duration)
	}
	if o.Warmup < 0 || o.Warmup > 10*time.Minute {
		return o, fmt.Errorf("--warmup %v: want 0 to 10m", o.Warmup)
	}
	if o.Repeats < 1 || o.Repeats > 100 {
		return o, fmt.Errorf("--repeats %d: want 1 to 100", o.Repeats)
	}
	for _, d := range splitList(c.String("datapaths")) {
		switch d {
		case "xdp", "gso", "plain", "auto":
			o.Datapaths = append(o.Datapaths, d)
		case bench.VariantDirect, bench.VariantRouted:
			// always run; accept them for convenience
		default:
			return o, fmt.Errorf("--datapaths: unknown datapath %q (xdp, gso, plain, auto)", d)
		}
	}
	if len(o.Datapaths) == 0 {
		return o, errors.New("--datapaths: name at least one of xdp, gso, plain, auto")
	}
	flows, err := intList(c.String("flows"), "--flows", 1, 20000)
	if err != nil {
		return o, err
	}
	sizes, err := intList(c.String("size"), "--size", bench.PayloadHeaderSize, 1400)
	if err != nil {
		return o, err
	}
	flowSize := c.Int("flow-size")
	if flowSize < bench.PayloadHeaderSize || flowSize > 1400 {
		return o, fmt.Errorf("--flow-size %d: want %d to 1400", flowSize, bench.PayloadHeaderSize)
	}
	rate := c.Float64("rate")
	if rate <= 0 || rate > 1e6 {
		return o, fmt.Errorf("--rate %g: want more than 0, at most 1e6", rate)
	}
	var dirs []string
	switch strings.ToLower(c.String("direction")) {
	case "both":
		dirs = []string{bench.ClientToPeer, bench.PeerToClient}
	case "client-to-peer", "c2p", "forward":
		dirs = []string{bench.ClientToPeer}
	case "peer-to-client", "p2c", "reverse":
		dirs = []string{bench.PeerToClient}
	default:
		return o, fmt.Errorf("--direction %q: client-to-peer, peer-to-client or both", c.String("direction"))
	}
	var fams []bool
	switch strings.ToLower(c.String("family")) {
	case "both":
		fams = []bool{false, true}
	case "ipv4", "4", "v4", "inet":
		fams = []bool{false}
	case "ipv6", "6", "v6", "inet6":
		fams = []bool{true}
	default:
		return o, fmt.Errorf("--family %q: ipv4, ipv6 or both", c.String("family"))
	}
	for _, f := range flows {
		if f == 1 {
			for _, v6 := range fams {
				for _, size := range sizes {
					for _, d := range dirs {
						o.Cases = append(o.Cases, bench.Case{Name: caseName("flood", size, d, v6), Flows: 1, Size: size, Direction: d, IPv6: v6})
					}
				}
			}
			continue
		}
		for _, d := range dirs {
			v6 := fams[0]
			o.Cases = append(o.Cases, bench.Case{Name: caseName(fmt.Sprintf("flows%d-%gpps", f, rate), flowSize, d, v6), Flows: f, Size: flowSize, Rate: rate, Direction: d, IPv6: v6})
		}
	}
	return o, nil
}

func caseName(kind string, size int, dir string, v6 bool) string {
	d := "c2p"
	if dir == bench.PeerToClient {
		d = "p2c"
	}
	fam := "v4"
	if v6 {
		fam = "v6"
	}
	return fmt.Sprintf("%s-%dB-%s-%s", kind, size, d, fam)
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(strings.ToLower(p)); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func intList(s, flag string, lo, hi int) ([]int, error) {
	var out []int
	for _, p := range splitList(s) {
		n, err := strconv.Atoi(p)
		if err != nil || n < lo || n > hi {
			return nil, fmt.Errorf("%s: %q is not a number from %d to %d", flag, p, lo, hi)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: empty list", flag)
	}
	return out, nil
}

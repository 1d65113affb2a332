package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hybridrelay/hybridrelay/internal/bench"
	"github.com/hybridrelay/hybridrelay/internal/turnclient"
)

func init() {
	register(&cli.Command{
		Name:      "loadgen",
		Usage:     "TURN load generator (client side) and peer sink/reflector",
		UsageText: "hybridrelay loadgen --server ADDR:PORT --peer ADDR:PORT (--user NAME:PASSWORD | --auth-secret SECRET) [--allocations N] [--rate PPS | flood] [--duration D]\n   hybridrelay loadgen sink --listen ADDR:PORT [--reflect] [--send-to ADDR:PORT ...] [--duration D]",
		Description: `The client side makes --allocations TURN allocations on --server (UDP), each
with a channel bound to --peer (or only a permission, with --send-indications),
then sends measurement packets on every allocation: ChannelData (or Send
indications) carrying a flow id, a sequence number and a send timestamp. At
--rate packets per second per allocation, or as fast as possible (--rate 0, a
flood sent with UDP_SEGMENT so the generator is not the bottleneck).
Credentials: long-term (--user, repeatable, used round robin) or TURN REST
(--auth-secret: username "<expiry>:<--rest-user><i>", password
base64(HMAC-SHA1(secret, username))).

Run "loadgen sink" on the peer: it counts what arrives (rate, loss from the
sequence numbers, one-way latency), echoes it back with --reflect (the client
then reports round-trip latency and returned packets), and with --send-to
sends its own flows to relayed addresses (the peer-to-client direction; the
client prints its relayed addresses at start).

Every run is bounded: --duration (at most 24h) and optionally --count.
A line per second of progress goes to stderr; the summary to stdout (--json).`,
		Flags: append(loadFlags(),
			&cli.StringFlag{Name: "server", Usage: "TURN server `ADDR:PORT` (UDP)"},
			&cli.StringFlag{Name: "peer", Usage: "peer `ADDR:PORT` the allocations send to (where the sink listens)"},
			&cli.StringSliceFlag{Name: "user", Usage: "long-term credentials `NAME:PASSWORD` (repeatable)"},
			&cli.StringFlag{Name: "auth-secret", Usage: "TURN REST API shared `SECRET`"},
			&cli.StringFlag{Name: "rest-user", Value: "loadgen", Usage: "user part of REST usernames (an index is appended per allocation)"},
			&cli.IntFlag{Name: "allocations", Value: 1, Usage: "allocations (one socket each)"},
			&cli.BoolFlag{Name: "send-indications", Usage: "send Send indications after CreatePermission instead of ChannelData"},
			&cli.StringFlag{Name: "local", Usage: "local `IP` to bind the client sockets to"},
			&cli.DurationFlag{Name: "lifetime", Value: 10 * time.Minute, Usage: "allocation lifetime asked for"},
		),
		Action: loadgenAction,
		Subcommands: []*cli.Command{{
			Name:      "sink",
			Usage:     "peer side: count, reflect or send measurement packets",
			UsageText: "hybridrelay loadgen sink --listen ADDR:PORT [--reflect] [--send-to ADDR:PORT ...] [--duration D] [--json]",
			Flags: append(loadFlags(),
				&cli.StringFlag{Name: "listen", Usage: "`ADDR:PORT` to receive on (and send from)"},
				&cli.BoolFlag{Name: "reflect", Usage: "echo every packet back to its source (through the relay to the client)"},
				&cli.StringSliceFlag{Name: "send-to", Usage: "also send measurement flows to `ADDR:PORT` (repeatable; a client's relayed addresses)"},
			),
			Action: sinkAction,
		}},
	})
}

// loadFlags are shared by the client and the sink.
func loadFlags() []cli.Flag {
	return []cli.Flag{
		&cli.DurationFlag{Name: "duration", Value: 10 * time.Second, Usage: "how long to run (at most 24h)"},
		&cli.Uint64Flag{Name: "count", Usage: "stop after this many packets sent (0: only --duration)"},
		&cli.Float64Flag{Name: "rate", Value: 50, Usage: "packets per second per flow; 0 floods"},
		&cli.IntFlag{Name: "size", Value: 1000, Usage: "payload bytes per packet (what the peer receives), 24 to 65000"},
		&cli.BoolFlag{Name: "json", Usage: "print the summary as JSON"},
		&cli.BoolFlag{Name: "quiet", Usage: "no progress lines on stderr"},
	}
}

func checkLoadFlags(c *cli.Context) error {
	if d := c.Duration("duration"); d <= 0 || d > bench.MaxRunDuration {
		return usageErrorf("--duration %v: want more than 0, at most %v", d, bench.MaxRunDuration)
	}
	if r := c.Float64("rate"); r < 0 || r > 1e7 {
		return usageErrorf("--rate %g: want 0 (flood) to 1e7", r)
	}
	if s := c.Int("size"); s < bench.PayloadHeaderSize || s > 65000 {
		return usageErrorf("--size %d: want %d to 65000", s, bench.PayloadHeaderSize)
	}
	if c.NArg() > 0 {
		return usageErrorf("unexpected arguments %q", c.Args().Slice())
	}
	return nil
}

func loadgenAction(c *cli.Context) error {
	if err := checkLoadFlags(c); err != nil {
		return err
	}
	server, err := netip.ParseAddrPort(c.String("server"))
	if err != nil {
		return usageErrorf("--server %q: want ADDR:PORT: %v", c.String("server"), err)
	}
	peer, err := netip.ParseAddrPort(c.String("peer"))
	if err != nil {
		return usageErrorf("--peer %q: want ADDR:PORT: %v", c.String("peer"), err)
	}
	cfg := bench.TURNConfig{
		Server: server, Peer: peer, Allocations: c.Int("allocations"),
		Secret: c.String("auth-secret"), UserPrefix: c.String("rest-user"),
		SendIndications: c.Bool("send-indications"), Lifetime: c.Duration("lifetime"),
	}
	for _, u := range c.StringSlice("user") {
		name, pass, ok := strings.Cut(u, ":")
		if !ok || name == "" {
			return usageErrorf("--user %q: want NAME:PASSWORD", u)
		}
		cfg.Users = append(cfg.Users, turnclient.Credentials{Username: name, Password: pass})
	}
	if (len(cfg.Users) == 0) == (cfg.Secret == "") {
		return usageErrorf("give either --user or --auth-secret")
	}
	if cfg.Allocations < 1 || cfg.Allocations > 60000 {
		return usageErrorf("--allocations %d: want 1 to 60000", cfg.Allocations)
	}
	if l := c.String("local"); l != "" {
		if cfg.Local, err = netip.ParseAddr(l); err != nil {
			return usageErrorf("--local %q: %v", l, err)
		}
	}
	if cfg.Lifetime < time.Minute {
		return usageErrorf("--lifetime %v: want at least 1m", cfg.Lifetime)
	}
	run := bench.ClientRunConfig{
		TURN: cfg, PayloadSize: c.Int("size"), Rate: c.Float64("rate"),
		Duration: c.Duration("duration"), MaxPackets: c.Uint64("count"),
	}
	if !c.Bool("quiet") {
		run.Progress = c.App.ErrWriter
	}
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := bench.RunClient(ctx, run)
	if res != nil {
		if werr := writeSummary(c.App.Writer, c.Bool("json"), res, clientSummary(res)); werr != nil {
			return werr
		}
	}
	if errors.Is(err, context.Canceled) {
		return nil // Ctrl-C ends a run early; the summary says what happened
	}
	return err
}

func clientSummary(r *bench.ClientResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "allocations  %d\n", r.Allocations)
	fmt.Fprintf(&b, "duration     %.2fs\n", r.Seconds)
	fmt.Fprintf(&b, "sent         %d packets (%.0f pps)\n", r.Sent, r.SentPPS)
	fmt.Fprintf(&b, "returned     %d packets (%.0f pps), %d lost by sequence\n", r.Returned, r.ReturnedPPS, r.LostBySeq)
	if r.Returned > 0 {
		fmt.Fprintf(&b, "latency      p50 %.0f us, p99 %.0f us (round trip when the sink reflects)\n", r.P50us, r.P99us)
	}
	fmt.Fprintf(&b, "sends        %d GSO sendmsg, %d sendmmsg\n", r.GSOSends, r.MmsgSends)
	if r.GSOFailure != "" {
		fmt.Fprintf(&b, "gso          %s\n", r.GSOFailure)
	}
	return b.String()
}

func sinkAction(c *cli.Context) error {
	if err := checkLoadFlags(c); err != nil {
		return err
	}
	listen, err := netip.ParseAddrPort(c.String("listen"))
	if err != nil {
		return usageErrorf("--listen %q: want ADDR:PORT: %v", c.String("listen"), err)
	}
	cfg := bench.SinkConfig{
		Listen: listen, Reflect: c.Bool("reflect"), Duration: c.Duration("duration"),
		PayloadSize: c.Int("size"), Rate: c.Float64("rate"), MaxPackets: c.Uint64("count"),
	}
	for _, s := range c.StringSlice("send-to") {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return usageErrorf("--send-to %q: want ADDR:PORT: %v", s, err)
		}
		cfg.SendTo = append(cfg.SendTo, ap)
	}
	if !c.Bool("quiet") {
		cfg.Progress = c.App.ErrWriter
	}
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := bench.RunSink(ctx, cfg)
	if res != nil {
		if werr := writeSummary(c.App.Writer, c.Bool("json"), res, sinkSummary(res)); werr != nil {
			return werr
		}
	}
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func sinkSummary(r *bench.SinkResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "listen       %s\n", r.Listen)
	fmt.Fprintf(&b, "duration     %.2fs\n", r.Seconds)
	fmt.Fprintf(&b, "received     %d packets, %d bytes (%.0f pps) from %d flow(s)\n", r.Received, r.Bytes, r.ReceivedPPS, r.FlowsSeen)
	fmt.Fprintf(&b, "lost         %d by sequence\n", r.LostBySeq)
	if r.Received > 0 {
		fmt.Fprintf(&b, "latency      one-way p50 %.0f us, p99 %.0f us\n", r.P50us, r.P99us)
	}
	if r.Reflected > 0 {
		fmt.Fprintf(&b, "reflected    %d packets\n", r.Reflected)
	}
	if r.Sent > 0 {
		fmt.Fprintf(&b, "sent         %d packets\n", r.Sent)
	}
	if r.Invalid > 0 {
		fmt.Fprintf(&b, "invalid      %d datagrams were not measurement packets\n", r.Invalid)
	}
	return b.String()
}

func writeSummary(w io.Writer, asJSON bool, v any, text string) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			return fmt.Errorf("write summary: %w", err)
		}
		return nil
	}
	_, err := io.WriteString(w, text)
	return err
}

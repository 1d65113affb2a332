package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hybridrelay/hybridrelay/internal/admin"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
	"github.com/hybridrelay/hybridrelay/pkg/loader"
)

// Flags shared by the commands that read a daemon's state.
func adminSocketFlag() cli.Flag {
	return &cli.StringFlag{Name: "admin-socket", Value: "/run/hybridrelay/admin.sock", Usage: "the daemon's admin socket (serve --admin-socket)", EnvVars: []string{"HYBRIDRELAY_ADMIN_SOCKET"}}
}

func bpffsFlag() cli.Flag {
	return &cli.StringFlag{Name: "bpffs", Value: "/sys/fs/bpf/hybridrelay", Usage: "where the daemon pins its maps (serve --bpffs)", EnvVars: []string{"HYBRIDRELAY_BPFFS"}}
}

func jsonFlag() cli.Flag {
	return &cli.BoolFlag{Name: "json", Usage: "print JSON instead of text"}
}

func init() {
	register(&cli.Command{
		Name:  "stats",
		Usage: "show a running relay's counters (kernel counters from pinned maps when it is down)",
		Description: `Asks the daemon over its admin socket (root only) for allocations, permissions,
channels, requests, authentication failures, drops, the userspace datapath's
batch statistics and the XDP program's counters. When no daemon answers, the
kernel counters are read straight from the maps pinned under --bpffs.

With --watch DUR the numbers are printed again every DUR, with rates (per
second) computed over the interval. With --json each report is one JSON
object per line: {"snapshot": ..., "rates": {...}} (rates only when watching);
snapshot.kernel.pass has each pass reason with its group and meaning,
snapshot.kernel.prefilter each pre-filter drop reason.

` + passReasonHelp(),
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "watch", Usage: "print every `DUR` (e.g. 1s) with rates, until interrupted"},
			&cli.DurationFlag{Name: "prog-cost", Usage: "also measure the attached XDP program's in-place cost (ns per packet) over `DUR`, with kernel BPF statistics on for that window only"},
			jsonFlag(), adminSocketFlag(), bpffsFlag(),
		},
		Action: statsAction,
	})
}

// statsSource reads snapshots from the daemon, or the kernel counters from
// the pins.
type statsSource struct {
	sock, pins string
	client     *admin.Client
	pinned     *loader.XDP
}

func (s *statsSource) Close() {
	if s.client != nil {
		s.client.Close()
	}
	if s.pinned != nil {
		s.pinned.Close()
	}
}

func (s *statsSource) snapshot() (admin.Snapshot, error) {
	if s.pinned == nil {
		if s.client == nil {
			c, err := admin.Dial(s.sock)
			if err == nil {
				s.client = c
			} else if !errNoDaemon(err) {
				return admin.Snapshot{}, err
			}
		}
		if s.client != nil {
			var snap admin.Snapshot
			err := s.client.Call("stats", &snap)
			if err == nil {
				return snap, nil
			}
			s.client.Close()
			s.client = nil
			return admin.Snapshot{}, err
		}
		x, err := loader.OpenPinned(s.pins)
		if err != nil {
			if errors.Is(err, loader.ErrNoPins) {
				return admin.Snapshot{}, fmt.Errorf("no daemon answers on %s and %v", s.sock, err)
			}
			return admin.Snapshot{}, err
		}
		s.pinned = x
	}
	k, err := admin.KernelFromLoader(s.pinned, "pinned maps", nil)
	if err != nil {
		return admin.Snapshot{}, err
	}
	return admin.Snapshot{Time: time.Now(), Kernel: k}, nil
}

func statsAction(c *cli.Context) error {
	if c.Args().Len() > 0 {
		return usageErrorf("stats takes no arguments")
	}
	watch := c.Duration("watch")
	if watch < 0 || (watch > 0 && watch < 100*time.Millisecond) {
		return usageErrorf("--watch %s: use at least 100ms", watch)
	}
	src := &statsSource{sock: c.String("admin-socket"), pins: c.String("bpffs")}
	defer src.Close()
	out := c.App.Writer
	asJSON := c.Bool("json")
	if d := c.Duration("prog-cost"); d != 0 {
		if d < 100*time.Millisecond || watch != 0 {
			return usageErrorf("--prog-cost %s: use at least 100ms, without --watch", d)
		}
		snap, err := src.snapshot()
		if err != nil {
			return err
		}
		if snap.Kernel == nil || snap.Kernel.ProgramID == 0 {
			return fmt.Errorf("program cost: no kernel fast path loaded (is serve running with the xdp datapath?)")
		}
		id := snap.Kernel.ProgramID
		cost, err := measureProgCost(id, d)
		if err != nil {
			return err
		}
		if asJSON {
			return json.NewEncoder(out).Encode(map[string]any{"prog_cost": map[string]any{
				"program_id": id, "window_seconds": d.Seconds(), "runs": cost.Runs,
				"run_time_ns": cost.RunTime.Nanoseconds(), "ns_per_packet": cost.NsPerRun()}})
		}
		fmt.Fprintf(out, "kernel program %d in place: %.0f ns per packet over %d runs in %s (kernel BPF statistics on for this window only)\n",
			id, cost.NsPerRun(), cost.Runs, d)
		return nil
	}
	prev, err := src.snapshot()
	if err != nil {
		return err
	}
	if err := printStats(out, prev, nil, asJSON); err != nil {
		return err
	}
	if watch == 0 {
		return nil
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	tick := time.NewTicker(watch)
	defer tick.Stop()
	for {
		select {
		case <-sig:
			return nil
		case <-tick.C:
		}
		cur, err := src.snapshot()
		if err != nil {
			return err
		}
		rates := computeRates(prev, cur)
		if !asJSON {
			fmt.Fprintln(out)
		}
		if err := printStats(out, cur, rates, asJSON); err != nil {
			return err
		}
		prev = cur
	}
}

// counterValues flattens a snapshot's monotonic counters by a stable name,
// the keys of the rates.
func counterValues(s admin.Snapshot) map[string]uint64 {
	m := map[string]uint64{}
	if srv := s.Server; srv != nil {
		m["userspace.to_peer.packets"] = srv.UserspaceToPeer.Packets
		m["userspace.to_peer.bytes"] = srv.UserspaceToPeer.Bytes
		m["userspace.to_client.packets"] = srv.UserspaceToClient.Packets
		m["userspace.to_client.bytes"] = srv.UserspaceToClient.Bytes
		m["data_indications"] = srv.DataIndications
		m["allocations_created"] = srv.AllocationsCreated
		for meth, byRes := range srv.Requests {
			for res, v := range byRes {
				m["requests."+meth+"."+res] = v
			}
		}
		for r, v := range srv.AuthFailures {
			m["auth_failures."+r] = v
		}
		for r, v := range srv.Drops {
			m["drops."+r] = v
		}
		for e, v := range srv.Protocol {
			m["protocol."+e] = v
		}
	}
	if d := s.Dataplane; d != nil {
		m["dataplane.read_calls"] = d.ReadCalls
		m["dataplane.rx_packets"] = d.RxPackets
		m["dataplane.tx_packets"] = d.TxPackets
		m["dataplane.tx_gso_sends"] = d.TxGSOSends
		m["dataplane.tx_gso_segments"] = d.TxGSOSegments
		m["dataplane.drops"] = d.Drops
	}
	if k := s.Kernel; k != nil {
		for n, v := range k.Counters {
			m["kernel."+n] = v
		}
	}
	return m
}

// computeRates is the per-second change of every counter between two
// snapshots (a counter that went backwards, i.e. a daemon restart, is
// left out).
func computeRates(prev, cur admin.Snapshot) map[string]float64 {
	dt := cur.Time.Sub(prev.Time).Seconds()
	if dt <= 0 {
		return nil
	}
	a, b := counterValues(prev), counterValues(cur)
	r := map[string]float64{}
	for k, v := range b {
		if old, ok := a[k]; ok && v >= old {
			r[k] = float64(v-old) / dt
		}
	}
	return r
}

func printStats(w io.Writer, s admin.Snapshot, rates map[string]float64, asJSON bool) error {
	if asJSON {
		return json.NewEncoder(w).Encode(struct {
			Snapshot admin.Snapshot     `json:"snapshot"`
			Rates    map[string]float64 `json:"rates,omitempty"`
		}{s, rates})
	}
	renderStats(w, s, rates)
	return nil
}

// renderStats writes the human-readable report. It is a pure function of
// its inputs (golden-tested).
func renderStats(w io.Writer, s admin.Snapshot, rates map[string]float64) {
	rate := func(key string, scale float64, unit string) string {
		if rates == nil {
			return ""
		}
		return humanRate(rates[key]*scale, unit)
	}
	if s.Server != nil {
		fmt.Fprintf(w, "daemon pid %d, up %s, datapath %s (%s)\n", s.PID, s.Time.Sub(s.StartedAt).Round(time.Second), s.Datapath, s.DatapathReason)
	} else {
		fmt.Fprintf(w, "no daemon running: kernel counters from pinned maps in %s\n", s.Kernel.PinDir)
	}
	if srv := s.Server; srv != nil {
		fmt.Fprintf(w, "\nallocations %d   permissions %d   channels %d (%d in the kernel)\n",
			srv.Allocations, srv.Permissions, srv.Channels, srv.OffloadedChannels)
		fmt.Fprintf(w, "allocations created %d, expired %d, deleted %d\n", srv.AllocationsCreated, srv.AllocationsExpired, srv.AllocationsDeleted)
		if srv.Draining {
			since := ""
			if srv.DrainingSince != nil {
				since = fmt.Sprintf(" since %s (%s)", srv.DrainingSince.UTC().Format(time.RFC3339), s.Time.Sub(*srv.DrainingSince).Round(time.Second))
			}
			fmt.Fprintf(w, "DRAINING%s: %d allocations left; new clients %s\n", since, srv.Allocations, drainTarget(srv.AlternateServers))
		}
	}

	fmt.Fprintln(w)
	head := fmt.Sprintf("%-20s %14s %16s", "relayed", "packets", "bytes")
	if rates != nil {
		head += fmt.Sprintf(" %10s %10s", "pkt/s", "bit/s")
	}
	fmt.Fprintln(w, head)
	row := func(name, pktKey, byteKey string, pkts, bytes uint64) {
		line := fmt.Sprintf("%-20s %14d %16d", name, pkts, bytes)
		if rates != nil {
			line += fmt.Sprintf(" %10s %10s", rate(pktKey, 1, ""), rate(byteKey, 8, ""))
		}
		fmt.Fprintln(w, line)
	}
	if k := s.Kernel; k != nil {
		row("kernel to peer", "kernel.fwd_to_peer_packets", "kernel.fwd_to_peer_bytes", k.Counters["fwd_to_peer_packets"], k.Counters["fwd_to_peer_bytes"])
		row("kernel to client", "kernel.fwd_to_client_packets", "kernel.fwd_to_client_bytes", k.Counters["fwd_to_client_packets"], k.Counters["fwd_to_client_bytes"])
		row("kernel hairpin", "kernel.fwd_hairpin_packets", "kernel.fwd_hairpin_bytes", k.Counters["fwd_hairpin_packets"], k.Counters["fwd_hairpin_bytes"])
		row("kernel over limit", "kernel.drop_bandwidth_packets", "kernel.drop_bandwidth_bytes", k.Counters["drop_bandwidth_packets"], k.Counters["drop_bandwidth_bytes"])
	}
	if srv := s.Server; srv != nil {
		row("userspace to peer", "userspace.to_peer.packets", "userspace.to_peer.bytes", srv.UserspaceToPeer.Packets, srv.UserspaceToPeer.Bytes)
		row("userspace to client", "userspace.to_client.packets", "userspace.to_client.bytes", srv.UserspaceToClient.Packets, srv.UserspaceToClient.Bytes)
	}

	if srv := s.Server; srv != nil {
		fmt.Fprintf(w, "\nrequests (method: result count)\n")
		printed := false
		for _, m := range slices.Sorted(maps.Keys(srv.Requests)) {
			var parts []string
			for _, r := range slices.Sorted(maps.Keys(srv.Requests[m])) {
				if v := srv.Requests[m][r]; v > 0 {
					parts = append(parts, fmt.Sprintf("%s %d", r, v))
				}
			}
			if len(parts) > 0 {
				printed = true
				fmt.Fprintf(w, "  %-18s %s\n", m+":", strings.Join(parts, ", "))
			}
		}
		if !printed {
			fmt.Fprintln(w, "  none yet")
		}
		printCounterLine(w, "auth failures", srv.AuthFailures)
		printCounterLine(w, "drops", srv.Drops)
		// DTLS, RFC 5780 and RFC 6062 events: shown once any happened.
		for _, v := range srv.Protocol {
			if v > 0 {
				printCounterLine(w, "protocol", srv.Protocol)
				break
			}
		}
		if srv.OffloadInstalls+srv.OffloadInstallErrors+srv.OffloadFull+srv.OffloadRemoves > 0 {
			fmt.Fprintf(w, "offload: installs %d, removes %d, table full %d, errors install %d refresh %d remove %d\n",
				srv.OffloadInstalls, srv.OffloadRemoves, srv.OffloadFull, srv.OffloadInstallErrors, srv.OffloadRefreshErrors, srv.OffloadRemoveErrors)
		}
	}
	if d := s.Dataplane; d != nil {
		fmt.Fprintf(w, "\nuserspace datapath %s, %d loops\n", d.Datapath, len(s.Loops))
		fmt.Fprintf(w, "  reads %d, received %d datagrams (%d via GRO), kernel receive drops %d, dropped stale %d\n", d.ReadCalls, d.RxPackets, d.RxGROReads, d.RxKernelDrops, d.RxStaleDrops)
		fmt.Fprintf(w, "  receive batch sizes: %s\n", batchLine(d))
		segs := "-"
		if d.TxGSOSends > 0 {
			segs = fmt.Sprintf("%.1f", float64(d.TxGSOSegments)/float64(d.TxGSOSends))
		}
		fmt.Fprintf(w, "  sent %d datagrams: %d GSO sends carrying %d (%s per send), %d sendmmsg calls carrying %d, %d single sends\n",
			d.TxPackets, d.TxGSOSends, d.TxGSOSegments, segs, d.TxMmsgCalls, d.TxMmsgPackets, d.TxSingleSends)
		fmt.Fprintf(w, "  GSO fallbacks %d, send errors %d, userspace drops %d\n", d.GSOFallbacks, d.TxErrors, d.Drops)
		if rates != nil {
			fmt.Fprintf(w, "  rates: %s datagrams/s received, %s sent, %s reads/s\n",
				humanRate(rates["dataplane.rx_packets"], ""), humanRate(rates["dataplane.tx_packets"], ""), humanRate(rates["dataplane.read_calls"], ""))
		}
	}
	if k := s.Kernel; k != nil {
		fmt.Fprintf(w, "\nkernel fast path (%s", k.Source)
		if k.PinDir != "" {
			fmt.Fprintf(w, ", %s", k.PinDir)
		}
		fmt.Fprintf(w, "): %d of %d channels", k.Channels, k.MaxChannels)
		if len(k.Ifaces) > 0 {
			fmt.Fprintf(w, ", on %s", strings.Join(k.Ifaces, ", "))
		}
		fmt.Fprintln(w)
		renderPass(w, k.Counters)
		renderPrefilter(w, k)
	}
}

// renderPrefilter writes what the listener pre-filter dropped, by reason,
// and the meaning of every non-zero reason.
func renderPrefilter(w io.Writer, k *admin.Kernel) {
	var parts []string
	var explain []admin.PrefilterCount
	for _, p := range admin.PrefilterCounts(k.Counters) {
		if p.Packets > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", p.Name, p.Packets))
			explain = append(explain, p)
		}
	}
	if len(parts) == 0 {
		parts = []string{"none"}
	}
	on := "off"
	if len(k.PrefilterAddrs) > 0 {
		on = "on for " + strings.Join(k.PrefilterAddrs, ", ")
	}
	fmt.Fprintf(w, "  dropped by the listener pre-filter (%s): %s\n", on, strings.Join(parts, ", "))
	for _, p := range explain {
		meaning := p.Meaning
		if meaning == "" {
			meaning = "(not known to this hybridrelay build)"
		}
		fmt.Fprintf(w, "    %s: %s\n", p.Name, meaning)
	}
}

// renderPass writes the pass reasons by group, each group on one line, and
// under it what every non-zero reason outside the normal group means.
func renderPass(w io.Writer, counters map[string]uint64) {
	all := admin.PassCounts(counters)
	for _, g := range admin.PassGroups {
		var parts []string
		var explain []admin.PassCount
		for _, p := range all {
			if p.Group != g || p.Packets == 0 {
				continue
			}
			parts = append(parts, fmt.Sprintf("%s %d", p.Name, p.Packets))
			if g != admin.PassNormal {
				explain = append(explain, p)
			}
		}
		if len(parts) == 0 {
			parts = []string{"none"}
		}
		fmt.Fprintf(w, "  passed to the stack, %s: %s\n", g, strings.Join(parts, ", "))
		for _, p := range explain {
			meaning := p.Meaning
			if meaning == "" {
				meaning = "(not known to this hybridrelay build)"
			}
			fmt.Fprintf(w, "    %s: %s\n", p.Name, meaning)
		}
	}
}

// passReasonHelp lists the pass reasons by group for --help.
func passReasonHelp() string {
	var b strings.Builder
	b.WriteString("Kernel pass reasons (packets the XDP program left to the kernel stack), by group:\n")
	for _, g := range admin.PassGroups {
		fmt.Fprintf(&b, "\n%s:\n", g)
		for _, r := range admin.PassReasons {
			if r.Group == g {
				fmt.Fprintf(&b, "  %-16s %s\n", r.Name, r.Meaning)
			}
		}
	}
	b.WriteString("\nKernel pre-filter drops (datagrams to a UDP listener that the server would\ndiscard by their framing alone; xdp-prefilter on), by reason:\n\n")
	for _, r := range admin.PrefilterReasons {
		fmt.Fprintf(&b, "  %-18s %s\n", r.Name, r.Meaning)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

func printCounterLine(w io.Writer, title string, m map[string]uint64) {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
		}
	}
	if len(parts) == 0 {
		parts = []string{"none"}
	}
	fmt.Fprintf(w, "%s: %s\n", title, strings.Join(parts, ", "))
}

// batchLine renders the batch-size histogram: "1: 10, 2-2: 3, ...".
func batchLine(d *dataplane.Stats) string {
	var parts []string
	lo := 1
	for i, hi := range dataplane.BatchHistogramBuckets {
		if v := d.BatchSizes[i]; v > 0 {
			label := fmt.Sprint(hi)
			if lo != hi {
				label = fmt.Sprintf("%d-%d", lo, hi)
			}
			parts = append(parts, fmt.Sprintf("%s: %d", label, v))
		}
		lo = hi + 1
	}
	if len(parts) == 0 {
		return "none yet"
	}
	return strings.Join(parts, ", ")
}

// humanRate prints a rate with k/M/G suffixes.
func humanRate(v float64, unit string) string {
	switch {
	case v >= 1e9:
		return fmt.Sprintf("%.2fG%s", v/1e9, unit)
	case v >= 1e6:
		return fmt.Sprintf("%.2fM%s", v/1e6, unit)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk%s", v/1e3, unit)
	}
	return fmt.Sprintf("%.0f%s", v, unit)
}

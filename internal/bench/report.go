package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Direction of the measured traffic.
const (
	ClientToPeer = "client-to-peer"
	PeerToClient = "peer-to-client"
)

// The baselines, run in every repeat beside the datapaths
// (docs/design.md, "Benchmark method").
const (
	// VariantDirect is the machine's ceiling: generator to receiver over a
	// veth straight between the client and the peer namespaces, no relay
	// hop.
	VariantDirect = "direct"
	// VariantRouted is the kernel's own forwarding on the relay's hops:
	// generator to receiver through the relay namespace as an IP router
	// (forwarding on for these runs only), no relay process. The bar the
	// kernel path must reach.
	VariantRouted = "routed"
)

// The project's "done when" bars, per case, for the xdp datapath.
const (
	// BarRoutedDelivered: xdp delivers at least this share of routed's pps.
	BarRoutedDelivered = 0.95
	// BarRoutedCPUNs: at most this multiple of routed's system CPU-ns per
	// delivered packet.
	BarRoutedCPUNs = 1.1
	// BarXDPNsPerPkt: the relay program's in-place cost per packet, ns.
	BarXDPNsPerPkt = 150
	// BarXDPToPass: at most this multiple of the trivial XDP_PASS
	// program's cost in the same run.
	BarXDPToPass = 3
	// BarKernelForwarded: at least this share of the packets the program
	// saw forwarded by the program itself (fwd ÷ (fwd + passed)), not
	// passed to userspace.
	BarKernelForwarded = 0.99
)

// Case is one load shape.
type Case struct {
	Name      string  `json:"name"`
	Flows     int     `json:"flows"`
	Size      int     `json:"payload_bytes"`
	Rate      float64 `json:"rate_pps_per_flow"` // 0 = flood
	Direction string  `json:"direction"`
	IPv6      bool    `json:"ipv6"`
}

func (c Case) String() string {
	rate := "flood"
	if c.Rate > 0 {
		rate = fmt.Sprintf("%g pps/flow", c.Rate)
	}
	fam := "IPv4"
	if c.IPv6 {
		fam = "IPv6"
	}
	return fmt.Sprintf("%d flow(s), %s, %d B, %s, %s", c.Flows, rate, c.Size, c.Direction, fam)
}

// Run is one measured run of one variant.
type Run struct {
	Variant string `json:"variant"`
	Repeat  int    `json:"repeat"`
	// Seconds of the measurement window.
	Seconds        float64 `json:"seconds"`
	OfferedPPS     float64 `json:"offered_pps"`
	DeliveredPPS   float64 `json:"delivered_pps"`
	Loss           float64 `json:"loss"`                 // 1 - delivered/offered in the window
	RelayCPUPct    float64 `json:"relay_cpu_pct"`        // % of one core; 0 for direct
	RelayNsPerPkt  float64 `json:"relay_cpu_ns_per_pkt"` // relay process CPU time / delivered
	SysCPUNsPerPkt float64 `json:"sys_cpu_ns_per_pkt"`   // all non-idle CPU time / delivered
	SysCPUPct      float64 `json:"sys_cpu_pct"`
	// BackgroundCPUPct is how busy the machine was (all cores, %) in the
	// half second before the load started: other work on a shared host.
	BackgroundCPUPct float64 `json:"background_cpu_pct"` // machine busy %, all cores
	P50us            float64 `json:"latency_p50_us"`
	P99us            float64 `json:"latency_p99_us"`
	GSOSends         uint64  `json:"generator_gso_sends"`
	// Forwarding in the relay namespace during the window, read back from
	// its sysctls: on only for routed.
	RelayForwardingV4 bool `json:"relay_ns_ipv4_forwarding"`
	RelayForwardingV6 bool `json:"relay_ns_ipv6_forwarding"`
	// In-place cost from the kernel's BPF run-time statistics, held on
	// only for the window: the XDP programs attached in the relay
	// namespace (xdp datapath), and the trivial XDP_PASS program on the
	// client and peer veth ends (every variant), per program run, i.e.
	// per packet.
	XDPNsPerPkt    float64 `json:"xdp_prog_ns_per_pkt,omitempty"`
	XDPRuns        uint64  `json:"xdp_prog_runs,omitempty"`
	PassNsPerPkt   float64 `json:"pass_prog_ns_per_pkt,omitempty"`
	PassRuns       uint64  `json:"pass_prog_runs,omitempty"`
	XDPToPassRatio float64 `json:"xdp_to_pass_ratio,omitempty"`
	// ProgStatsError says why the in-place cost is missing.
	ProgStatsError string `json:"prog_stats_error,omitempty"`
	// KernelForwarded is the share of the packets the relay's XDP
	// program saw in the window that it forwarded itself: fwd ÷ (fwd +
	// every pass reason), from the pinned maps' counters; xdp variant
	// only. Packets lost before they reach the relay (a saturated sender,
	// a full veth ring) are neither and show as loss.
	KernelForwarded float64 `json:"kernel_forwarded,omitempty"`
	// KernelPassed counts, by reason, what the program passed to the
	// stack in the window (the userspace path's share).
	KernelPassed map[string]uint64 `json:"kernel_passed,omitempty"`
	Error        string            `json:"error,omitempty"`
}

// Forwarding is the relay namespace's forwarding state of the run as one
// word: "on", "off", or "v4 only"/"v6 only".
func (r Run) Forwarding() string {
	return forwardingWord(r.RelayForwardingV4, r.RelayForwardingV6)
}

func forwardingWord(v4, v6 bool) string {
	switch {
	case v4 && v6:
		return "on"
	case v4:
		return "v4 only"
	case v6:
		return "v6 only"
	}
	return "off"
}

// Summary is the median of a variant's runs in one case, and the medians
// of its per-repeat ratios to the direct and to the routed run of the same
// repeat.
type Summary struct {
	Variant     string  `json:"variant"`
	Available   bool    `json:"available"`
	Reason      string  `json:"reason,omitempty"`
	Runs        int     `json:"runs"`
	Offered     float64 `json:"offered_pps"`
	Delivered   float64 `json:"delivered_pps"`
	RelayCPU    float64 `json:"relay_cpu_pct"`
	RelayNs     float64 `json:"relay_cpu_ns_per_pkt"`
	Background  float64 `json:"background_cpu_pct"`
	CPUNsPerPkt float64 `json:"sys_cpu_ns_per_pkt"`
	P50us       float64 `json:"latency_p50_us"`
	P99us       float64 `json:"latency_p99_us"`
	Loss        float64 `json:"loss"`
	// RelayForwarding is the relay namespace's forwarding in this
	// variant's runs: "on", "off", or "mixed" when runs differed.
	RelayForwarding string `json:"relay_ns_forwarding,omitempty"`
	// Ratios to direct (medians of per-repeat ratios); 0 when unknown.
	DeliveredRatio float64 `json:"delivered_ratio"`
	CPUNsRatio     float64 `json:"cpu_ns_ratio"`
	P50Ratio       float64 `json:"p50_ratio"`
	P99Ratio       float64 `json:"p99_ratio"`
	// Ratios to routed, the same way.
	RoutedDeliveredRatio float64 `json:"routed_delivered_ratio"`
	RoutedCPUNsRatio     float64 `json:"routed_cpu_ns_ratio"`
	RoutedP50Ratio       float64 `json:"routed_p50_ratio"`
	RoutedP99Ratio       float64 `json:"routed_p99_ratio"`
	// In-place program cost (medians over the runs that measured it; the
	// ratio is the median of per-run ratios).
	XDPNsPerPkt    float64 `json:"xdp_prog_ns_per_pkt,omitempty"`
	PassNsPerPkt   float64 `json:"pass_prog_ns_per_pkt,omitempty"`
	XDPToPassRatio float64 `json:"xdp_to_pass_ratio,omitempty"`
	// KernelForwarded is the median share forwarded by the program.
	KernelForwarded float64 `json:"kernel_forwarded,omitempty"`
}

// CaseResult is every run of one case and the summaries.
type CaseResult struct {
	Case      Case      `json:"case"`
	Runs      []Run     `json:"runs"`
	Summaries []Summary `json:"summary"`
}

// Report is what the harness produces.
type Report struct {
	Started     time.Time         `json:"started"`
	Kernel      string            `json:"kernel"`
	CPUs        int               `json:"cpus"`
	Duration    float64           `json:"duration_s"`
	Warmup      float64           `json:"warmup_s"`
	Repeats     int               `json:"repeats"`
	Variants    []string          `json:"variants"`
	Command     string            `json:"command,omitempty"`
	Notes       []string          `json:"notes,omitempty"`
	Cases       []CaseResult      `json:"cases"`
	Unavailable map[string]string `json:"unavailable,omitempty"`
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ratio(a, b float64) (float64, bool) {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return 0, false
	}
	return a / b, true
}

// baselineRatios collects, per run, the ratios of a run to the baseline
// run of the same repeat.
type baselineRatios struct {
	base                    map[int]Run
	delivered, ns, p50, p99 []float64
}

func newBaselineRatios(runs []Run, variant string) *baselineRatios {
	b := &baselineRatios{base: map[int]Run{}}
	for _, r := range runs {
		if r.Variant == variant && r.Error == "" {
			b.base[r.Repeat] = r
		}
	}
	return b
}

func (b *baselineRatios) add(r Run) {
	d, ok := b.base[r.Repeat]
	if !ok {
		return
	}
	if x, ok := ratio(r.DeliveredPPS, d.DeliveredPPS); ok {
		b.delivered = append(b.delivered, x)
	}
	if x, ok := ratio(r.SysCPUNsPerPkt, d.SysCPUNsPerPkt); ok {
		b.ns = append(b.ns, x)
	}
	if x, ok := ratio(r.P50us, d.P50us); ok {
		b.p50 = append(b.p50, x)
	}
	if x, ok := ratio(r.P99us, d.P99us); ok {
		b.p99 = append(b.p99, x)
	}
}

// Summarize computes the summaries of cr from its runs. unavailable maps a
// variant to the reason it could not run.
func (cr *CaseResult) Summarize(variants []string, unavailable map[string]string) {
	cr.Summaries = cr.Summaries[:0]
	for _, v := range variants {
		s := Summary{Variant: v, Available: true}
		if why, ok := unavailable[v]; ok {
			s.Available = false
			s.Reason = why
		}
		direct, routed := newBaselineRatios(cr.Runs, VariantDirect), newBaselineRatios(cr.Runs, VariantRouted)
		var bg, off, del, rcpu, rns, ns, p50, p99, loss, xdpNs, passNs, xdpPass, kfwd []float64
		fwd := map[string]bool{}
		for _, r := range cr.Runs {
			if r.Variant != v || r.Error != "" {
				continue
			}
			s.Runs++
			off = append(off, r.OfferedPPS)
			del = append(del, r.DeliveredPPS)
			rcpu = append(rcpu, r.RelayCPUPct)
			rns = append(rns, r.RelayNsPerPkt)
			bg = append(bg, r.BackgroundCPUPct)
			ns = append(ns, r.SysCPUNsPerPkt)
			p50 = append(p50, r.P50us)
			p99 = append(p99, r.P99us)
			loss = append(loss, r.Loss)
			fwd[r.Forwarding()] = true
			if r.XDPRuns > 0 {
				xdpNs = append(xdpNs, r.XDPNsPerPkt)
			}
			if r.PassRuns > 0 {
				passNs = append(passNs, r.PassNsPerPkt)
			}
			if r.XDPToPassRatio > 0 {
				xdpPass = append(xdpPass, r.XDPToPassRatio)
			}
			if r.KernelForwarded > 0 {
				kfwd = append(kfwd, r.KernelForwarded)
			}
			direct.add(r)
			routed.add(r)
		}
		if s.Runs == 0 && s.Available {
			for _, r := range cr.Runs {
				if r.Variant == v && r.Error != "" {
					s.Reason = r.Error
				}
			}
		}
		switch len(fwd) {
		case 0:
		case 1:
			for w := range fwd {
				s.RelayForwarding = w
			}
		default:
			s.RelayForwarding = "mixed"
		}
		s.Offered, s.Delivered, s.RelayCPU, s.RelayNs, s.Background = median(off), median(del), median(rcpu), median(rns), median(bg)
		s.CPUNsPerPkt, s.P50us, s.P99us, s.Loss = median(ns), median(p50), median(p99), median(loss)
		s.DeliveredRatio, s.CPUNsRatio, s.P50Ratio, s.P99Ratio = median(direct.delivered), median(direct.ns), median(direct.p50), median(direct.p99)
		s.RoutedDeliveredRatio, s.RoutedCPUNsRatio = median(routed.delivered), median(routed.ns)
		s.RoutedP50Ratio, s.RoutedP99Ratio = median(routed.p50), median(routed.p99)
		s.XDPNsPerPkt, s.PassNsPerPkt, s.XDPToPassRatio = median(xdpNs), median(passNs), median(xdpPass)
		s.KernelForwarded = median(kfwd)
		cr.Summaries = append(cr.Summaries, s)
	}
}

// BarCheck is one "done when" bar for a summary: the measured value, the
// limit, and whether it is met (Known false: not measured).
type BarCheck struct {
	Name    string
	Value   float64
	Limit   float64
	AtLeast bool // the value must be >= Limit (else <=)
	Known   bool
	Met     bool
}

// Bars checks s against the project's bars: delivered and system CPU-ns
// per packet against routed, and the in-place program cost.
func (s Summary) Bars() []BarCheck {
	check := func(name string, v, limit float64, atLeast bool) BarCheck {
		b := BarCheck{Name: name, Value: v, Limit: limit, AtLeast: atLeast, Known: v > 0}
		if b.Known {
			b.Met = (atLeast && v >= limit) || (!atLeast && v <= limit)
		}
		return b
	}
	return []BarCheck{
		check("kernel-forwarded share", s.KernelForwarded, BarKernelForwarded, true),
		check("delivered ÷ routed", s.RoutedDeliveredRatio, BarRoutedDelivered, true),
		check("sys CPU-ns/pkt ÷ routed", s.RoutedCPUNsRatio, BarRoutedCPUNs, false),
		check("xdp prog ns/pkt", s.XDPNsPerPkt, BarXDPNsPerPkt, false),
		check("xdp ÷ pass prog", s.XDPToPassRatio, BarXDPToPass, false),
	}
}

func (b BarCheck) String() string {
	op := "<="
	if b.AtLeast {
		op = ">="
	}
	if !b.Known {
		return fmt.Sprintf("%s not measured (bar %s %g)", b.Name, op, b.Limit)
	}
	verdict := "MISSED"
	if b.Met {
		verdict = "met"
	}
	return fmt.Sprintf("%s %.2f (bar %s %g) %s", b.Name, b.Value, op, b.Limit, verdict)
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteTable writes one table per case: medians over the repeats, ratios
// to direct and to routed, and for xdp the project's bars.
func (r *Report) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "hybridrelay compare: kernel %s, %d CPUs, %gs per run after %gs warm-up, %d repeat(s), variants alternating %s\n",
		r.Kernel, r.CPUs, r.Duration, r.Warmup, r.Repeats, strings.Join(r.Variants, " "))
	fmt.Fprintln(w, "bg CPU % is how busy the host was just before each run without this load (median); high values mean other work disturbed the run")
	fmt.Fprintln(w, "fwd is IP forwarding in the relay namespace during the runs; xdp/pass ns/pkt are the in-place costs of the relay's XDP program and of the trivial XDP_PASS program on the client and peer veths (kernel bpf_stats)")
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	for _, cr := range r.Cases {
		fmt.Fprintf(w, "\n%s — %s\n", cr.Case.Name, cr.Case)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "variant\truns\tfwd\toffered kpps\tdelivered kpps\tx direct\tx routed\trelay CPU %\trelay ns/pkt\tsys CPU ns/pkt\tx direct\tx routed\txdp ns/pkt\tpass ns/pkt\txdp/pass\tp50 us\tp99 us\tloss %\tbg CPU %\t")
		for _, s := range cr.Summaries {
			if !s.Available || s.Runs == 0 {
				why := s.Reason
				if why == "" {
					why = "no successful run"
				}
				fmt.Fprintf(tw, "%s\t%d\t\tunavailable: %s\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\n", s.Variant, s.Runs, oneLine(why, 90))
				continue
			}
			relay, relayNs := fmt.Sprintf("%.0f", s.RelayCPU), fmt.Sprintf("%.0f", s.RelayNs)
			if s.Variant == VariantDirect || s.Variant == VariantRouted {
				relay, relayNs = "-", "-"
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%.1f\t%.1f\t%s\t%s\t%s\t%s\t%.0f\t%s\t%s\t%s\t%s\t%s\t%.0f\t%.0f\t%.2f\t%.0f\t\n",
				s.Variant, s.Runs, s.RelayForwarding, s.Offered/1e3, s.Delivered/1e3, fmtRatio(s.DeliveredRatio), fmtRatio(s.RoutedDeliveredRatio),
				relay, relayNs, s.CPUNsPerPkt, fmtRatio(s.CPUNsRatio), fmtRatio(s.RoutedCPUNsRatio),
				fmtNs(s.XDPNsPerPkt), fmtNs(s.PassNsPerPkt), fmtRatio(s.XDPToPassRatio),
				s.P50us, s.P99us, s.Loss*100, s.Background)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		for _, s := range cr.Summaries {
			if s.Variant != "xdp" || s.Runs == 0 {
				continue
			}
			var parts []string
			for _, b := range s.Bars() {
				parts = append(parts, b.String())
			}
			fmt.Fprintf(w, "xdp bars: %s\n", strings.Join(parts, "; "))
		}
	}
	return nil
}

func fmtNs(x float64) string {
	if x == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f", x)
}

func fmtRatio(x float64) string {
	if x == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", x)
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n-3] + "..."
	}
	return s
}

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

// VariantDirect is the no-relay baseline: generator to receiver through the
// relay namespace's IP forwarding.
const VariantDirect = "direct"

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
	Error            string  `json:"error,omitempty"`
}

// Summary is the median of a variant's runs in one case, and the median of
// its per-repeat ratios to the direct run of the same repeat.
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
	// Ratios to direct (medians of per-repeat ratios); 0 when unknown.
	DeliveredRatio float64 `json:"delivered_ratio"`
	CPUNsRatio     float64 `json:"cpu_ns_ratio"`
	P50Ratio       float64 `json:"p50_ratio"`
	P99Ratio       float64 `json:"p99_ratio"`
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

// Summarize computes the summaries of cr from its runs. unavailable maps a
// variant to the reason it could not run.
func (cr *CaseResult) Summarize(variants []string, unavailable map[string]string) {
	cr.Summaries = cr.Summaries[:0]
	direct := map[int]Run{}
	for _, r := range cr.Runs {
		if r.Variant == VariantDirect && r.Error == "" {
			direct[r.Repeat] = r
		}
	}
	for _, v := range variants {
		s := Summary{Variant: v, Available: true}
		if why, ok := unavailable[v]; ok {
			s.Available = false
			s.Reason = why
		}
		var bg, off, del, rcpu, rns, ns, p50, p99, loss, rDel, rNs, rP50, rP99 []float64
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
			if d, ok := direct[r.Repeat]; ok {
				if x, ok := ratio(r.DeliveredPPS, d.DeliveredPPS); ok {
					rDel = append(rDel, x)
				}
				if x, ok := ratio(r.SysCPUNsPerPkt, d.SysCPUNsPerPkt); ok {
					rNs = append(rNs, x)
				}
				if x, ok := ratio(r.P50us, d.P50us); ok {
					rP50 = append(rP50, x)
				}
				if x, ok := ratio(r.P99us, d.P99us); ok {
					rP99 = append(rP99, x)
				}
			}
		}
		if s.Runs == 0 && s.Available {
			for _, r := range cr.Runs {
				if r.Variant == v && r.Error != "" {
					s.Reason = r.Error
				}
			}
		}
		s.Offered, s.Delivered, s.RelayCPU, s.RelayNs, s.Background = median(off), median(del), median(rcpu), median(rns), median(bg)
		s.CPUNsPerPkt, s.P50us, s.P99us, s.Loss = median(ns), median(p50), median(p99), median(loss)
		s.DeliveredRatio, s.CPUNsRatio, s.P50Ratio, s.P99Ratio = median(rDel), median(rNs), median(rP50), median(rP99)
		cr.Summaries = append(cr.Summaries, s)
	}
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteTable writes one table per case: medians over the repeats, ratios
// to direct in brackets.
func (r *Report) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "hybridrelay compare: kernel %s, %d CPUs, %gs per run after %gs warm-up, %d repeat(s), variants alternating %s\n",
		r.Kernel, r.CPUs, r.Duration, r.Warmup, r.Repeats, strings.Join(r.Variants, " "))
	fmt.Fprintln(w, "bg CPU % is how busy the host was just before each run without this load (median); high values mean other work disturbed the run")
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	for _, cr := range r.Cases {
		fmt.Fprintf(w, "\n%s — %s\n", cr.Case.Name, cr.Case)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "variant\truns\toffered kpps\tdelivered kpps\tx direct\trelay CPU %\trelay ns/pkt\tsys CPU ns/pkt\tx direct\tp50 us\tp99 us\tloss %\tbg CPU %\t")
		for _, s := range cr.Summaries {
			if !s.Available || s.Runs == 0 {
				why := s.Reason
				if why == "" {
					why = "no successful run"
				}
				fmt.Fprintf(tw, "%s\t%d\tunavailable: %s\t\t\t\t\t\t\t\t\t\t\t\n", s.Variant, s.Runs, oneLine(why, 90))
				continue
			}
			relay, relayNs := fmt.Sprintf("%.0f", s.RelayCPU), fmt.Sprintf("%.0f", s.RelayNs)
			if s.Variant == VariantDirect {
				relay, relayNs = "-", "-"
			}
			fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.1f\t%s\t%s\t%s\t%.0f\t%s\t%.0f\t%.0f\t%.2f\t%.0f\t\n",
				s.Variant, s.Runs, s.Offered/1e3, s.Delivered/1e3, fmtRatio(s.DeliveredRatio), relay, relayNs,
				s.CPUNsPerPkt, fmtRatio(s.CPUNsRatio), s.P50us, s.P99us, s.Loss*100, s.Background)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
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

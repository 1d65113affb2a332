package bench

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"io"
	"math"
	"strings"
	"testing"
)

func sampleReport() *Report {
	cr := CaseResult{Case: Case{Name: "flood-120-c2p-v4", Flows: 1, Size: 120, Direction: ClientToPeer}}
	// Two repeats; ratios are taken per repeat then the median.
	for rep, d := range []float64{700e3, 600e3} {
		cr.Runs = append(cr.Runs,
			Run{Variant: VariantDirect, Repeat: rep, OfferedPPS: d, DeliveredPPS: d, SysCPUNsPerPkt: 2000, P50us: 100, P99us: 200},
			Run{Variant: "plain", Repeat: rep, OfferedPPS: d, DeliveredPPS: d / 4, SysCPUNsPerPkt: 8000, RelayCPUPct: 100, P50us: 300, P99us: 900},
			Run{Variant: "gso", Repeat: rep, OfferedPPS: d, DeliveredPPS: d * 0.7, SysCPUNsPerPkt: 3000, RelayCPUPct: 90, P50us: 200, P99us: 400},
			// routed: 0.25 of direct's pps at twice its CPU-ns.
			Run{Variant: VariantRouted, Repeat: rep, OfferedPPS: d, DeliveredPPS: d / 4, SysCPUNsPerPkt: 4000, P50us: 150, P99us: 300,
				RelayForwardingV4: true, RelayForwardingV6: true, PassRuns: 1000, PassNsPerPkt: 40},
		)
	}
	// xdp: repeat 0 delivers 0.96 of routed at 1.05x its CPU-ns, 120
	// ns/pkt, 2.5x pass; repeat 1 delivers 0.9 of routed at 1.2x, 200
	// ns/pkt, 5x pass. Medians: 0.93, 1.125, 160 ns, 3.75x.
	cr.Runs = append(cr.Runs,
		Run{Variant: "xdp", Repeat: 0, KernelForwarded: 0.97, OfferedPPS: 700e3, DeliveredPPS: 700e3 / 4 * 0.96, SysCPUNsPerPkt: 4200, P50us: 150, P99us: 300,
			XDPRuns: 1000, XDPNsPerPkt: 120, PassRuns: 1000, PassNsPerPkt: 48, XDPToPassRatio: 2.5},
		Run{Variant: "xdp", Repeat: 1, KernelForwarded: 0.99, OfferedPPS: 600e3, DeliveredPPS: 600e3 / 4 * 0.9, SysCPUNsPerPkt: 4800, P50us: 150, P99us: 300,
			XDPRuns: 1000, XDPNsPerPkt: 200, PassRuns: 1000, PassNsPerPkt: 40, XDPToPassRatio: 5, RelayForwardingV4: true},
	)
	cr.Runs = append(cr.Runs, Run{Variant: "gso", Repeat: 2, Error: "nothing delivered"})
	unavail := map[string]string{"auto": "binary lacks auto"}
	variants := []string{VariantDirect, VariantRouted, "plain", "gso", "xdp", "auto"}
	cr.Summarize(variants, unavail)
	return &Report{Kernel: "6.18", CPUs: 2, Duration: 5, Warmup: 1, Repeats: 2, Variants: variants, Unavailable: unavail, Cases: []CaseResult{cr}}
}

func TestSummarize(t *testing.T) {
	r := sampleReport()
	got := map[string]Summary{}
	for _, s := range r.Cases[0].Summaries {
		got[s.Variant] = s
	}
	tests := []struct {
		variant          string
		runs             int
		delivered, ratio float64
		cpuRatio         float64
		available        bool
	}{
		{VariantDirect, 2, 650e3, 1, 1, true},
		{"plain", 2, 162.5e3, 0.25, 4, true},
		{"gso", 2, 455e3, 0.7, 1.5, true}, // the failed run is not a sample
		{"auto", 0, 0, 0, 0, false},
	}
	for _, tt := range tests {
		s := got[tt.variant]
		if s.Runs != tt.runs || s.Available != tt.available || !near(s.Delivered, tt.delivered) || !near(s.DeliveredRatio, tt.ratio) || !near(s.CPUNsRatio, tt.cpuRatio) {
			t.Errorf("%s: %+v", tt.variant, s)
		}
	}
	if got["auto"].Reason != "binary lacks auto" {
		t.Errorf("auto reason %q", got["auto"].Reason)
	}
	// Ratios to routed, per repeat then the median.
	routedTests := []struct {
		variant                  string
		delivered, cpu, p50, p99 float64
		forwarding               string
	}{
		{VariantRouted, 1, 1, 1, 1, "on"},
		{"plain", 1, 2, 2, 3, "off"},
		{"gso", 2.8, 0.75, 200.0 / 150, 400.0 / 300, "off"},
		{"xdp", 0.93, 1.125, 1, 1, "mixed"},
	}
	for _, tt := range routedTests {
		s := got[tt.variant]
		if !near(s.RoutedDeliveredRatio, tt.delivered) || !near(s.RoutedCPUNsRatio, tt.cpu) || !near(s.RoutedP50Ratio, tt.p50) ||
			!near(s.RoutedP99Ratio, tt.p99) || s.RelayForwarding != tt.forwarding {
			t.Errorf("%s against routed: %+v", tt.variant, s)
		}
	}
	x := got["xdp"]
	if !near(x.XDPNsPerPkt, 160) || !near(x.PassNsPerPkt, 44) || !near(x.XDPToPassRatio, 3.75) {
		t.Errorf("xdp in-place cost: %+v", x)
	}
	// Runs without a measurement are not samples of the program cost.
	if r := got[VariantRouted]; r.XDPNsPerPkt != 0 || r.XDPToPassRatio != 0 || !near(r.PassNsPerPkt, 40) {
		t.Errorf("routed in-place cost: %+v", r)
	}
}

func TestBars(t *testing.T) {
	tests := []struct {
		name string
		s    Summary
		want []bool // met, per bar; known is want != nil entry
	}{
		{"all met at the limits", Summary{KernelForwarded: 0.99, RoutedDeliveredRatio: 0.95, RoutedCPUNsRatio: 1.1, XDPNsPerPkt: 150, XDPToPassRatio: 3}, []bool{true, true, true, true, true}},
		{"all missed", Summary{KernelForwarded: 0.989, RoutedDeliveredRatio: 0.94, RoutedCPUNsRatio: 1.11, XDPNsPerPkt: 151, XDPToPassRatio: 3.01}, []bool{false, false, false, false, false}},
	}
	for _, tt := range tests {
		bars := tt.s.Bars()
		if len(bars) != 5 {
			t.Fatalf("%d bars", len(bars))
		}
		for i, b := range bars {
			if !b.Known || b.Met != tt.want[i] {
				t.Errorf("%s: %s", tt.name, b)
			}
		}
	}
	for _, b := range (Summary{}).Bars() {
		if b.Known || b.Met || !strings.Contains(b.String(), "not measured") {
			t.Errorf("unmeasured: %+v %s", b, b)
		}
	}
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

func TestReportOutputs(t *testing.T) {
	r := sampleReport()
	var tbl bytes.Buffer
	if err := r.WriteTable(&tbl); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"flood-120-c2p-v4", "direct", "routed", "plain", "0.25", "4.00", "unavailable: binary lacks auto",
		"x routed", "xdp ns/pkt", "pass ns/pkt", "xdp/pass", "3.75",
		"xdp bars: kernel-forwarded share 0.98 (bar >= 0.99) MISSED; delivered ÷ routed 0.93 (bar >= 0.95) MISSED; sys CPU-ns/pkt ÷ routed 1.12 (bar <= 1.1) MISSED; xdp prog ns/pkt 160.00 (bar <= 150) MISSED; xdp ÷ pass prog 3.75 (bar <= 3) MISSED"} {
		if !strings.Contains(tbl.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, tbl.String())
		}
	}
	var js bytes.Buffer
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || len(back.Cases) != 1 || len(back.Cases[0].Summaries) != 6 ||
		back.Cases[0].Summaries[4].RoutedDeliveredRatio != r.Cases[0].Summaries[4].RoutedDeliveredRatio {
		t.Fatalf("json round trip: %v %+v", err, back)
	}
	var svg bytes.Buffer
	if err := r.WriteSVG(&svg); err != nil {
		t.Fatal(err)
	}
	// Well-formed XML with one bar per available variant and panel.
	dec := xml.NewDecoder(&svg)
	rects := 0
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("svg is not well-formed: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "rect" {
			rects++
		}
	}
	// background + 6 legend swatches + 2 panels x 5 available variants
	if rects != 1+6+10 {
		t.Fatalf("%d rects in the svg", rects)
	}
}

func TestStandardCases(t *testing.T) {
	cs := StandardCases(500)
	o := Options{Cases: cs, Datapaths: []string{"gso"}}
	if err := o.defaults(); err != nil {
		t.Fatal(err)
	}
	if len(cs) != 10 || cs[len(cs)-1].Flows != 500 || cs[len(cs)-1].Rate != 50 || cs[len(cs)-1].Size != 1000 {
		t.Fatalf("%+v", cs)
	}
	for _, base := range []string{VariantDirect, VariantRouted} {
		bad := Options{Cases: cs, Datapaths: []string{base}}
		if err := bad.defaults(); err == nil {
			t.Fatalf("%s accepted as a datapath", base)
		}
	}
}

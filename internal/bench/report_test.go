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
		)
	}
	cr.Runs = append(cr.Runs, Run{Variant: "gso", Repeat: 2, Error: "nothing delivered"})
	unavail := map[string]string{"xdp": "binary lacks xdp"}
	variants := []string{VariantDirect, "plain", "gso", "xdp"}
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
		{"xdp", 0, 0, 0, 0, false},
	}
	for _, tt := range tests {
		s := got[tt.variant]
		if s.Runs != tt.runs || s.Available != tt.available || !near(s.Delivered, tt.delivered) || !near(s.DeliveredRatio, tt.ratio) || !near(s.CPUNsRatio, tt.cpuRatio) {
			t.Errorf("%s: %+v", tt.variant, s)
		}
	}
	if got["xdp"].Reason != "binary lacks xdp" {
		t.Errorf("xdp reason %q", got["xdp"].Reason)
	}
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

func TestReportOutputs(t *testing.T) {
	r := sampleReport()
	var tbl bytes.Buffer
	if err := r.WriteTable(&tbl); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"flood-120-c2p-v4", "direct", "plain", "0.25", "4.00", "unavailable: binary lacks xdp"} {
		if !strings.Contains(tbl.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, tbl.String())
		}
	}
	var js bytes.Buffer
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || len(back.Cases) != 1 || len(back.Cases[0].Summaries) != 4 {
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
	// background + 4 legend swatches + 2 panels x 3 available variants
	if rects != 1+4+6 {
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
	bad := Options{Cases: cs, Datapaths: []string{"direct"}}
	if err := bad.defaults(); err == nil {
		t.Fatal("direct accepted as a datapath")
	}
}

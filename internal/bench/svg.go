package bench

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"
)

var variantColors = map[string]string{
	VariantDirect: "#7f7f7f",
	VariantRouted: "#ff7f0e",
	"plain":       "#d62728",
	"gso":         "#1f77b4",
	"xdp":         "#2ca02c",
	"auto":        "#9467bd",
}

// WriteSVG draws two bar charts, one above the other: delivered pps and
// system CPU-ns per delivered packet, each as a ratio to direct (medians
// over the repeats), one group of bars per case. Hand-written SVG 1.1, no
// dependencies.
func (r *Report) WriteSVG(w io.Writer) error {
	const (
		barW    = 18
		barGap  = 4
		groupGp = 28
		left    = 60
		right   = 20
		panelH  = 220
		top     = 60
		labelH  = 70
	)
	nv := len(r.Variants)
	groupW := nv*(barW+barGap) + groupGp
	width := left + right + max(1, len(r.Cases))*groupW
	width = max(width, 720)
	height := top + 2*(panelH+labelH) + 20

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="18" font-size="14" font-weight="bold">hybridrelay compare — ratios to direct (medians of %d repeat(s), %gs runs)</text>`+"\n", left, r.Repeats, r.Duration)
	// legend
	x := left
	for _, v := range r.Variants {
		fmt.Fprintf(&b, `<rect x="%d" y="30" width="12" height="12" fill="%s"/><text x="%d" y="40">%s</text>`+"\n", x, colorOf(v), x+16, html.EscapeString(v))
		x += 16 + 8*len(v) + 20
	}
	panels := []struct {
		title string
		get   func(Summary) float64
	}{
		{"delivered pps ÷ direct (higher is better)", func(s Summary) float64 { return s.DeliveredRatio }},
		{"system CPU-ns per delivered packet ÷ direct (lower is better)", func(s Summary) float64 { return s.CPUNsRatio }},
	}
	for p, panel := range panels {
		y0 := top + p*(panelH+labelH) // top of panel
		maxV := 1.0
		for _, cr := range r.Cases {
			for _, s := range cr.Summaries {
				if v := panel.get(s); v > maxV && !math.IsInf(v, 0) {
					maxV = v
				}
			}
		}
		maxV = niceCeil(maxV * 1.05)
		scale := float64(panelH-20) / maxV
		base := y0 + panelH
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="12" font-weight="bold">%s</text>`+"\n", left, y0+8, html.EscapeString(panel.title))
		// axis and grid
		for _, t := range ticks(maxV) {
			yy := float64(base) - t*scale
			fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", left, yy, width-right, yy)
			fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-4, yy+4, trimFloat(t))
		}
		y1 := float64(base) - 1*scale
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#555" stroke-dasharray="4 3"/>`+"\n", left, y1, width-right, y1)
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, base, width-right, base)
		for ci, cr := range r.Cases {
			gx := left + ci*groupW + groupGp/2
			for vi, v := range r.Variants {
				bx := gx + vi*(barW+barGap)
				var s *Summary
				for i := range cr.Summaries {
					if cr.Summaries[i].Variant == v {
						s = &cr.Summaries[i]
					}
				}
				if s == nil || !s.Available || s.Runs == 0 || panel.get(*s) == 0 {
					fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle" fill="#999">n/a</text>`+"\n", bx+barW/2, base-4)
					continue
				}
				val := panel.get(*s)
				h := val * scale
				fmt.Fprintf(&b, `<rect x="%d" y="%.1f" width="%d" height="%.1f" fill="%s"><title>%s %s: %.2f</title></rect>`+"\n",
					bx, float64(base)-h, barW, h, colorOf(v), html.EscapeString(cr.Case.Name), html.EscapeString(v), val)
				fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="middle" font-size="9">%.2f</text>`+"\n", bx+barW/2, float64(base)-h-3, val)
			}
			lx := gx + (nv*(barW+barGap))/2
			fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end" transform="rotate(-30 %d %d)">%s</text>`+"\n", lx, base+14, lx, base+14, html.EscapeString(cr.Case.Name))
		}
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func colorOf(v string) string {
	if c, ok := variantColors[v]; ok {
		return c
	}
	return "#8c564b"
}

// niceCeil rounds up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*e >= v {
			return m * e
		}
	}
	return 10 * e
}

func ticks(maxV float64) []float64 {
	step := niceCeil(maxV / 5)
	var t []float64
	for v := 0.0; v <= maxV+step/1e6; v += step {
		t = append(t, v)
	}
	return t
}

func trimFloat(v float64) string {
	s := fmt.Sprintf("%.2f", v)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s
}

package deploy

import (
	"slices"
	"testing"
)

// FuzzMetricNames: the PromQL metric-name extractor never panics, and a
// name it reports occurs in the expression.
func FuzzMetricNames(f *testing.F) {
	for _, s := range []string{
		`sum by (instance, reason) (rate(hybridrelay_kernel_pass_total{group="misconfiguration"}[5m])) > 10`,
		`histogram_quantile(0.5, sum by (le) (rate(x_bucket{instance=~"$instance"}[5m])))`,
		`{__name__="a", b!~'c\'d'} offset 1h`, "a # b\nc", "{", "(", "`", `a{"b"}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		names, err := metricNames(expr)
		if err != nil {
			return
		}
		if !slices.IsSorted(names) {
			t.Fatalf("%q: names not sorted: %v", expr, names)
		}
		again, _ := metricNames(expr)
		if !slices.Equal(names, again) {
			t.Fatalf("%q: not deterministic", expr)
		}
	})
}

// FuzzParseUnit: the unit file parser never panics.
func FuzzParseUnit(f *testing.F) {
	f.Add([]byte("[Service]\nExecStart=/bin/true \\\n  --x\n# c\n"))
	f.Add([]byte("Key=without section\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		u, err := parseUnit(data)
		if err == nil && u == nil {
			t.Fatal("nil unit without an error")
		}
	})
}

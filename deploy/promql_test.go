package deploy

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// PromQL words that are never metric names (aggregation operators, binary
// set and matching keywords, modifiers, literals).
var promqlKeywords = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true,
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"bool": true, "and": true, "or": true, "unless": true, "atan2": true, "offset": true,
	"inf": true, "nan": true, "start": true, "end": true,
}

// labelListKeywords take a parenthesised list of label names.
var labelListKeywords = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}

// metricNames returns the metric names a PromQL expression selects, sorted
// and unique: identifiers that are not functions (an identifier followed by
// "("), keywords, label names in by/without/on/ignoring/group_* lists or in
// {} matchers, durations or numbers; plus {__name__="..."} matchers. It is
// not a PromQL parser, but it does not need to be one: it errs towards
// reporting a name, so a mistake shows up as a name the server does not
// export. Brackets, strings and comments are skipped whole; unbalanced
// ones are an error.
func metricNames(expr string) ([]string, error) {
	var names []string
	add := func(n string) {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	isIdentStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isIdent := func(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }
	skipString := func(i int) (int, string, error) {
		q := expr[i]
		var b strings.Builder
		for j := i + 1; j < len(expr); j++ {
			switch {
			case expr[j] == '\\' && q != '`':
				j++
				if j < len(expr) {
					b.WriteByte(expr[j])
				}
			case expr[j] == q:
				return j + 1, b.String(), nil
			default:
				b.WriteByte(expr[j])
			}
		}
		return 0, "", fmt.Errorf("unterminated string at %d", i)
	}
	skipSpace := func(i int) int {
		for i < len(expr) && strings.ContainsRune(" \t\r\n", rune(expr[i])) {
			i++
		}
		return i
	}
	depth := 0
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '#': // comment to end of line
			for i < len(expr) && expr[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'' || c == '`':
			j, _, err := skipString(i)
			if err != nil {
				return nil, err
			}
			i = j
		case c == '[': // range or subquery: durations, no names
			j := strings.IndexByte(expr[i:], ']')
			if j < 0 {
				return nil, fmt.Errorf("unterminated [ at %d", i)
			}
			i += j + 1
		case c == '{': // label matchers
			i++
			for {
				i = skipSpace(i)
				if i >= len(expr) {
					return nil, fmt.Errorf("unterminated {")
				}
				if expr[i] == '}' {
					i++
					break
				}
				if expr[i] == ',' {
					i++
					continue
				}
				var label string
				if expr[i] == '"' || expr[i] == '\'' || expr[i] == '`' { // quoted label or metric name
					j, s, err := skipString(i)
					if err != nil {
						return nil, err
					}
					label, i = s, j
					if k := skipSpace(i); k < len(expr) && (expr[k] == ',' || expr[k] == '}') {
						add(label) // {"metric.name"}
						continue
					}
				} else {
					j := i
					for j < len(expr) && isIdent(expr[j]) {
						j++
					}
					if j == i {
						return nil, fmt.Errorf("bad label matcher at %d: %q", i, expr[i:])
					}
					label, i = expr[i:j], j
				}
				i = skipSpace(i)
				op := i
				for i < len(expr) && strings.IndexByte("=!~", expr[i]) >= 0 {
					i++
				}
				if op == i {
					return nil, fmt.Errorf("label %s without a matcher", label)
				}
				i = skipSpace(i)
				if i >= len(expr) || (expr[i] != '"' && expr[i] != '\'' && expr[i] != '`') {
					return nil, fmt.Errorf("label %s: value is not a string", label)
				}
				j, val, err := skipString(i)
				if err != nil {
					return nil, err
				}
				i = j
				if label == "__name__" && expr[op:op+1] == "=" && expr[op+1] != '~' {
					add(val)
				}
			}
		case c >= '0' && c <= '9' || c == '.' && i+1 < len(expr) && expr[i+1] >= '0' && expr[i+1] <= '9':
			// A number or a duration (offset 1h, 1e3, 0x1f).
			for i < len(expr) && (isIdent(expr[i]) || expr[i] == '.') {
				i++
			}
		case isIdentStart(c):
			j := i
			for j < len(expr) && isIdent(expr[j]) {
				j++
			}
			word := expr[i:j]
			k := skipSpace(j)
			switch {
			case labelListKeywords[strings.ToLower(word)]:
				if k < len(expr) && expr[k] == '(' {
					e := strings.IndexByte(expr[k:], ')')
					if e < 0 {
						return nil, fmt.Errorf("unterminated label list after %s", word)
					}
					k += e + 1
				}
				i = k
				continue
			case promqlKeywords[strings.ToLower(word)]:
			case k < len(expr) && expr[k] == '(':
				// a function call
			default:
				add(word)
			}
			i = j
		case c == '(':
			depth++
			i++
		case c == ')':
			depth--
			if depth < 0 {
				return nil, fmt.Errorf("unbalanced ) at %d", i)
			}
			i++
		default:
			i++
		}
	}
	if depth != 0 {
		return nil, fmt.Errorf("unbalanced parentheses")
	}
	slices.Sort(names)
	return names, nil
}

func TestMetricNames(t *testing.T) {
	tests := []struct {
		expr string
		want []string
		err  bool
	}{
		{expr: `up`, want: []string{"up"}},
		{expr: `rate(hybridrelay_requests_total{method="allocate", result=~"4.."}[5m])`, want: []string{"hybridrelay_requests_total"}},
		{expr: `sum by (instance, reason) (rate(a_total{group="misconfiguration"}[5m])) > 10`, want: []string{"a_total"}},
		{expr: `sum without(reason)(b) / on (instance) group_left(datapath) c`, want: []string{"b", "c"}},
		{expr: `histogram_quantile(0.99, sum by (le) (rate(x_bucket[$__rate_interval])))`, want: []string{"x_bucket"}},
		{expr: `a and on (instance) (b > 0) unless ignoring(x) c or d offset 1h`, want: []string{"a", "b", "c", "d"}},
		{expr: `rate(a[1h] offset 1h) > 3 * rate(a[5m:1m])`, want: []string{"a"}},
		{expr: `{__name__="by_name", job="x"}`, want: []string{"by_name"}},
		{expr: `count(x{a="}", b='{'}) # by (y) not a name`, want: []string{"x"}},
		{expr: `topk(5, rec:rate5m) * 1e3 + .5 - 0x1f`, want: []string{"rec:rate5m"}},
		{expr: `label_values(hybridrelay_up, instance)`, want: []string{"hybridrelay_up", "instance"}},
		{expr: `sum(a`, err: true},
		{expr: `a{b="c}`, err: true},
		{expr: `a{b}`, err: true},
		{expr: `rate(a[5m)`, err: true},
	}
	for _, tt := range tests {
		got, err := metricNames(tt.expr)
		if (err != nil) != tt.err || !tt.err && !slices.Equal(got, tt.want) {
			t.Errorf("metricNames(%q) = %v, %v; want %v (error %v)", tt.expr, got, err, tt.want, tt.err)
		}
	}
}

package deploy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"sigs.k8s.io/yaml"

	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/internal/privtest"
)

// ruleFile is Prometheus's rule file format, decoded strictly.
type ruleFile struct {
	Groups []struct {
		Name     string `json:"name"`
		Interval string `json:"interval,omitempty"`
		Rules    []struct {
			Alert         string            `json:"alert,omitempty"`
			Record        string            `json:"record,omitempty"`
			Expr          string            `json:"expr"`
			For           string            `json:"for,omitempty"`
			KeepFiringFor string            `json:"keep_firing_for,omitempty"`
			Labels        map[string]string `json:"labels,omitempty"`
			Annotations   map[string]string `json:"annotations,omitempty"`
		} `json:"rules"`
	} `json:"groups"`
}

// prometheusOwn are series Prometheus makes itself for every target.
var prometheusOwn = []string{"up"}

// query is one PromQL expression and where it comes from.
type query struct{ where, expr string }

// alertQueries reads deploy/prometheus/*.yaml and checks the rules' shape.
func alertQueries(t *testing.T) []query {
	t.Helper()
	data, err := os.ReadFile("prometheus/hybridrelay-rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.UnmarshalStrict(data, &rf); err != nil {
		t.Fatalf("rules: %v", err)
	}
	var qs []query
	alerts := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" {
				t.Errorf("group %s: a rule without alert or expr", g.Name)
				continue
			}
			alerts[r.Alert] = true
			if _, err := time.ParseDuration(r.For); r.For != "" && err != nil {
				t.Errorf("%s: for %q: %v", r.Alert, r.For, err)
			}
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("%s: needs labels.severity and annotations.summary", r.Alert)
			}
			qs = append(qs, query{"alert " + r.Alert, r.Expr})
		}
	}
	// What the deployment promises to alert on.
	for _, a := range []string{"HybridrelayKernelPathNotForwarding", "HybridrelayKernelPathMisconfigured", "HybridrelayAuthFailureSpike",
		"HybridrelayAllocationsNearQuota", "HybridrelayReceiveDrops"} {
		if !alerts[a] {
			t.Errorf("no alert %s", a)
		}
	}
	return qs
}

// grafanaVars are Grafana's interval variables, replaced by a duration so
// the expression is PromQL.
var grafanaVars = regexp.MustCompile(`\$__(rate_interval|interval|range)`)

// dashboardQueries walks the dashboard JSON for every target expression
// and the template variables' label_values queries.
func dashboardQueries(t *testing.T) []query {
	t.Helper()
	data, err := os.ReadFile("grafana/hybridrelay.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title      string `json:"title"`
		UID        string `json:"uid"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID      int    `json:"id"`
			Title   string `json:"title"`
			Targets []struct {
				Expr  string `json:"expr"`
				RefID string `json:"refId"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	if dash.UID == "" || len(dash.Panels) == 0 {
		t.Fatal("dashboard has no uid or no panels")
	}
	var qs []query
	ids := map[int]bool{}
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			qs = append(qs, query{"panel " + p.Title, grafanaVars.ReplaceAllString(tg.Expr, "5m")})
		}
	}
	labelValues := regexp.MustCompile(`^label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\)$`)
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q string
		switch x := v.Query.(type) {
		case string:
			q = x
		case map[string]any:
			q, _ = x["query"].(string)
		}
		m := labelValues.FindStringSubmatch(q)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(SELECTOR, LABEL)", v.Name, q)
			continue
		}
		qs = append(qs, query{"variable " + v.Name, m[1]})
	}
	return qs
}

// usedMetrics parses every query and returns metric name -> where.
func usedMetrics(t *testing.T, qs []query) map[string][]string {
	t.Helper()
	used := map[string][]string{}
	for _, q := range qs {
		names, err := metricNames(q.expr)
		if err != nil {
			t.Errorf("%s: %v in %q", q.where, err, q.expr)
			continue
		}
		if len(names) == 0 {
			t.Errorf("%s: no metric in %q", q.where, q.expr)
		}
		for _, n := range names {
			used[n] = append(used[n], q.where)
		}
	}
	return used
}

// TestDashboardAndAlertsParse runs everywhere: every query parses and
// names at least one metric of hybridrelay's namespace or Prometheus's.
func TestDashboardAndAlertsParse(t *testing.T) {
	used := usedMetrics(t, append(alertQueries(t), dashboardQueries(t)...))
	for n, where := range used {
		if !strings.HasPrefix(n, "hybridrelay_") && !strings.HasPrefix(n, "go_") && !strings.HasPrefix(n, "process_") && !slices.Contains(prometheusOwn, n) {
			t.Errorf("%s (used by %v) is not a hybridrelay, Go runtime, process or Prometheus metric", n, where)
		}
	}
}

// TestDashboardAndAlertsMetricsExported runs the static binary with the
// kernel path (xdp) in a network namespace, makes it answer a Binding and
// an Allocate, scrapes /metrics and checks that every metric the dashboard
// and the alert rules use is among the exported series.
func TestDashboardAndAlertsMetricsExported(t *testing.T) {
	privtest.Need(t, "ip", "ethtool", "ping")
	used := usedMetrics(t, append(alertQueries(t), dashboardQueries(t)...))
	topo, err := netns.NewTopology()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { topo.Close() })
	ml := topo.RelayClientV4.String() + ":9641"
	dir := t.TempDir()
	cmd := topo.Relay.Exec(staticBinary(t), "serve", "--listen", "udp://"+topo.RelayClientV4.String()+":3478",
		"--relay-ip", topo.RelayPeerV4.String(), "--user", "u:p", "--datapath", "xdp",
		"--bpffs", fmt.Sprintf("/sys/fs/bpf/hrtest-%d-deploy", os.Getpid()), "--admin-socket", dir+"/admin.sock",
		"--metrics-listen", ml)
	get := func(ctx context.Context, url string) (int, string) { return getInNS(ctx, topo.Relay, url) }
	d := runServe(t, cmd, nil, ml, "", get)
	if !strings.Contains(d.log(), "datapath=xdp") {
		t.Fatalf("serve did not start the kernel path:\n%s", d.log())
	}
	// One Binding and one Allocate (answered 401) from the client.
	var c net.Conn
	if err := topo.Client.Do(func() (err error) {
		c, err = net.Dial("udp4", topo.RelayClientV4.String()+":3478")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, m := range []*stun.Message{stun.MustBuild(stun.TransactionID, stun.BindingRequest),
		stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest),
			stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{17, 0, 0, 0}})} {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write(m.Raw)
		if _, err := c.Read(make([]byte, 1500)); err != nil {
			t.Fatalf("no answer from serve: %v", err)
		}
	}
	code, body := get(context.Background(), "http://"+ml+"/metrics")
	if code != 200 {
		t.Fatalf("scrape: %d %s", code, body)
	}
	exported := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<16), 1<<22)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name := line
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name = line[:i]
		}
		exported[name] = true
	}
	for _, n := range prometheusOwn {
		exported[n] = true
	}
	for n, where := range used {
		if !exported[n] {
			t.Errorf("%s (used by %v) is not exported by a running relay", n, where)
		}
	}
	for _, want := range []string{"hybridrelay_kernel_pass_total", "hybridrelay_draining"} {
		if !exported[want] {
			t.Errorf("the scrape lacks %s: the check ran against the wrong datapath", want)
		}
	}
}

// getInNS fetches url from inside ns.
func getInNS(ctx context.Context, ns *netns.NS, url string) (int, string) {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			var err error
			c, err = (&net.Dialer{Timeout: 3 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err.Error()
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

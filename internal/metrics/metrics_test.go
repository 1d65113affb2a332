package metrics

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/hybridrelay/hybridrelay/internal/admin"
	"github.com/hybridrelay/hybridrelay/pkg/control"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// TestScrape runs a real control server on loopback, makes it count a
// Binding and an authentication failure, then scrapes the endpoint over
// HTTP and parses the exposition format.
func TestScrape(t *testing.T) {
	dp := dataplane.NewPlain()
	cfg := control.DefaultConfig()
	cfg.Listeners = []control.ListenerSpec{{Network: "udp", Addr: netip.MustParseAddrPort("127.0.0.1:0")}}
	cfg.RelayIPs = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	cfg.Users = map[string]string{"alice": "right"}
	srv, err := control.NewServer(cfg, control.Options{Datapath: dp})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Close(); dp.Close() }()

	snap := func() (admin.Snapshot, error) {
		st := srv.Stats()
		d := dp.Stats()
		return admin.Snapshot{Time: time.Now(), Datapath: dp.Name(), Server: &st, Dataplane: &d}, nil
	}
	m, err := Listen("127.0.0.1:0", snap, Health{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	// One Binding, one Allocate without credentials (401, the normal first
	// step), one with a wrong password.
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(srv.Addrs()[0].Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip := func(m *stun.Message) *stun.Message {
		t.Helper()
		buf := make([]byte, 1500)
		for i := 0; i < 5; i++ {
			c.Write(m.Raw)
			c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			n, err := c.Read(buf)
			if err != nil {
				continue
			}
			res := &stun.Message{Raw: buf[:n]}
			if err := res.Decode(); err != nil {
				t.Fatal(err)
			}
			return res
		}
		t.Fatal("no answer")
		return nil
	}
	roundTrip(stun.MustBuild(stun.TransactionID, stun.BindingRequest))
	allocType := stun.NewType(stun.MethodAllocate, stun.ClassRequest)
	transport := stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{17, 0, 0, 0}}
	res := roundTrip(stun.MustBuild(stun.TransactionID, allocType, transport))
	var nonce stun.Nonce
	var realm stun.Realm
	if nonce.GetFrom(res) != nil || realm.GetFrom(res) != nil {
		t.Fatalf("no nonce/realm in %v", res)
	}
	roundTrip(stun.MustBuild(stun.TransactionID, allocType, transport, stun.NewUsername("alice"), realm, nonce,
		stun.NewLongTermIntegrity("alice", realm.String(), "wrong"), stun.Fingerprint))

	// The server counts a request after answering it, so the last answer
	// may arrive before its count: scrape until the counts settle.
	var body []byte
	var fams map[string]*dto.MetricFamily
	scrape := func() {
		t.Helper()
		resp, err := http.Get("http://" + m.Addr().String() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		body, _ = io.ReadAll(resp.Body)
		parser := expfmt.NewTextParser(model.UTF8Validation)
		fams, err = parser.TextToMetricFamilies(strings.NewReader(string(body)))
		if err != nil {
			t.Fatalf("parse exposition: %v\n%s", err, body)
		}
	}
	for deadline := time.Now().Add(3 * time.Second); ; {
		scrape()
		if strings.Contains(string(body), `hybridrelay_requests_total{method="allocate",result="401"} 2`) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	value := func(name string, labels map[string]string) (float64, bool) {
		f, ok := fams[name]
		if !ok {
			return 0, false
		}
	metrics:
		for _, m := range f.Metric {
			have := map[string]string{}
			for _, l := range m.Label {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue metrics
				}
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				return m.Counter.GetValue(), true
			case dto.MetricType_GAUGE:
				return m.Gauge.GetValue(), true
			case dto.MetricType_HISTOGRAM:
				return float64(m.Histogram.GetSampleCount()), true
			}
		}
		return 0, false
	}
	tests := []struct {
		name   string
		labels map[string]string
		min    float64
		max    float64
	}{
		{"hybridrelay_up", map[string]string{"datapath": "plain"}, 1, 1},
		{"hybridrelay_allocations", nil, 0, 0},
		{"hybridrelay_requests_total", map[string]string{"method": "binding", "result": "ok"}, 1, 1},
		{"hybridrelay_requests_total", map[string]string{"method": "allocate", "result": "401"}, 2, 2},
		{"hybridrelay_relayed_packets_total", map[string]string{"datapath": "plain", "direction": "to_peer"}, 0, 0},
		{"hybridrelay_rx_batch_size", map[string]string{"datapath": "plain"}, 3, 100},
		{"hybridrelay_dataplane_total", map[string]string{"datapath": "plain", "counter": "rx_packets"}, 3, 100},
		{"hybridrelay_scrape_errors_total", nil, 0, 0},
	}
	for _, tt := range tests {
		v, ok := value(tt.name, tt.labels)
		if !ok || v < tt.min || v > tt.max {
			t.Errorf("%s%v = %v (present %v), want %v..%v\n%s", tt.name, tt.labels, v, ok, tt.min, tt.max, body)
		}
	}
	// The wrong password is an authentication failure under some reason
	// (the missing-credentials 401 under another).
	var failures float64
	for _, m := range fams["hybridrelay_auth_failures_total"].GetMetric() {
		failures += m.Counter.GetValue()
	}
	if failures < 2 {
		t.Errorf("auth failures %v, want >= 2:\n%s", failures, body)
	}
	// No label may carry a username.
	if strings.Contains(string(body), "alice") {
		t.Error("a username appears in the metrics")
	}
}

// TestKernelPassGroups: every pass_* counter is exported under its reason
// with the group that says whether it is normal or a misconfiguration.
func TestKernelPassGroups(t *testing.T) {
	snap := func() (admin.Snapshot, error) {
		return admin.Snapshot{Time: time.Now(), Datapath: "xdp", Kernel: &admin.Kernel{Source: "daemon",
			Counters: map[string]uint64{"fwd_to_peer_packets": 5, "pass_no_entry": 3, "pass_local": 4,
				"pass_no_route": 2, "pass_link_down": 1, "pass_no_nexthop": 6, "pass_from_the_future": 8,
				"drop_prefilter_not_turn": 70, "drop_prefilter_channeldata_length": 9}}}, nil
	}
	srv := httptest.NewServer(Handler(snap, nil))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`hybridrelay_kernel_pass_total{group="normal",reason="no_entry"} 3`,
		`hybridrelay_kernel_pass_total{group="normal",reason="local"} 4`,
		`hybridrelay_kernel_pass_total{group="misconfiguration",reason="no_route"} 2`,
		`hybridrelay_kernel_pass_total{group="misconfiguration",reason="link_down"} 1`,
		`hybridrelay_kernel_pass_total{group="other",reason="no_nexthop"} 6`,
		`hybridrelay_kernel_pass_total{group="other",reason="from_the_future"} 8`,
		`hybridrelay_relayed_packets_total{datapath="xdp",direction="to_peer"} 5`,
		`hybridrelay_kernel_prefilter_drops_total{reason="not_turn"} 70`,
		`hybridrelay_kernel_prefilter_drops_total{reason="channeldata_length"} 9`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(string(body), `reason="fwd_to_peer_packets"`) {
		t.Error("a forwarding counter is exported as a pass reason")
	}
	if strings.Contains(string(body), `kernel_pass_total{group="other",reason="prefilter`) {
		t.Error("a pre-filter drop is exported as a pass reason")
	}
}

package metrics

import (
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/admin"
	"github.com/hybridrelay/hybridrelay/pkg/control"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// TestHealthEndpoints runs a real control server and checks /healthz and
// /readyz through its Live and Ready, including readiness turning false
// while draining (and the draining gauge), and both failing after Close.
func TestHealthEndpoints(t *testing.T) {
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
	defer dp.Close()
	snap := func() (admin.Snapshot, error) {
		st := srv.Stats()
		return admin.Snapshot{Time: time.Now(), Datapath: dp.Name(), Server: &st}, nil
	}
	m, err := Listen("127.0.0.1:0", snap, Health{Live: func() error { return srv.Live(2 * time.Second) }, Ready: srv.Ready}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	get := func(method, path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+m.Addr().String()+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	check := func(path string, want int, body string) {
		t.Helper()
		code, got := get(http.MethodGet, path)
		if code != want || !strings.Contains(got, body) {
			t.Errorf("GET %s: %d %q, want %d containing %q", path, code, got, want, body)
		}
	}
	check(PathHealthz, 200, "ok")
	check(PathReadyz, 200, "ok")
	check("/metrics", 200, "hybridrelay_draining 0")
	if code, _ := get(http.MethodPost, PathReadyz); code != http.StatusMethodNotAllowed {
		t.Errorf("POST /readyz: %d", code)
	}
	check("/nope", 404, "")

	srv.SetDraining(true)
	check(PathReadyz, 503, "not ok: draining since")
	check(PathHealthz, 200, "ok") // draining is not a reason to restart
	check("/metrics", 200, "hybridrelay_draining 1")
	srv.SetDraining(false)
	check(PathReadyz, 200, "ok")

	srv.Close()
	check(PathReadyz, 503, "not serving")
	deadline := time.Now().Add(5 * time.Second)
	for {
		if code, _ := get(http.MethodGet, PathHealthz); code == 503 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("/healthz still ok 5 s after the server stopped")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

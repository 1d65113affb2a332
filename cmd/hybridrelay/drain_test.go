package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/internal/admin"
)

// httpGet fetches url and returns status and body.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func altString(a stun.AlternateServer) string {
	ip, _ := netip.AddrFromSlice(a.IP)
	return netip.AddrPortFrom(ip.Unmap(), uint16(a.Port)).String()
}

// TestServeDrain runs the real binary on loopback: /healthz and /readyz,
// `hybridrelay drain` over the admin socket (an Allocate is then answered
// 300 with the configured ALTERNATE-SERVER, signed; the existing allocation
// still refreshes), stats and metrics show it, --undo and SIGUSR1, and the
// alternate list reloaded on SIGHUP.
func TestServeDrain(t *testing.T) {
	port, mport := freePort(t), freePort(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "admin.sock")
	conf := writeTestFile(t, dir, "h.conf", fmt.Sprintf("listen = udp://127.0.0.1:%d\nuser = u:p\nalternate-server = 198.18.7.1:3478\n"+
		"metrics-listen = 127.0.0.1:%d\nadmin-socket = %s\n", port, mport, sock))
	d := startDaemon(t, nil, "--config", conf)
	d.waitLog(t, "metrics endpoint listening", 5*time.Second)
	base := fmt.Sprintf("http://127.0.0.1:%d", mport)
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, body := httpGet(t, base+p); code != 200 || body != "ok\n" {
			t.Fatalf("%s: %d %q", p, code, body)
		}
	}
	existing := dialUDP(t, port)
	if res := allocate(t, existing, "u", "p"); res.Type.Class != stun.ClassSuccessResponse {
		t.Fatalf("allocate before drain: %v", res)
	}

	out, stderr, code := runBinary(t, nil, "drain", "--admin-socket", sock)
	if code != 0 || !strings.Contains(out, "draining since ") || !strings.Contains(out, "1 allocations left; new clients are sent to 198.18.7.1:3478 (300 Try Alternate)") {
		t.Fatalf("drain: exit %d %s\n%s", code, stderr, out)
	}
	if out, _, _ := runBinary(t, nil, "drain", "--admin-socket", sock); !strings.HasPrefix(out, "already draining") {
		t.Errorf("second drain: %s", out)
	}
	res := allocate(t, dialUDP(t, port), "u", "p")
	var ec stun.ErrorCodeAttribute
	var alt stun.AlternateServer
	if ec.GetFrom(res) != nil || ec.Code != stun.CodeTryAlternate || alt.GetFrom(res) != nil ||
		altString(alt) != "198.18.7.1:3478" || !res.Contains(stun.AttrMessageIntegrity) {
		t.Fatalf("Allocate while draining: %v (%v, %v)", res, ec, alt)
	}
	if code, body := httpGet(t, base+"/readyz"); code != 503 || !strings.Contains(body, "draining since") {
		t.Errorf("/readyz while draining: %d %q", code, body)
	}
	if code, _ := httpGet(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz while draining: %d", code)
	}
	_, body := httpGet(t, base+"/metrics")
	for _, want := range []string{"hybridrelay_draining 1", "hybridrelay_allocations 1", `hybridrelay_requests_total{method="allocate",result="300"} 1`, "hybridrelay_max_allocations 10000"} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	out, _, _ = runBinary(t, nil, "stats", "--admin-socket", sock)
	if !strings.Contains(out, "DRAINING since ") || !strings.Contains(out, "1 allocations left; new clients are sent to 198.18.7.1:3478") {
		t.Errorf("stats while draining:\n%s", out)
	}
	// The existing allocation keeps being refreshed.
	refresh := authed(t, existing, "u", "p", stun.NewType(stun.MethodRefresh, stun.ClassRequest))
	if refresh.Type.Class != stun.ClassSuccessResponse {
		t.Errorf("Refresh while draining: %v", refresh)
	}
	// --wait returns once the allocations are gone (here: deleted).
	del := authed(t, existing, "u", "p", stun.NewType(stun.MethodRefresh, stun.ClassRequest), stun.RawAttribute{Type: stun.AttrLifetime, Value: []byte{0, 0, 0, 0}})
	if del.Type.Class != stun.ClassSuccessResponse {
		t.Fatalf("delete: %v", del)
	}
	start := time.Now()
	out, _, code = runBinary(t, nil, "drain", "--admin-socket", sock, "--wait", "20s")
	if code != 0 || !strings.Contains(out, "drained: no allocation left") || time.Since(start) > 10*time.Second {
		t.Errorf("drain --wait: exit %d after %s\n%s", code, time.Since(start), out)
	}

	out, _, code = runBinary(t, nil, "drain", "--undo", "--admin-socket", sock, "--json")
	var ds admin.DrainStatus
	if code != 0 || json.Unmarshal([]byte(out), &ds) != nil || ds.Draining || !ds.Changed {
		t.Fatalf("drain --undo: exit %d %s", code, out)
	}
	if code, _ := httpGet(t, base+"/readyz"); code != 200 {
		t.Errorf("/readyz after undo: %d", code)
	}
	if res := allocate(t, dialUDP(t, port), "u", "p"); res.Type.Class != stun.ClassSuccessResponse {
		t.Fatalf("allocate after undo: %v", res)
	}

	// SIGHUP applies a new alternate list; SIGUSR1 drains.
	writeTestFile(t, dir, "h.conf", fmt.Sprintf("listen = udp://127.0.0.1:%d\nuser = u:p\nalternate-server = 198.18.7.2:3479\n"+
		"metrics-listen = 127.0.0.1:%d\nadmin-socket = %s\n", port, mport, sock))
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLog(t, "reload: alternate servers applied", 5*time.Second)
	if strings.Contains(d.stderr.String(), "only apply after a restart") {
		t.Error("alternate-server reported as needing a restart")
	}
	// The admin-socket drain above logged the same line once already.
	seen := strings.Count(d.stderr.String(), "draining: new allocations are sent")
	d.cmd.Process.Signal(syscall.SIGUSR1)
	d.waitLog(t, "draining: new allocations are sent", 5*time.Second, seen+1)
	res = allocate(t, dialUDP(t, port), "u", "p")
	if alt.GetFrom(res) != nil || altString(alt) != "198.18.7.2:3479" {
		t.Fatalf("after SIGHUP and SIGUSR1: %v", res)
	}
	if code := d.stop(t, syscall.SIGTERM, 15*time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit %d", code)
	}
	// No daemon: drain says so and fails.
	if _, stderr, code := runBinary(t, nil, "drain", "--admin-socket", sock); code != 1 || !strings.Contains(stderr, "no hybridrelay daemon") {
		t.Errorf("drain without daemon: exit %d %s", code, stderr)
	}
	if _, stderr, code := runBinary(t, nil, "drain", "--undo", "--wait", "1s", "--admin-socket", sock); code != 2 {
		t.Errorf("drain --undo --wait: exit %d %s", code, stderr)
	}
}

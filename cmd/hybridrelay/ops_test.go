package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/internal/admin"
	"github.com/hybridrelay/hybridrelay/internal/privtest"
	"github.com/hybridrelay/hybridrelay/pkg/loader"
)

// TestOperatorTools runs serve with its admin socket and metrics endpoint
// and then the operator commands against it, as separate processes.
func TestOperatorTools(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "admin.sock")
	port := freePort(t)
	mport := freePort(t)
	lo, hi := relayRange(t)
	d := startDaemon(t, nil, "--listen", fmt.Sprintf("udp://127.0.0.1:%d", port), "--relay-ip", "127.0.0.1",
		"--min-port", fmt.Sprint(lo), "--max-port", fmt.Sprint(hi), "--user", "carol:pw", "--datapath", "gso",
		"--admin-socket", sock, "--metrics-listen", fmt.Sprintf("127.0.0.1:%d", mport))
	d.waitLog(t, "admin socket listening", 5*time.Second)

	c := dialUDP(t, port)
	res := allocate(t, c, "carol", "pw")
	if res.Type != stun.NewType(stun.MethodAllocate, stun.ClassSuccessResponse) {
		t.Fatalf("allocate: %v", res)
	}

	t.Run("stats", func(t *testing.T) {
		out, stderr, code := runBinary(t, nil, "stats", "--admin-socket", sock)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		for _, want := range []string{"datapath gso", "allocations 1 ", "allocate:", "userspace datapath gso"} {
			if !strings.Contains(out, want) {
				t.Errorf("stats output lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("stats json watch", func(t *testing.T) {
		cmd := []string{"stats", "--admin-socket", sock, "--json", "--watch", "200ms"}
		p := startTool(t, cmd...)
		p.waitLines(t, 3, 20*time.Second)
		out := p.stop(t)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) < 2 {
			t.Fatalf("want several reports, got:\n%s", out)
		}
		var last struct {
			Snapshot admin.Snapshot     `json:"snapshot"`
			Rates    map[string]float64 `json:"rates"`
		}
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil {
			t.Fatal(err)
		}
		if last.Snapshot.Server == nil || last.Snapshot.Server.Allocations != 1 || last.Rates == nil {
			t.Fatalf("last report: %+v", last)
		}
		if _, ok := last.Rates["dataplane.rx_packets"]; !ok {
			t.Fatalf("no rates: %v", last.Rates)
		}
	})
	t.Run("allocations", func(t *testing.T) {
		out, stderr, code := runBinary(t, nil, "maps", "dump", "allocations", "--admin-socket", sock)
		local := c.LocalAddr().String()
		if code != 0 || !strings.Contains(out, "1 allocations") || !strings.Contains(out, `udp `+local+`  user "carol"`) {
			t.Fatalf("exit %d %s:\n%s", code, stderr, out)
		}
		out, _, code = runBinary(t, nil, "maps", "dump", "allocations", "--admin-socket", sock, "--json")
		var allocs []map[string]any
		if code != 0 || json.Unmarshal([]byte(out), &allocs) != nil || len(allocs) != 1 || allocs[0]["username"] != "carol" {
			t.Fatalf("json: %s", out)
		}
	})
	t.Run("channels without xdp", func(t *testing.T) {
		_, stderr, code := runBinary(t, nil, "maps", "dump", "channels", "--admin-socket", sock, "--bpffs", filepath.Join(dir, "nopins"))
		if code != 1 || !strings.Contains(stderr, "without the kernel fast path") {
			t.Fatalf("exit %d: %s", code, stderr)
		}
	})
	t.Run("metrics", func(t *testing.T) {
		wants := []string{"\nhybridrelay_allocations 1\n", `hybridrelay_up{datapath="gso"} 1`, `hybridrelay_requests_total{method="allocate",result="ok"} 1`}
		var body []byte
		// Requests are counted after they are answered: poll briefly.
		for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", mport))
			if err != nil {
				t.Fatal(err)
			}
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			missing := 0
			for _, w := range wants {
				if !strings.Contains(string(body), w) {
					missing++
				}
			}
			if missing == 0 || time.Now().After(deadline) {
				break
			}
		}
		for _, want := range wants {
			if !strings.Contains(string(body), want) {
				t.Errorf("metrics lack %q", want)
			}
		}
		if strings.Contains(string(body), "carol") {
			t.Error("username in metrics")
		}
	})
	if code := d.stop(t, os.Interrupt, 15*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("admin socket left behind: %v", err)
	}
	_, stderr, code := runBinary(t, nil, "maps", "dump", "allocations", "--admin-socket", sock)
	if code != 1 || !strings.Contains(stderr, "no hybridrelay daemon is serving the admin socket") {
		t.Fatalf("after stop: exit %d: %s", code, stderr)
	}
}

// toolProc is a long-running CLI command (stats --watch).
type toolProc struct {
	d *daemonProc
}

func startTool(t *testing.T, args ...string) *toolProc {
	t.Helper()
	d := &daemonProc{stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	d.cmd = execCommand(binary, args...)
	d.cmd.Env = cleanEnv()
	d.cmd.Stdout, d.cmd.Stderr = d.stdout, d.stderr
	d.cmd.WaitDelay = 5 * time.Second
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.err = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			d.cmd.Process.Kill()
			<-d.done
		}
	})
	return &toolProc{d: d}
}

// waitLines waits until the tool printed n lines (the machine may be busy:
// no fixed sleeps).
func (p *toolProc) waitLines(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if strings.Count(p.d.stdout.String(), "\n") >= n {
			return
		}
	}
	t.Fatalf("fewer than %d lines after %s:\n%s\n%s", n, timeout, p.d.stdout.String(), p.d.stderr.String())
}

func (p *toolProc) stop(t *testing.T) string {
	t.Helper()
	if code := p.d.stop(t, os.Interrupt, 5*time.Second); code != 0 {
		t.Fatalf("exit %d: %s", code, p.d.stderr.String())
	}
	return p.d.stdout.String()
}

var (
	lifetimeText = regexp.MustCompile(`\b(\d+m)?\d+s\b`)
	lifetimeJSON = regexp.MustCompile(`"expires_in_seconds": (-?[0-9.e+-]+)`)
)

// normalizeLifetimes replaces remaining lifetimes, which depend on when the
// command ran, by a token after checking they are within [lo, hi] seconds.
func normalizeLifetimes(t *testing.T, out string, lo, hi float64) string {
	t.Helper()
	out = lifetimeText.ReplaceAllStringFunc(out, func(s string) string {
		d, err := time.ParseDuration(s)
		if err != nil || d.Seconds() < lo || d.Seconds() > hi {
			t.Errorf("lifetime %q outside %v..%vs", s, lo, hi)
		}
		return "<10m>" // as wide as 9m10s..10m0s, so columns stay aligned
	})
	return lifetimeJSON.ReplaceAllStringFunc(out, func(s string) string {
		v, err := strconv.ParseFloat(lifetimeJSON.FindStringSubmatch(s)[1], 64)
		if err != nil {
			t.Errorf("bad lifetime %q", s)
		} else if v >= 0 && (v < lo || v > hi) {
			t.Errorf("lifetime %v outside %v..%v", v, lo, hi)
		} else if v < 0 {
			return `"expires_in_seconds": <EXPIRED>`
		}
		return `"expires_in_seconds": <LIFETIME>`
	})
}

// TestMapsDumpGolden pins channels into a test-owned bpffs directory with
// pkg/loader, then runs `maps dump` and `stats` on them with no daemon, and
// compares with golden files.
func TestMapsDumpGolden(t *testing.T) {
	privtest.Need(t)
	pins := fmt.Sprintf("/sys/fs/bpf/hrtest-%d-maps", os.Getpid())
	x, err := loader.Load(loader.Options{MaxChannels: 64, PinDir: pins})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		x.Unpin()
		x.Close()
		os.RemoveAll(pins)
	})
	ap := func(s string) netipAddrPort { return mustAddrPort(s) }
	exp := time.Now().Add(600 * time.Second)
	for _, c := range []loader.Channel{
		{Client: ap("198.18.0.1:40000"), Listener: ap("198.18.0.2:3478"), Relay: ap("198.18.1.2:50000"), Peer: ap("198.18.1.1:9000"), Number: 0x4000, Expires: exp},
		{Client: ap("198.18.0.1:40001"), Listener: ap("198.18.0.2:3478"), Relay: ap("198.18.1.2:50002"), Peer: ap("198.18.1.1:9002"), Number: 0x4fff, Expires: exp, DontFragment: true},
		{Client: ap("[2001:2::1]:40000"), Listener: ap("[2001:2::2]:3478"), Relay: ap("[2001:2:0:1::2]:50004"), Peer: ap("[2001:2:0:1::1]:9004"), Number: 0x4001, Expires: exp},
		{Client: ap("198.18.0.1:40003"), Listener: ap("198.18.0.2:3478"), Relay: ap("198.18.1.2:50006"), Peer: ap("198.18.1.1:9006"), Number: 0x4002, Expires: time.Now().Add(-time.Minute)},
	} {
		if err := x.PutChannel(c); err != nil {
			t.Fatalf("put %v: %v", c, err)
		}
	}
	noDaemon := filepath.Join(t.TempDir(), "admin.sock")
	for _, tt := range []struct {
		golden string
		args   []string
	}{
		{"maps-dump-channels", []string{"maps", "dump", "channels"}},
		{"maps-dump-channels-json", []string{"maps", "dump", "channels", "--json"}},
		{"maps-dump-peers", []string{"maps", "dump", "peers"}},
		{"stats-pinned", []string{"stats"}},
	} {
		t.Run(tt.golden, func(t *testing.T) {
			out, stderr, code := runBinary(t, nil, append(tt.args, "--bpffs", pins, "--admin-socket", noDaemon)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			out = strings.ReplaceAll(normalizeLifetimes(t, out, 550, 600), pins, "<PINDIR>")
			compareGolden(t, filepath.Join("testdata", tt.golden+".golden"), out)
		})
	}

	// Watching the pinned counters keeps reporting, with rates.
	p := startTool(t, "stats", "--bpffs", pins, "--admin-socket", noDaemon, "--json", "--watch", "100ms")
	p.waitLines(t, 3, 20*time.Second)
	lines := strings.Split(strings.TrimSpace(p.stop(t)), "\n")
	var last struct {
		Snapshot admin.Snapshot     `json:"snapshot"`
		Rates    map[string]float64 `json:"rates"`
	}
	if len(lines) < 2 || json.Unmarshal([]byte(lines[len(lines)-1]), &last) != nil ||
		last.Snapshot.Kernel == nil || last.Snapshot.Kernel.Source != "pinned maps" || last.Snapshot.Kernel.Channels != 4 {
		t.Fatalf("stats --watch on pins:\n%s", strings.Join(lines, "\n"))
	}
	if _, ok := last.Rates["kernel.pass_no_entry"]; !ok {
		t.Fatalf("no kernel rates: %v", last.Rates)
	}

	// unpin removes the state for good; afterwards there is nothing to dump.
	out, stderr, code := runBinary(t, nil, "maps", "unpin", "--bpffs", pins, "--admin-socket", noDaemon)
	if code != 0 || out != fmt.Sprintf("removed %s (4 channels, 0 XDP links detached)\n", pins) {
		t.Fatalf("unpin: exit %d %q %s", code, out, stderr)
	}
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		t.Fatalf("%s still exists: %v", pins, err)
	}
	_, stderr, code = runBinary(t, nil, "stats", "--bpffs", pins, "--admin-socket", noDaemon)
	if code != 1 || !strings.Contains(stderr, "no daemon answers on "+noDaemon+" and no pinned hybridrelay maps in "+pins) {
		t.Fatalf("stats after unpin: exit %d: %s", code, stderr)
	}
}

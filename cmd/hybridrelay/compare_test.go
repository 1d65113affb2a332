package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hybridrelay/hybridrelay/internal/bench"
	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/internal/privtest"
)

// TestCompareOptions checks how the flags become cases, and the usage
// errors, without running anything.
func TestCompareOptions(t *testing.T) {
	tests := []struct {
		name      string
		args      []string
		wantCases []string
		wantDP    []string
		wantErr   string
	}{
		{name: "defaults", args: nil, wantDP: []string{"xdp", "gso", "plain"}, wantCases: []string{
			"flood-120B-c2p-v4", "flood-120B-p2c-v4", "flood-1200B-c2p-v4", "flood-1200B-p2c-v4",
			"flood-120B-c2p-v6", "flood-120B-p2c-v6", "flood-1200B-c2p-v6", "flood-1200B-p2c-v6",
			"flows500-50pps-1000B-c2p-v4", "flows500-50pps-1000B-p2c-v4"}},
		{name: "one case", args: []string{"--flows", "1", "--size", "120", "--direction", "peer-to-client", "--family", "ipv6", "--datapaths", "direct,gso"},
			wantDP: []string{"gso"}, wantCases: []string{"flood-120B-p2c-v6"}},
		{name: "many flows", args: []string{"--flows", "700", "--rate", "25", "--flow-size", "200", "--direction", "c2p", "--datapaths", "plain"},
			wantDP: []string{"plain"}, wantCases: []string{"flows700-25pps-200B-c2p-v4"}},
		{name: "bad datapath", args: []string{"--datapaths", "dpdk"}, wantErr: "unknown datapath"},
		{name: "bad size", args: []string{"--size", "10"}, wantErr: "--size"},
		{name: "bad direction", args: []string{"--direction", "up"}, wantErr: "--direction"},
		{name: "bad family", args: []string{"--family", "ipx"}, wantErr: "--family"},
		{name: "zero duration", args: []string{"--duration", "0s"}, wantErr: "--duration"},
		{name: "no datapath", args: []string{"--datapaths", "direct"}, wantErr: "at least one"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var cmd *cli.Command
			for _, c := range commands {
				if c.Name == "compare" {
					cmd = c
				}
			}
			set := flag.NewFlagSet("compare", flag.ContinueOnError)
			for _, f := range cmd.Flags {
				if err := f.Apply(set); err != nil {
					t.Fatal(err)
				}
			}
			if err := set.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			o, err := compareOptions(cli.NewContext(cli.NewApp(), set, nil))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, c := range o.Cases {
				names = append(names, c.Name)
			}
			if strings.Join(names, " ") != strings.Join(tt.wantCases, " ") || strings.Join(o.Datapaths, ",") != strings.Join(tt.wantDP, ",") {
				t.Fatalf("cases %v datapaths %v", names, o.Datapaths)
			}
		})
	}
}

// TestCompareBrief is the CI run of `hybridrelay compare`: the real binary,
// one second per variant, one repeat, direct + routed + plain + gso (+ xdp
// client to peer), both directions (one as a table with a JSON copy, one as
// JSON with a chart). Every variant must deliver, only routed may run with
// the relay namespace forwarding, the in-place program costs must account
// for the delivered packets, and no namespace, relay or bpffs mount may be
// left behind.
func TestCompareBrief(t *testing.T) {
	privtest.Need(t, "ip", "ethtool", "ping")
	common := []string{"compare", "--duration", "1s", "--warmup", "300ms", "--repeats", "1", "--flows", "1", "--size", "120", "--family", "ipv4"}

	// Table, client to peer, with the xdp datapath for its in-place cost.
	jsonOut := filepath.Join(t.TempDir(), "c2p.json")
	stdout, stderr, pid := runCompare(t, append(common, "--datapaths", "plain,gso,xdp", "--direction", "client-to-peer", "--json-out", jsonOut))
	for _, want := range []string{"flood-120B-c2p-v4", "delivered kpps", "x routed", "xdp ns/pkt", "pass ns/pkt", "direct", "routed", "plain", "gso", "xdp bars: kernel-forwarded share"} {
		if !strings.Contains(stdout, want) {
			t.Fatalf("table lacks %q:\nstdout:\n%s\nstderr:\n%s", want, stdout, stderr)
		}
	}
	if strings.Contains(stdout, "unavailable") {
		t.Fatalf("a variant did not run:\n%s\n%s", stdout, stderr)
	}
	assertCleanedUp(t, pid)
	b, err := os.ReadFile(jsonOut)
	if err != nil {
		t.Fatal(err)
	}
	var c2p bench.Report
	if err := json.Unmarshal(b, &c2p); err != nil || len(c2p.Cases) != 1 {
		t.Fatalf("json-out: %v %+v", err, c2p.Cases)
	}
	checkBaselinesAndCosts(t, c2p.Cases[0], []string{"direct", "routed", "plain", "gso", "xdp"}, stderr)
	for _, r := range c2p.Cases[0].Runs {
		if r.Variant != "xdp" {
			if r.XDPRuns != 0 {
				t.Errorf("%s: %d runs of an XDP program in the relay namespace", r.Variant, r.XDPRuns)
			}
			continue
		}
		// The relay program runs on every packet that reaches the relay's
		// client-side veth, so at least on every one delivered.
		if r.XDPRuns == 0 || r.XDPNsPerPkt <= 0 || r.XDPToPassRatio <= 0 || float64(r.XDPRuns) < 0.9*r.DeliveredPPS*r.Seconds {
			t.Errorf("xdp in-place cost: %d runs, %.0f ns/pkt, %.2f x pass, for %.0f delivered (%s)",
				r.XDPRuns, r.XDPNsPerPkt, r.XDPToPassRatio, r.DeliveredPPS*r.Seconds, r.ProgStatsError)
		}
		// With the relay namespace at default sysctls the program
		// forwards the flood itself (a brief run on a shared machine:
		// the full benchmark holds it to 0.99).
		if r.Forwarding() != "off" || r.KernelForwarded < 0.9 {
			t.Errorf("xdp run: forwarding %s, kernel-forwarded share %.3f, want off and >= 0.9", r.Forwarding(), r.KernelForwarded)
		}
	}
	for _, s := range c2p.Cases[0].Summaries {
		if s.Variant == "xdp" && (s.RoutedDeliveredRatio <= 0 || s.RoutedCPUNsRatio <= 0 || s.XDPNsPerPkt <= 0 || s.PassNsPerPkt <= 0) {
			t.Errorf("xdp summary lacks the routed ratios or the in-place cost: %+v", s)
		}
	}

	// JSON and chart, peer to client.
	chart := filepath.Join(t.TempDir(), "c.svg")
	stdout, stderr, pid = runCompare(t, append(common, "--datapaths", "plain,gso", "--direction", "peer-to-client", "--json", "--chart", chart))
	var rep bench.Report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("json: %v\n%s\n%s", err, stdout, stderr)
	}
	if len(rep.Cases) != 1 || rep.Cases[0].Case.Direction != bench.PeerToClient {
		t.Fatalf("cases %+v", rep.Cases)
	}
	seen := map[string]bool{}
	for _, s := range rep.Cases[0].Summaries {
		seen[s.Variant] = true
		if !s.Available || s.Runs != 1 || s.Delivered <= 0 || s.Offered <= 0 {
			t.Errorf("%s: %+v\n%s", s.Variant, s, stderr)
		}
		if s.Variant != bench.VariantDirect && s.Variant != bench.VariantRouted && s.RelayCPU <= 0 {
			t.Errorf("%s: no relay CPU measured", s.Variant)
		}
	}
	for _, v := range []string{"direct", "routed", "plain", "gso"} {
		if !seen[v] {
			t.Errorf("no summary for %s", v)
		}
	}
	checkBaselinesAndCosts(t, rep.Cases[0], []string{"direct", "routed", "plain", "gso"}, stderr)
	svg, err := os.ReadFile(chart)
	if err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(bytes.NewReader(svg))
	for {
		if _, err := dec.Token(); err != nil {
			if err.Error() != "EOF" {
				t.Fatalf("chart is not well-formed XML: %v", err)
			}
			break
		}
	}
	assertCleanedUp(t, pid)
}

// checkBaselinesAndCosts checks one case of a compare report: one
// successful run per variant, in order; the relay namespace forwarding
// (both families) in routed runs and in no other; ratios to routed of 1 for
// routed itself; and the XDP_PASS program on the receiving veth end counted
// at least the delivered packets, at a positive cost.
func checkBaselinesAndCosts(t *testing.T, cr bench.CaseResult, variants []string, stderr string) {
	t.Helper()
	var got []string
	for _, r := range cr.Runs {
		got = append(got, r.Variant)
		if r.Error != "" {
			t.Errorf("%s: %s", r.Variant, r.Error)
			continue
		}
		wantFwd := r.Variant == bench.VariantRouted
		if r.RelayForwardingV4 != wantFwd || r.RelayForwardingV6 != wantFwd {
			t.Errorf("%s ran with relay namespace forwarding v4 %v v6 %v", r.Variant, r.RelayForwardingV4, r.RelayForwardingV6)
		}
		delivered := r.DeliveredPPS * r.Seconds
		if r.PassRuns == 0 || r.PassNsPerPkt <= 0 || float64(r.PassRuns) < 0.9*delivered {
			t.Errorf("%s: XDP_PASS %d runs at %.0f ns for %.0f delivered (%s)\n%s", r.Variant, r.PassRuns, r.PassNsPerPkt, delivered, r.ProgStatsError, stderr)
		}
	}
	if strings.Join(got, " ") != strings.Join(variants, " ") {
		t.Errorf("runs %v, want %v", got, variants)
	}
	for _, s := range cr.Summaries {
		if s.Variant == bench.VariantRouted && (s.RoutedDeliveredRatio != 1 || s.RoutedCPUNsRatio != 1 || s.RelayForwarding != "on") {
			t.Errorf("routed summary: %+v", s)
		}
		if s.Variant != bench.VariantRouted && s.RelayForwarding != "off" {
			t.Errorf("%s summary: relay forwarding %q", s.Variant, s.RelayForwarding)
		}
	}
}

// TestCompareInterrupt sends SIGINT in the middle of a run: compare must
// exit promptly with what it has, and remove its namespaces, relay and
// mounts.
func TestCompareInterrupt(t *testing.T) {
	privtest.Need(t, "ip", "ethtool", "ping")
	cmd := exec.Command(binary, "compare", "--duration", "3s", "--warmup", "200ms", "--repeats", "3", "--datapaths", "plain", "--flows", "1", "--size", "120", "--family", "ipv4", "--direction", "c2p")
	cmd.Env = cleanEnv()
	var out, errb syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// Wait until the relay variant runs (after the first direct run: a
	// relay process with the bench secret exists), then interrupt.
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) && len(benchRelays(t, cmd.Process.Pid)) == 0 {
		time.Sleep(100 * time.Millisecond)
	}
	if len(benchRelays(t, cmd.Process.Pid)) == 0 {
		cmd.Process.Kill()
		t.Fatalf("no relay started:\n%s", errb.String())
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != exitRuntime {
			t.Fatalf("exit %v, want %d", err, exitRuntime)
		}
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("compare did not exit within 20s of SIGINT:\n%s", errb.String())
	}
	if !strings.Contains(errb.String(), "interrupted") || !strings.Contains(out.String(), "direct") {
		t.Fatalf("stdout:\n%s\nstderr:\n%s", out.String(), errb.String())
	}
	assertCleanedUp(t, cmd.Process.Pid)
}

func runCompare(t *testing.T, args []string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = cleanEnv()
	var out, errb syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("compare: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errb.String())
		}
	case <-time.After(3 * time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("compare did not finish in 3 minutes:\n%s", errb.String())
	}
	return out.String(), errb.String(), cmd.Process.Pid
}

// assertCleanedUp fails if compare process pid left a namespace, a relay
// process or a bpf mount behind.
func assertCleanedUp(t *testing.T, pid int) {
	t.Helper()
	list, err := netns.Run("netns", "list")
	if err != nil {
		t.Fatal(err)
	}
	prefix := netns.Prefix + strconv.Itoa(pid) + "-"
	for _, line := range strings.Split(list, "\n") {
		if strings.HasPrefix(line, prefix) {
			t.Errorf("namespace left behind: %s", line)
		}
	}
	if r := benchRelays(t, pid); len(r) > 0 {
		t.Errorf("relay processes left behind: %v", r)
	}
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	// Other compare runs may share the host: only this one's mounts
	// (hybridrelay-bench-bpffs-<pid>-*) count.
	if strings.Contains(string(mounts), "hybridrelay-bench-bpffs-"+strconv.Itoa(pid)+"-") {
		t.Errorf("bpffs mount left behind")
	}
}

// benchRelays lists the pids of running relays started by the harness
// process harness: their command line carries the harness's REST secret
// and its private bpffs (hybridrelay-bench-bpffs-<harness pid>-*), which
// still names the harness after a leftover relay is re-parented. Relays of
// other harnesses on a shared host do not count.
func benchRelays(t *testing.T, harness int) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if bytes.Contains(b, []byte("hybridrelay-bench-secret")) && bytes.Contains(b, []byte("serve")) &&
			bytes.Contains(b, []byte("hybridrelay-bench-bpffs-"+strconv.Itoa(harness)+"-")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

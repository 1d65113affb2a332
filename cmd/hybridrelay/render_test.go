package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/admin"
	"github.com/hybridrelay/hybridrelay/pkg/control"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// TestRenderStatsGolden renders a fixed snapshot (and rates against an
// earlier one) to pin the human-readable stats format.
func TestRenderStatsGolden(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	mk := func(at time.Time, scale uint64) admin.Snapshot {
		dp := dataplane.Stats{Datapath: "gso", Loops: 2, ReadCalls: 100 * scale, RxPackets: 640 * scale, RxBytes: 64000 * scale,
			TxPackets: 600 * scale, TxGSOSends: 20 * scale, TxGSOSegments: 500 * scale, TxMmsgCalls: 10 * scale, TxMmsgPackets: 100 * scale}
		dp.BatchSizes[0] = 10 * scale
		dp.BatchSizes[6] = 9 * scale
		return admin.Snapshot{
			Time: at, StartedAt: t0, PID: 4242, Datapath: "xdp", DatapathReason: "auto: XDP attaches (eth0 native)",
			Server: &control.ServerStats{Allocations: 3, Permissions: 4, Channels: 5, OffloadedChannels: 4,
				AllocationsCreated: 7, AllocationsExpired: 2, AllocationsDeleted: 2,
				AuthFailures:      map[string]uint64{"missing_credentials": 7 * scale, "bad_integrity": 1},
				Requests:          map[string]map[string]uint64{"allocate": {"ok": 7, "401": 7 * scale}, "binding": {"ok": 3}},
				UserspaceToPeer:   control.PathCounters{Packets: 300 * scale, Bytes: 30000 * scale},
				UserspaceToClient: control.PathCounters{Packets: 300 * scale, Bytes: 30000 * scale},
				Drops:             map[string]uint64{"no_permission": 2},
				OffloadInstalls:   4},
			Dataplane: &dp,
			Loops:     []dataplane.Stats{dp, dp},
			Kernel: &admin.Kernel{Source: "daemon", PinDir: "/sys/fs/bpf/hybridrelay", Channels: 4, MaxChannels: 16384, Ifaces: []string{"eth0"},
				Counters: map[string]uint64{"fwd_to_peer_packets": 1000000 * scale, "fwd_to_peer_bytes": 120000000 * scale,
					"fwd_to_client_packets": 900000 * scale, "fwd_to_client_bytes": 108000000 * scale, "pass_no_entry": 12, "pass_expired": 1,
					"pass_no_route": 3 * scale, "pass_no_nexthop": 1, "pass_too_big": 0,
					"drop_prefilter_not_turn": 50000 * scale, "drop_prefilter_short": 0, "drop_prefilter_stun_length": 2},
				PrefilterAddrs: []string{"192.0.2.10:3478", "[2001:db8::10]:3478"}},
		}
	}
	first, second := mk(t0.Add(time.Hour), 1), mk(t0.Add(time.Hour+2*time.Second), 3)
	var b bytes.Buffer
	renderStats(&b, first, nil)
	b.WriteString("\n--- watching\n\n")
	renderStats(&b, second, computeRates(first, second))
	compareGolden(t, filepath.Join("testdata", "stats-render.golden"), b.String())

	r := computeRates(first, second)
	if r["kernel.fwd_to_peer_packets"] != 1000000 || r["userspace.to_peer.bytes"] != 30000 {
		t.Fatalf("rates: %v", r)
	}
}

func TestRenderProbeGolden(t *testing.T) {
	f := hostFacts{Kernel: "6.18.0", Root: true, BTF: true, BPFFSDir: "/sys/fs/bpf/hybridrelay",
		BPFFSNote: "no bpffs mounted on /sys/fs/bpf yet; serve mounts one there",
		XDP: []ifaceXDP{{Iface: "eth0", Generic: true, NativeErr: "driver does not support this mode",
			Found: true, OperState: "up", Up: true, LinkType: "ethernet", Ethernet: true, MAC: "02:00:00:00:00:01", MTU: 1500,
			RouteFamilies: []string{"ipv4", "ipv6"}},
			{Iface: "wg0", Native: true, Generic: true, Found: true, OperState: "unknown", Up: true, LinkType: "none (tun, wireguard)", MTU: 1420,
				RouteFamilies: []string{"ipv4"}}},
		UDP:      dataplane.Features{UDPSegment: true, UDPGRO: false, Kernel: "6.18.0", Reason: "UDP_GRO: protocol not available (needs Linux 5.0)"},
		Families: []string{"ipv4", "ipv6"},
		Routes: []routeFact{
			{Family: "ipv4", Default: "default via 198.18.0.1 dev eth0", DefaultIfaces: []string{"eth0"}, ViaXDP: true,
				XDPRoutes: []string{"0.0.0.0/0 dev eth0", "198.18.0.0/24 dev eth0"}, LookupDst: "198.18.0.1",
				Lookup: "198.18.0.1/32 dev eth0 src 198.18.0.2", Gateway: "198.18.0.1", Neighbour: "REACHABLE 02:00:00:00:00:fe"},
			{Family: "ipv6", Default: "default via 2001:2::1 dev eth9", DefaultIfaces: []string{"eth9"},
				XDPRoutes: []string{"2001:2:0:1::/64 dev eth0"}, LookupDst: "2001:2::1",
				Lookup: "2001:2::1/128 dev eth9 src 2001:2::2", Gateway: "2001:2::1", Neighbour: "FAILED"},
		},
		Addrs: []addrFact{{Role: "listener", Addr: "0.0.0.0"}, {Role: "relay", Addr: "198.18.0.2", Iface: "eth0", OnXDP: true},
			{Role: "relay", Addr: "2001:2::2", Iface: "eth9"}},
		Forwarding: forwardingFact{IPv4: "off", IPv6: "off", Note: forwardingNote},
	}
	var r probeReport
	r.hostFacts = f
	name, reason, err := decideDatapath("auto", "auto", f)
	if err != nil {
		t.Fatal(err)
	}
	r.Auto.Datapath, r.Auto.Reason = name, reason
	var b bytes.Buffer
	renderProbe(&b, r)
	compareGolden(t, filepath.Join("testdata", "probe-render.golden"), b.String())
}

// TestProbeBinary runs the real probe: it must report the kernel and a
// decision consistent with its own facts.
func TestProbeBinary(t *testing.T) {
	out, stderr, code := runBinary(t, nil, "probe", "--iface", "lo", "--json", "--bpffs", filepath.Join(t.TempDir(), "none"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var r probeReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if r.Kernel == "" || len(r.XDP) != 1 || r.XDP[0].Iface != "lo" {
		t.Fatalf("report: %+v", r)
	}
	want, _, err := decideDatapath("auto", "auto", r.hostFacts)
	if err != nil || r.Auto.Datapath != want {
		t.Fatalf("auto %q, decision on the same facts %q (%v)", r.Auto.Datapath, want, err)
	}
	// A bpffs directory outside any bpf filesystem rules xdp out.
	if r.Auto.Datapath == "xdp" || !strings.Contains(r.Auto.Reason, "bpf filesystem") {
		t.Fatalf("auto %s (%s), want xdp ruled out for the bpffs directory", r.Auto.Datapath, r.Auto.Reason)
	}
	out, _, code = runBinary(t, nil, "probe", "--iface", "lo")
	if code != 0 || !strings.Contains(out, "datapath auto would pick: ") || !strings.Contains(out, "UDP_SEGMENT") {
		t.Fatalf("text probe: %s", out)
	}
}

package main

import (
	"bytes"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"
)

type fakeEgress struct {
	entries []egressInfo
	calls   int
}

func (f *fakeEgress) Egress() []egressInfo { f.calls++; return f.entries }

func TestDecidePassWarnings(t *testing.T) {
	a := netip.MustParseAddr
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	base := map[string]uint64{"pass_no_entry": 10, "pass_no_egress": 5, "pass_no_route": 0, "pass_link_down": 0, "pass_too_big": 0, "pass_no_neigh": 0}
	with := func(kv ...any) map[string]uint64 {
		m := map[string]uint64{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = uint64(kv[i+1].(int))
		}
		return m
	}
	eth1 := egressInfo{Dst: a("198.18.1.1"), Ifname: "eth1", Ifindex: 3, MTU: 1500, Reason: "pass_no_egress"}
	eth2 := egressInfo{Dst: a("198.18.2.1"), Ifname: "eth2", Ifindex: 4, MTU: 9000, Reason: "pass_no_egress"}
	noRoute := egressInfo{Dst: a("2001:2::99"), Reason: "pass_no_route"}
	down := egressInfo{Dst: a("198.18.3.1"), Ifname: "eth3", MTU: 1500, Reason: "pass_link_down"}
	neigh := egressInfo{Dst: a("198.18.9.9"), Gateway: a("198.18.0.1"), Ifname: "eth0", MTU: 1400, Reason: "pass_no_neigh"}
	usable := egressInfo{Dst: a("198.18.4.1"), Ifname: "eth0", MTU: 1400}

	tests := []struct {
		name       string
		prev, cur  map[string]uint64
		egress     []egressInfo
		last       map[string]time.Time
		want       []string // reason: substrings of detail+fix
		wantPacket uint64
	}{
		{name: "nothing grew", prev: base, cur: base},
		{name: "normal reason grew", prev: base, cur: with("pass_no_entry", 1000)},
		{name: "no baseline", prev: map[string]uint64{}, cur: with("pass_no_route", 5)},
		{name: "counter went back (new program)", prev: with("pass_no_route", 9), cur: with("pass_no_route", 2)},
		{name: "no_egress names the interfaces", prev: base, cur: with("pass_no_egress", 12), egress: []egressInfo{eth2, eth1, usable},
			want: []string{"no_egress: 198.18.2.1 leaves through eth2, which is not an XDP interface", "198.18.1.1 leaves through eth1", "add --xdp-iface eth1 --xdp-iface eth2"}, wantPacket: 7},
		{name: "no_egress without entries", prev: base, cur: with("pass_no_egress", 6),
			want: []string{"no_egress: some destinations", "--xdp-iface IFNAME"}, wantPacket: 1},
		{name: "no_route", prev: base, cur: with("pass_no_route", 3), egress: []egressInfo{noRoute},
			want: []string{"no_route: the host has no route to 2001:2::99", "check `ip route get 2001:2::99`"}, wantPacket: 3},
		{name: "link_down", prev: base, cur: with("pass_link_down", 1), egress: []egressInfo{down},
			want: []string{"link_down: eth3 is down", "bring eth3 up"}, wantPacket: 1},
		{name: "too_big names MTUs", prev: base, cur: with("pass_too_big", 4), egress: []egressInfo{usable, down},
			want: []string{"too_big: MTU of eth0 is 1400; MTU of eth3 is 1500; peers/clients send larger datagrams, the userspace path fragments them"}, wantPacket: 4},
		{name: "no_neigh transient", prev: base, cur: with("pass_no_neigh", 2), egress: []egressInfo{usable}},
		{name: "no_neigh persists", prev: base, cur: with("pass_no_neigh", 2), egress: []egressInfo{neigh},
			want: []string{"no_neigh: 198.18.0.1 on eth0 does not answer ARP/ND", "ip neigh show dev eth0"}, wantPacket: 2},
		{name: "warned 1 minute ago", prev: base, cur: with("pass_no_route", 3), egress: []egressInfo{noRoute},
			last: map[string]time.Time{"no_route": now.Add(-time.Minute)}},
		{name: "warned 5 minutes ago", prev: base, cur: with("pass_no_route", 3), egress: []egressInfo{noRoute},
			last: map[string]time.Time{"no_route": now.Add(-passWarnEvery)}, want: []string{"no_route: the host has no route"}, wantPacket: 3},
		{name: "rate limit is per reason", prev: base, cur: with("pass_no_route", 3, "pass_link_down", 2), egress: []egressInfo{noRoute, down},
			last: map[string]time.Time{"no_route": now.Add(-time.Minute)}, want: []string{"link_down: eth3 is down"}, wantPacket: 2},
		{name: "many destinations are cut short", prev: base, cur: with("pass_no_route", 9), egress: []egressInfo{
			{Dst: a("198.18.5.1"), Reason: "pass_no_route"}, {Dst: a("198.18.5.2"), Reason: "pass_no_route"},
			{Dst: a("198.18.5.3"), Reason: "pass_no_route"}, {Dst: a("198.18.5.4"), Reason: "pass_no_route"}, {Dst: a("198.18.5.5"), Reason: "pass_no_route"}},
			want: []string{"no_route: the host has no route to 198.18.5.1; 198.18.5.2; 198.18.5.3; and 2 more"}, wantPacket: 9},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := decidePassWarnings(tt.prev, tt.cur, tt.egress, tt.last, now)
			if len(tt.want) == 0 {
				if len(got) != 0 {
					t.Fatalf("warned: %+v", got)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("got %d warnings %+v, want one", len(got), got)
			}
			text := got[0].Reason + ": " + got[0].Detail + " | " + got[0].Fix
			for _, w := range tt.want {
				if !strings.Contains(text, w) {
					t.Errorf("warning %q lacks %q", text, w)
				}
			}
			if got[0].Packets != tt.wantPacket {
				t.Errorf("packets %d, want %d", got[0].Packets, tt.wantPacket)
			}
		})
	}
}

// TestPassWatcher drives serve's check loop with fake counters: a WARN
// once the counter keeps growing, none again within passWarnEvery, and
// the egress table read only when a misconfiguration counter grew.
func TestPassWatcher(t *testing.T) {
	var logb bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logb, nil))
	counters := map[string]uint64{"pass_no_egress": 0, "pass_no_entry": 0}
	var readErr error
	eg := &fakeEgress{entries: []egressInfo{{Dst: netip.MustParseAddr("198.18.1.1"), Ifname: "eth1", Reason: "pass_no_egress"}}}
	w := newPassWatcher(log, func() (map[string]uint64, error) {
		m := map[string]uint64{}
		for k, v := range counters {
			m[k] = v
		}
		return m, readErr
	}, eg)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	w.check(t0) // baseline
	counters["pass_no_entry"] = 100
	w.check(t0.Add(passCheckInterval))
	if logb.Len() != 0 || eg.calls != 0 {
		t.Fatalf("normal traffic warned or read the egress table (%d):\n%s", eg.calls, logb.String())
	}
	step := 2
	for i := 0; i < 5; i++ {
		counters["pass_no_egress"] += 10
		w.check(t0.Add(time.Duration(step) * passCheckInterval))
		step++
	}
	want := `level=WARN msg="kernel path: packets passed to the stack" reason=no_egress packets=10 detail="198.18.1.1 leaves through eth1, which is not an XDP interface (or has a VLAN tagging mismatch)" fix="add --xdp-iface eth1"`
	if n := strings.Count(logb.String(), "level=WARN"); n != 1 || !strings.Contains(logb.String(), want) {
		t.Fatalf("%d warnings, want exactly\n%s\ngot:\n%s", n, want, logb.String())
	}
	// Past the rate limit it warns again; a failed read changes nothing.
	readErr = errors.New("map gone")
	w.check(t0.Add(passWarnEvery))
	readErr = nil
	counters["pass_no_egress"] += 1
	w.check(t0.Add(passWarnEvery + 3*passCheckInterval))
	if n := strings.Count(logb.String(), "level=WARN"); n != 2 {
		t.Fatalf("%d warnings after the rate limit, want 2:\n%s", n, logb.String())
	}
}

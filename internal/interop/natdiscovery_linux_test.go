package interop

import (
	"context"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/internal/privtest"
	"github.com/hybridrelay/hybridrelay/pkg/control"
)

// otherV4 is the relay namespace's second address on the client link, the
// RFC 5780 other address.
var otherV4 = netip.MustParseAddr("198.18.0.3")

// runNATDiscovery runs coturn's turnutils_natdiscovery -m -f from the
// client namespace (bound to the client's address, so it can tell "no
// NAT") against server.
func runNATDiscovery(t *testing.T, r *netnsRelay, server netip.AddrPort) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := runBounded(ctx, "ip", "netns", "exec", r.topo.Client.Name, "turnutils_natdiscovery",
		"-m", "-f", "-L", r.topo.ClientV4.String(), "-p", "3478", server.Addr().String())
	if err != nil {
		t.Fatalf("turnutils_natdiscovery: %v\n%s", err, out)
	}
	return string(out)
}

// TestNetnsNATDiscovery: the relay namespace has two addresses on the
// client link and other-address set; turnutils_natdiscovery in the client
// namespace must find what the namespaces really are: no NAT, so mapping
// and filtering both endpoint-independent, with every answer an RFC 5780
// one naming the real other address and port and the real response
// origins. Then the same tool against a server without other-address
// (one address) must find no RFC 5780 support.
func TestNetnsNATDiscovery(t *testing.T) {
	privtest.Need(t, "ip", "ethtool", "ping", "turnutils_natdiscovery")
	t.Parallel()
	r := startNetnsRelayWith(t, func(topo *netns.Topology, cfg *control.Config) {
		if _, err := topo.Relay.IP("addr", "add", otherV4.String()+"/24", "dev", topo.RelayClientIf); err != nil {
			t.Fatalf("second relay address: %v", err)
		}
		cfg.OtherAddresses = []netip.Addr{otherV4}
	})
	out := runNATDiscovery(t, r, r.addr4)
	for _, want := range []string{
		"No NAT! (Endpoint Independent Mapping)",
		"NAT with Endpoint Independent Mapping!",
		"NAT with Endpoint Independent Filtering!",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("natdiscovery did not report %q", want)
		}
	}
	for _, wrong := range []string{"Dependent Mapping", "Dependent Filtering", "ALG detected", "error", "timeout"} {
		if strings.Contains(out, wrong) {
			t.Errorf("natdiscovery reported %q", wrong)
		}
	}
	// Four RFC 5780 responses: mapping tests I and II, filtering tests I
	// and II (II asks for both address and port changed).
	if n := strings.Count(out, "RFC 5780 response"); n != 4 {
		t.Errorf("%d RFC 5780 responses, want 4", n)
	}
	// Per response, the origin and OTHER-ADDRESS the namespaces make
	// true: mapping I to Da:Dp; mapping II to the other address with the
	// primary port (Ca:Dp, whose other is Da:Cp); filtering I to Da:Dp;
	// filtering II to Da:Dp asking for address and port changed (sent
	// from Ca:Cp).
	want := [][2]string{
		{"198.18.0.2:3478", "198.18.0.3:3479"},
		{"198.18.0.3:3478", "198.18.0.2:3479"},
		{"198.18.0.2:3478", "198.18.0.3:3479"},
		{"198.18.0.3:3479", "198.18.0.3:3479"},
	}
	reOrigin := regexp.MustCompile(`Response origin: [^\n]*?((?:\d+\.){3}\d+:\d+)`)
	reOther := regexp.MustCompile(`Other addr: [^\n]*?((?:\d+\.){3}\d+:\d+)`)
	blocks := strings.Split(out, "RFC 5780 response")[1:]
	for i, b := range blocks {
		if i >= len(want) {
			break
		}
		o, a := reOrigin.FindStringSubmatch(b), reOther.FindStringSubmatch(b)
		if o == nil || a == nil || o[1] != want[i][0] || a[1] != want[i][1] {
			t.Errorf("response %d: origin %v other %v, want %s and %s", i+1, o, a, want[i][0], want[i][1])
		}
	}
	if t.Failed() {
		t.Fatalf("natdiscovery output:\n%s", out)
	}
	r.stop()
	if !r.statsOK {
		t.Fatal("no final stats from the server")
	}
	if p := r.stats.Protocol; p["rfc5780_responses"] != 4 || p["rfc5780_change_ip"] != 1 || p["rfc5780_change_port"] != 1 {
		t.Fatalf("server counters %v, want 4 responses, 1 change-ip, 1 change-port", p)
	}
}

// TestNetnsNATDiscoveryOff: a server with one address (no other-address)
// gives turnutils_natdiscovery no RFC 5780 answer, so it can only tell
// that there is no NAT.
func TestNetnsNATDiscoveryOff(t *testing.T) {
	privtest.Need(t, "ip", "ethtool", "ping", "turnutils_natdiscovery")
	t.Parallel()
	r := startNetnsRelay(t)
	out := runNATDiscovery(t, r, r.addr4)
	if !strings.Contains(out, "No NAT!") || strings.Contains(out, "RFC 5780 response") || strings.Contains(out, "NAT with") {
		t.Fatalf("natdiscovery against a server without other-address:\n%s", out)
	}
}

// TestNetnsNATDiscoveryFiltering makes the client namespace a real
// stateless packet filter in front of the client (policy routing rules
// that blackhole what arrives on its interface from given sources, ahead
// of the local table), and checks that turnutils_natdiscovery -f, through
// the server's CHANGE-REQUEST answers, finds exactly the filtering the
// namespace has: dropping what comes from the other address is
// address-dependent filtering; dropping also the primary address's
// alternate port is address- and port-dependent filtering. A server that
// sent a response from the wrong member of its set would be classified
// wrongly.
func TestNetnsNATDiscoveryFiltering(t *testing.T) {
	privtest.Need(t, "ip", "ethtool", "ping", "turnutils_natdiscovery")
	t.Parallel()
	r := startNetnsRelayWith(t, func(topo *netns.Topology, cfg *control.Config) {
		if _, err := topo.Relay.IP("addr", "add", otherV4.String()+"/24", "dev", topo.RelayClientIf); err != nil {
			t.Fatalf("second relay address: %v", err)
		}
		cfg.OtherAddresses = []netip.Addr{otherV4}
	})
	cl := r.topo.Client
	// Rules are consulted for received packets too; the local table's
	// rule (preference 0) must come after the filter.
	for _, args := range [][]string{
		{"rule", "add", "pref", "100", "lookup", "local"},
		{"rule", "del", "pref", "0", "lookup", "local"},
		{"rule", "add", "pref", "10", "from", otherV4.String(), "iif", r.topo.ClientIf, "blackhole"},
	} {
		if out, err := cl.IP(args...); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	filtering := func(t *testing.T) string {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		out, err := runBounded(ctx, "ip", "netns", "exec", cl.Name, "turnutils_natdiscovery",
			"-f", "-L", r.topo.ClientV4.String(), "-p", "3478", r.addr4.Addr().String())
		if err != nil {
			t.Fatalf("turnutils_natdiscovery: %v\n%s", err, out)
		}
		return string(out)
	}
	t.Run("address-dependent", func(t *testing.T) {
		out := filtering(t)
		if !strings.Contains(out, "NAT with Address Dependent Filtering!") {
			t.Fatalf("want address-dependent filtering:\n%s", out)
		}
	})
	t.Run("address-and-port-dependent", func(t *testing.T) {
		args := []string{"rule", "add", "pref", "11", "from", r.topo.RelayClientV4.String(), "iif", r.topo.ClientIf,
			"ipproto", "udp", "sport", "3479", "blackhole"}
		if out, err := cl.IP(args...); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
		out := filtering(t)
		if !strings.Contains(out, "NAT with Address and Port Dependent Filtering!") {
			t.Fatalf("want address- and port-dependent filtering:\n%s", out)
		}
	})
}

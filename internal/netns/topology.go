package netns

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
)

// Topology is three namespaces in a line, the shape every end-to-end test
// and benchmark uses:
//
//	client ns            relay ns                      peer ns
//	eth0 198.18.0.1 ── cli0 198.18.0.2 | peer0 198.18.1.2 ── eth0 198.18.1.1
//	     2001:2::1          2001:2::2  | 2001:2:0:1::2         2001:2:0:1::1
//
// and, with TopologyOptions.DirectLink, a second link straight from the
// client to the peer that bypasses the relay namespace:
//
//	client ns  direct0 198.19.0.1 ───────────────── direct0 198.19.0.2  peer ns
//	           2001:2:0:9::1                        2001:2:0:9::2
//
// The relay namespace keeps the sysctls a host comes with: IP forwarding
// is off, as on every server that is not a router (docs/design.md,
// "Invariants for the kernel path" 6), so the client reaches the peer
// through it only via a relay. TopologyOptions.Forwarding (or
// SetForwarding) makes it an IP router, for the "routed" baseline and the
// router variant of the tests. Checksum offload is off on every veth end:
// with it on, XDP sees partial checksums and rewritten packets are dropped.
type Topology struct {
	Client, Relay, Peer *NS

	// Interface names, per namespace.
	ClientIf, RelayClientIf, RelayPeerIf, PeerIf string

	ClientV4, RelayClientV4, RelayPeerV4, PeerV4 netip.Addr
	ClientV6, RelayClientV6, RelayPeerV6, PeerV6 netip.Addr

	// The direct client-peer link (TopologyOptions.DirectLink); empty
	// names and zero addresses without it.
	DirectClientIf, DirectPeerIf string
	DirectClientV4, DirectPeerV4 netip.Addr
	DirectClientV6, DirectPeerV6 netip.Addr
}

// TopologyOptions choose the variant of a Topology. The zero value is a
// host as it comes.
type TopologyOptions struct {
	// Forwarding turns IPv4 and IPv6 forwarding on in the relay namespace:
	// the relay host as an IP router. Off (the default), the relay
	// namespace forwards nothing, like a server that is not a router.
	Forwarding bool
	// DirectLink adds a veth pair straight between the client and the
	// peer namespaces (198.19.0.0/24, 2001:2:0:9::/64), for measuring the
	// machine without any relay hop.
	DirectLink bool
}

// Variant is a named TopologyOptions, for running one test on each.
type Variant struct {
	Name    string
	Options TopologyOptions
}

// Variants are the two relay-host variants every test of the kernel path
// runs on, as subtests: "default-sysctls" (forwarding off, a server as it
// comes; the case that matters) and "forwarding" (the relay host is also
// an IP router).
func Variants() []Variant {
	return []Variant{
		{Name: "default-sysctls", Options: TopologyOptions{}},
		{Name: "forwarding", Options: TopologyOptions{Forwarding: true}},
	}
}

// NewTopology builds the three namespaces with the relay namespace at
// default sysctls (forwarding off). On error everything made so far is
// removed.
func NewTopology() (*Topology, error) {
	return NewTopologyWith(TopologyOptions{})
}

// NewTopologyWith builds the three namespaces as opts says. On error
// everything made so far is removed.
func NewTopologyWith(opts TopologyOptions) (t *Topology, err error) {
	RemoveStale()
	t = &Topology{
		ClientIf: "eth0", RelayClientIf: "cli0", RelayPeerIf: "peer0", PeerIf: "eth0",
		ClientV4:      netip.MustParseAddr("198.18.0.1"),
		RelayClientV4: netip.MustParseAddr("198.18.0.2"),
		RelayPeerV4:   netip.MustParseAddr("198.18.1.2"),
		PeerV4:        netip.MustParseAddr("198.18.1.1"),
		ClientV6:      netip.MustParseAddr("2001:2::1"),
		RelayClientV6: netip.MustParseAddr("2001:2::2"),
		RelayPeerV6:   netip.MustParseAddr("2001:2:0:1::2"),
		PeerV6:        netip.MustParseAddr("2001:2:0:1::1"),
	}
	defer func() {
		if err != nil {
			t.Close()
			t = nil
		}
	}()
	if t.Client, err = New("c"); err != nil {
		return t, err
	}
	if t.Relay, err = New("r"); err != nil {
		return t, err
	}
	if t.Peer, err = New("p"); err != nil {
		return t, err
	}
	if err = link(t.Client, t.ClientIf, t.Relay, t.RelayClientIf); err != nil {
		return t, err
	}
	if err = link(t.Relay, t.RelayPeerIf, t.Peer, t.PeerIf); err != nil {
		return t, err
	}
	steps := []struct {
		ns   *NS
		args []string
	}{
		{t.Client, []string{"addr", "add", t.ClientV4.String() + "/24", "dev", t.ClientIf}},
		{t.Client, []string{"addr", "add", t.ClientV6.String() + "/64", "dev", t.ClientIf, "nodad"}},
		{t.Relay, []string{"addr", "add", t.RelayClientV4.String() + "/24", "dev", t.RelayClientIf}},
		{t.Relay, []string{"addr", "add", t.RelayClientV6.String() + "/64", "dev", t.RelayClientIf, "nodad"}},
		{t.Relay, []string{"addr", "add", t.RelayPeerV4.String() + "/24", "dev", t.RelayPeerIf}},
		{t.Relay, []string{"addr", "add", t.RelayPeerV6.String() + "/64", "dev", t.RelayPeerIf, "nodad"}},
		{t.Peer, []string{"addr", "add", t.PeerV4.String() + "/24", "dev", t.PeerIf}},
		{t.Peer, []string{"addr", "add", t.PeerV6.String() + "/64", "dev", t.PeerIf, "nodad"}},
		{t.Client, []string{"route", "add", "default", "via", t.RelayClientV4.String()}},
		{t.Client, []string{"-6", "route", "add", "default", "via", t.RelayClientV6.String()}},
		{t.Peer, []string{"route", "add", "default", "via", t.RelayPeerV4.String()}},
		{t.Peer, []string{"-6", "route", "add", "default", "via", t.RelayPeerV6.String()}},
	}
	if opts.DirectLink {
		t.DirectClientIf, t.DirectPeerIf = "direct0", "direct0"
		t.DirectClientV4 = netip.MustParseAddr("198.19.0.1")
		t.DirectPeerV4 = netip.MustParseAddr("198.19.0.2")
		t.DirectClientV6 = netip.MustParseAddr("2001:2:0:9::1")
		t.DirectPeerV6 = netip.MustParseAddr("2001:2:0:9::2")
		if err = link(t.Client, t.DirectClientIf, t.Peer, t.DirectPeerIf); err != nil {
			return t, err
		}
		// On-link prefixes only: the connected routes take the direct
		// addresses over this link, everything else keeps the default
		// route through the relay namespace.
		steps = append(steps, []struct {
			ns   *NS
			args []string
		}{
			{t.Client, []string{"addr", "add", t.DirectClientV4.String() + "/24", "dev", t.DirectClientIf}},
			{t.Client, []string{"addr", "add", t.DirectClientV6.String() + "/64", "dev", t.DirectClientIf, "nodad"}},
			{t.Peer, []string{"addr", "add", t.DirectPeerV4.String() + "/24", "dev", t.DirectPeerIf}},
			{t.Peer, []string{"addr", "add", t.DirectPeerV6.String() + "/64", "dev", t.DirectPeerIf, "nodad"}},
		}...)
	}
	for _, s := range steps {
		if _, err = s.ns.IP(s.args...); err != nil {
			return t, err
		}
	}
	// A new namespace takes its IPv4 "all"/"default" settings from the
	// root namespace (net.core.devconf_inherit_init_net=0, the kernel
	// default), so on a host that routes the relay namespace would start
	// forwarding. Set the variant asked for explicitly, either way.
	if err = t.SetForwarding(opts.Forwarding); err != nil {
		return t, err
	}
	// Resolve neighbours now, so the first packets of a test are not lost
	// to ARP/ND. Every ping is to an address on the link, so they work
	// with forwarding off.
	pings := []struct {
		ns   *NS
		addr netip.Addr
	}{
		{t.Client, t.RelayClientV4}, {t.Client, t.RelayClientV6},
		{t.Peer, t.RelayPeerV4}, {t.Peer, t.RelayPeerV6},
	}
	if opts.DirectLink {
		pings = append(pings, []struct {
			ns   *NS
			addr netip.Addr
		}{{t.Client, t.DirectPeerV4}, {t.Client, t.DirectPeerV6}}...)
	}
	for _, p := range pings {
		if _, err = p.ns.Sh("ping", "-c", "1", "-W", "2", p.addr.String()); err != nil {
			return t, fmt.Errorf("topology ping: %w", err)
		}
	}
	return t, nil
}

// forwardingSysctls are the relay namespace's forwarding switches. Setting
// net.ipv4.conf.all.forwarding sets every interface's, like
// net.ipv4.ip_forward. Setting net.ipv6.conf.all.forwarding also changes
// whether interfaces accept router advertisements (accept_ra=1 ignores RAs
// on a router); harmless in a namespace no router talks to.
var forwardingSysctls = [2]string{
	"/proc/sys/net/ipv4/conf/all/forwarding",
	"/proc/sys/net/ipv6/conf/all/forwarding",
}

// SetForwarding turns IPv4 and IPv6 forwarding in the relay namespace on
// or off.
func (t *Topology) SetForwarding(on bool) error {
	val := []byte("0\n")
	if on {
		val = []byte("1\n")
	}
	// /proc/sys/net belongs to the network namespace of the thread that
	// opens it, so open it from inside.
	err := t.Relay.Do(func() error {
		for _, p := range forwardingSysctls {
			if err := os.WriteFile(p, val, 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("set forwarding %v in %s: %w", on, t.Relay.Name, err)
	}
	return nil
}

// Forwarding reads IPv4 and IPv6 forwarding of the relay namespace back.
func (t *Topology) Forwarding() (v4, v6 bool, err error) {
	var vals [2]bool
	err = t.Relay.Do(func() error {
		for i, p := range forwardingSysctls {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if vals[i], err = parseSysctlBool(string(b)); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		}
		return nil
	})
	if err != nil {
		return false, false, fmt.Errorf("read forwarding in %s: %w", t.Relay.Name, err)
	}
	return vals[0], vals[1], nil
}

// parseSysctlBool reads a 0/1 sysctl value ("1\n"); any other number is an
// error, not a guess.
func parseSysctlBool(s string) (bool, error) {
	switch strings.TrimSpace(s) {
	case "0":
		return false, nil
	case "1":
		return true, nil
	}
	return false, fmt.Errorf("not a 0/1 sysctl value: %q", s)
}

func link(a *NS, aIf string, b *NS, bIf string) error {
	// Temporary names live in the root namespace, where test binaries of
	// other packages make theirs at the same time: the pid keeps them apart
	// (and the whole name within IFNAMSIZ, 15 bytes).
	tmpA := fmt.Sprintf("hv%d_%d", os.Getpid()%100000, seq.Add(1))
	tmpB := fmt.Sprintf("hv%d_%d", os.Getpid()%100000, seq.Add(1))
	if _, err := Run("link", "add", tmpA, "type", "veth", "peer", "name", tmpB); err != nil {
		return fmt.Errorf("create veth: %w", err)
	}
	for _, s := range []struct {
		tmp, name string
		ns        *NS
	}{{tmpA, aIf, a}, {tmpB, bIf, b}} {
		if _, err := Run("link", "set", s.tmp, "netns", s.ns.Name); err != nil {
			_, _ = Run("link", "del", tmpA)
			return err
		}
		if _, err := s.ns.IP("link", "set", s.tmp, "name", s.name); err != nil {
			return err
		}
		if _, err := s.ns.IP("link", "set", s.name, "up"); err != nil {
			return err
		}
		if _, err := s.ns.Sh("ethtool", "-K", s.name, "tx", "off", "rx", "off"); err != nil {
			return fmt.Errorf("turn checksum offload off: %w", err)
		}
	}
	return nil
}

// Close removes the namespaces (and with them the veth pairs).
func (t *Topology) Close() error {
	var errs []error
	for _, ns := range []*NS{t.Client, t.Relay, t.Peer} {
		if ns != nil {
			if _, err := Run("netns", "del", ns.Name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

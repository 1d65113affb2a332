package netns

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
)

// Topology is three namespaces in a line, the shape every end-to-end test
// and benchmark uses:
//
//	client ns            relay ns                      peer ns
//	eth0 198.18.0.1 ── cli0 198.18.0.2 | peer0 198.18.1.2 ── eth0 198.18.1.1
//	     2001:2::1          2001:2::2  | 2001:2:0:1::2         2001:2:0:1::1
//
// The relay namespace forwards between its two links, so traffic from the
// client to the peer without a relay process (the "direct" case) takes the
// same wires. Checksum offload is off on every veth end: with it on, XDP
// sees partial checksums and rewritten packets are dropped.
type Topology struct {
	Client, Relay, Peer *NS

	// Interface names, per namespace.
	ClientIf, RelayClientIf, RelayPeerIf, PeerIf string

	ClientV4, RelayClientV4, RelayPeerV4, PeerV4 netip.Addr
	ClientV6, RelayClientV6, RelayPeerV6, PeerV6 netip.Addr
}

// NewTopology builds the three namespaces. On error everything made so far
// is removed.
func NewTopology() (t *Topology, err error) {
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
	for _, s := range steps {
		if _, err = s.ns.IP(s.args...); err != nil {
			return t, err
		}
	}
	for _, kv := range []string{"net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"} {
		if _, err = t.Relay.Sh("sysctl", "-q", "-w", kv); err != nil {
			return t, err
		}
	}
	// Resolve neighbours now, so the first packets of a test are not lost
	// to ARP/ND and bpf_fib_lookup finds them.
	pings := []struct {
		ns   *NS
		addr netip.Addr
	}{
		{t.Client, t.RelayClientV4}, {t.Client, t.RelayClientV6},
		{t.Peer, t.RelayPeerV4}, {t.Peer, t.RelayPeerV6},
	}
	for _, p := range pings {
		if _, err = p.ns.Sh("ping", "-c", "1", "-W", "2", p.addr.String()); err != nil {
			return t, fmt.Errorf("topology ping: %w", err)
		}
	}
	return t, nil
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

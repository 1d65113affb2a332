package turntest

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/pion/logging"
	"github.com/pion/transport/v4"
	"github.com/pion/transport/v4/stdnet"
	"github.com/pion/turn/v4"
)

// PionConfig says where and as whom a pion client allocates.
type PionConfig struct {
	// Conn is the client's transport: a UDP socket, or a TCP connection
	// wrapped with turn.NewSTUNConn. The client closes it at cleanup.
	Conn              net.PacketConn
	Server            netip.AddrPort
	User, Pass, Realm string
	// AnyFamily resolves the server's address for either family (pion's
	// client asks for "udp4" only, which rules out an IPv6 server).
	AnyFamily bool
}

// PionClient is a pion/turn v4 client (a real client nobody here wrote)
// with one allocation.
type PionClient struct {
	Client *turn.Client
	Relay  net.PacketConn // the allocation's relayed transport address
}

// StartPion starts a pion client on cfg.Conn (NewClient, then Listen)
// without allocating, for tests that look at the Allocate itself. On error
// it closes what it opened, cfg.Conn included; otherwise the caller closes
// the client and cfg.Conn.
func StartPion(cfg PionConfig) (*turn.Client, error) {
	lf := logging.NewDefaultLoggerFactory()
	lf.DefaultLogLevel = logging.LogLevelError
	cc := &turn.ClientConfig{
		STUNServerAddr: cfg.Server.String(),
		TURNServerAddr: cfg.Server.String(),
		Username:       cfg.User,
		Password:       cfg.Pass,
		Realm:          cfg.Realm,
		Conn:           cfg.Conn,
		LoggerFactory:  lf,
	}
	if cfg.AnyFamily {
		n, err := stdnet.NewNet()
		if err != nil {
			cfg.Conn.Close()
			return nil, fmt.Errorf("pion network: %w", err)
		}
		cc.Net = anyFamilyNet{n}
	}
	c, err := turn.NewClient(cc)
	if err != nil {
		cfg.Conn.Close()
		return nil, fmt.Errorf("new pion client: %w", err)
	}
	if err := c.Listen(); err != nil {
		c.Close()
		cfg.Conn.Close()
		return nil, fmt.Errorf("pion client listen: %w", err)
	}
	return c, nil
}

// NewPionClient starts a client on cfg.Conn and allocates; any failure
// fails the test. Relay, client and connection are closed at cleanup.
func NewPionClient(t testing.TB, cfg PionConfig) *PionClient {
	t.Helper()
	c, err := StartPion(cfg)
	if err != nil {
		t.Fatal(err)
	}
	relay, err := c.Allocate()
	if err != nil {
		c.Close()
		cfg.Conn.Close()
		t.Fatalf("pion allocate: %v", err)
	}
	t.Cleanup(func() {
		relay.Close()
		c.Close()
		cfg.Conn.Close()
	})
	return &PionClient{Client: c, Relay: relay}
}

// RelayAddr is the allocation's relayed transport address.
func (p *PionClient) RelayAddr() netip.AddrPort {
	return p.Relay.LocalAddr().(*net.UDPAddr).AddrPort()
}

// anyFamilyNet resolves "udp4" as "udp"; everything else is the standard
// library network.
type anyFamilyNet struct{ *stdnet.Net }

var _ transport.Net = anyFamilyNet{}

func (n anyFamilyNet) ResolveUDPAddr(network, address string) (*net.UDPAddr, error) {
	if network == "udp4" {
		network = "udp"
	}
	return n.Net.ResolveUDPAddr(network, address)
}

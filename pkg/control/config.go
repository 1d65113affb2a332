package control

import (
	"net/netip"
	"time"
)

// ListenerSpec is one address the server answers STUN/TURN on.
type ListenerSpec struct {
	// Network is "udp", "tcp", "tls" or "dtls".
	Network string
	Addr    netip.AddrPort
}

// NeedsTLS reports whether any of ls is a TLS or DTLS listener, which needs a
// certificate and key (loaded by NewServer, re-read by ReloadTLS).
func NeedsTLS(ls []ListenerSpec) bool {
	for _, l := range ls {
		if l.Network == "tls" || l.Network == "dtls" {
			return true
		}
	}
	return false
}

// Config is everything the control plane needs to run. The zero value is not
// usable; start from DefaultConfig.
type Config struct {
	Listeners []ListenerSpec
	// RelayIPs are the addresses relayed transport addresses are allocated
	// on (one per family at most is used for a given allocation). Empty:
	// derived from the listener addresses (unspecified listeners make this
	// an error, the operator must say which address peers can reach).
	RelayIPs []netip.Addr
	MinPort  uint16
	MaxPort  uint16

	Realm string
	// Users are static long-term credentials: name -> password.
	Users map[string]string
	// AuthSecrets are TURN REST API shared secrets (coturn's
	// static-auth-secret); all of them are accepted, for rotation.
	AuthSecrets []string

	TLSCertFile string
	TLSKeyFile  string

	// OtherAddresses turn on RFC 5780 NAT behaviour discovery: at most one
	// per family, an address of this host other than the listeners'. Each
	// UDP listener on a specific address of that family answers Binding
	// requests from four sockets (natdiscovery.go). Empty: off.
	OtherAddresses []netip.Addr

	// AllowPeers wins over DenyPeers and over the built-in deny list.
	AllowPeers []netip.Prefix
	DenyPeers  []netip.Prefix

	DefaultLifetime    time.Duration // Allocate without LIFETIME (600 s)
	MaxLifetime        time.Duration // upper bound of LIFETIME (3600 s)
	PermissionLifetime time.Duration // 300 s, RFC 8656 section 9
	ChannelLifetime    time.Duration // 600 s, RFC 8656 section 12
	NonceLifetime      time.Duration // after this a nonce is stale (438)

	MaxAllocationsPerUser int // 0: unlimited
	MaxAllocations        int // 0: unlimited
	// AlternateServers are where new clients are sent (300 Try Alternate
	// with ALTERNATE-SERVER) while the server drains or when
	// MaxAllocations is reached; empty: 486 instead.
	AlternateServers []netip.AddrPort
	// BandwidthLimit is bytes per second per allocation, both directions
	// summed; 0 means unlimited.
	BandwidthLimit int64

	// UnauthRate and UnauthBurst bound requests without valid credentials
	// per source IP (token bucket, requests per second).
	UnauthRate  float64
	UnauthBurst int

	// MaxTCPConnections bounds the peer data connections of one RFC 6062
	// TCP allocation (0: 64); negative turns TCP relay allocations off
	// (Allocate for TCP is answered 442).
	MaxTCPConnections int

	MaxMessageSize    int // bytes; larger STUN messages are dropped
	MaxAttributeCount int

	// StrictChannelNumbers limits ChannelBind to RFC 8656's 0x4000-0x4FFF.
	// By default RFC 5766's 0x4000-0x7FFF is accepted too, because RFC
	// 5766 clients (coturn's turnutils_uclient among them) still use it.
	StrictChannelNumbers bool

	// Datapath is auto, xdp, gso or plain.
	Datapath string
}

// DefaultConfig returns the embedded defaults: UDP and TCP on 0.0.0.0:3478,
// relay ports 49152-65535, the RFC lifetimes and safe limits.
func DefaultConfig() Config {
	return Config{
		Listeners: []ListenerSpec{
			{Network: "udp", Addr: netip.MustParseAddrPort("0.0.0.0:3478")},
			{Network: "tcp", Addr: netip.MustParseAddrPort("0.0.0.0:3478")},
		},
		MinPort:               49152,
		MaxPort:               65535,
		Realm:                 "hybridrelay",
		Users:                 map[string]string{},
		DefaultLifetime:       600 * time.Second,
		MaxLifetime:           3600 * time.Second,
		PermissionLifetime:    300 * time.Second,
		ChannelLifetime:       600 * time.Second,
		NonceLifetime:         10 * time.Minute,
		MaxAllocationsPerUser: 100,
		MaxAllocations:        10000,
		MaxTCPConnections:     defaultMaxTCPConnections,
		UnauthRate:            20,
		UnauthBurst:           40,
		MaxMessageSize:        1500,
		MaxAttributeCount:     32,
		Datapath:              "auto",
	}
}

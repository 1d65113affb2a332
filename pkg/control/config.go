package control

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
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

// relayIPsOf returns cfg.RelayIPs, or the specified listener addresses.
func relayIPsOf(cfg *Config) []netip.Addr {
	var out []netip.Addr
	if len(cfg.RelayIPs) > 0 {
		for _, a := range cfg.RelayIPs {
			out = append(out, a.Unmap())
		}
		return out
	}
	for _, l := range cfg.Listeners {
		a := l.Addr.Addr().Unmap()
		if !a.IsUnspecified() && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// normalizeConfig fills zero values from DefaultConfig and rejects bad
// ones, naming the field.
func normalizeConfig(c *Config) error {
	d := DefaultConfig()
	if len(c.Listeners) == 0 {
		return errors.New("listeners: at least one is required")
	}
	for i, l := range c.Listeners {
		switch l.Network {
		case "udp", "tcp", "tls", "dtls":
		default:
			return fmt.Errorf("listeners[%d].network: %q is not udp, tcp, tls or dtls", i, l.Network)
		}
		if !l.Addr.Addr().IsValid() {
			return fmt.Errorf("listeners[%d].addr: invalid address", i)
		}
	}
	for i, a := range c.RelayIPs {
		if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() {
			return fmt.Errorf("relay_ips[%d]: %v is not a unicast address", i, a)
		}
	}
	if err := validateAlternates(c.AlternateServers); err != nil {
		return err
	}
	if err := checkOtherAddresses(c); err != nil {
		return err
	}
	normalizeTCP(c)
	if len(c.RelayIPs) == 0 && len(relayIPsOf(c)) == 0 {
		return errors.New("relay_ips: required when every listener address is unspecified")
	}
	if c.MinPort == 0 && c.MaxPort == 0 {
		c.MinPort, c.MaxPort = d.MinPort, d.MaxPort
	}
	if c.MinPort == 0 || c.MinPort > c.MaxPort {
		return fmt.Errorf("min_port/max_port: range %d-%d is empty or starts at 0", c.MinPort, c.MaxPort)
	}
	if c.Realm == "" {
		c.Realm = d.Realm
	}
	for _, f := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"default_lifetime", &c.DefaultLifetime, d.DefaultLifetime},
		{"max_lifetime", &c.MaxLifetime, d.MaxLifetime},
		{"permission_lifetime", &c.PermissionLifetime, d.PermissionLifetime},
		{"channel_lifetime", &c.ChannelLifetime, d.ChannelLifetime},
		{"nonce_lifetime", &c.NonceLifetime, d.NonceLifetime},
	} {
		if *f.v < 0 {
			return fmt.Errorf("%s: negative duration %v", f.name, *f.v)
		}
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	if c.MaxLifetime < c.DefaultLifetime {
		return fmt.Errorf("max_lifetime: %v is below default_lifetime %v", c.MaxLifetime, c.DefaultLifetime)
	}
	if c.MaxAllocations < 0 || c.MaxAllocationsPerUser < 0 {
		return errors.New("max_allocations/max_allocations_per_user: negative")
	}
	if c.BandwidthLimit < 0 {
		return errors.New("bandwidth_limit: negative")
	}
	if c.UnauthRate < 0 || c.UnauthBurst < 0 {
		return errors.New("unauth_rate/unauth_burst: negative")
	}
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = d.MaxMessageSize
	}
	if c.MaxMessageSize < 548 || c.MaxMessageSize > 65535 {
		return fmt.Errorf("max_message_size: %d outside 548-65535", c.MaxMessageSize)
	}
	if c.MaxAttributeCount == 0 {
		c.MaxAttributeCount = d.MaxAttributeCount
	}
	if c.MaxAttributeCount < 8 {
		return fmt.Errorf("max_attribute_count: %d below 8", c.MaxAttributeCount)
	}
	if NeedsTLS(c.Listeners) && (c.TLSCertFile == "" || c.TLSKeyFile == "") {
		return errors.New("tls_cert_file/tls_key_file: required by a tls or dtls listener")
	}
	return nil
}

package config

import (
	"net/netip"
	"time"

	"github.com/hybridrelay/hybridrelay/pkg/control"
)

// Settings is the complete, validated configuration of `hybridrelay serve`:
// the control plane's Config plus what the command itself needs (datapath
// tuning, XDP attachment, logging, admin and metrics endpoints).
type Settings struct {
	Listeners []control.ListenerSpec
	RelayIPs  []netip.Addr
	// OtherAddresses: RFC 5780 alternate addresses, one per family.
	OtherAddresses []netip.Addr
	MinPort        uint16
	MaxPort        uint16

	Realm       string
	Users       map[string]string
	AuthSecrets []string

	TLSCert string
	TLSKey  string

	AllowPeers []netip.Prefix
	DenyPeers  []netip.Prefix

	MaxAllocations        int
	MaxAllocationsPerUser int
	// AlternateServers answer new Allocates with 300 Try Alternate while
	// draining or at MaxAllocations.
	AlternateServers []netip.AddrPort
	// MaxTCPConnections per RFC 6062 allocation; 0: TCP relays off.
	MaxTCPConnections int
	BandwidthLimit    int64 // bytes per second per allocation; 0 unlimited
	UnauthRate        float64
	UnauthBurst       int

	DefaultLifetime time.Duration
	MaxLifetime     time.Duration

	// Datapath is auto, xdp, gso or plain.
	Datapath string
	// XDPMode is native, generic or auto (native, falling back to generic).
	XDPMode   string
	XDPIfaces []string
	// XDPMaxChannels sizes the kernel channel maps.
	XDPMaxChannels int
	// XDPPrefilter lets the XDP program drop datagrams to a UDP listener
	// that the server would discard by their framing alone.
	XDPPrefilter bool
	BPFFS        string
	StateFile    string

	BatchSize    int
	Loops        int
	SocketBuffer int
	// MaxQueueDelay bounds a datagram's wait in a receive queue (gso);
	// -1 = off.
	MaxQueueDelay time.Duration

	LogLevel  string // debug, info, warn, error
	LogFormat string // text, json

	// AdminSocket is the unix socket path of the admin endpoint; "" is off.
	AdminSocket string
	// MetricsListen is the Prometheus endpoint address; "" is off.
	MetricsListen string

	// origins records, per key, where its effective value came from.
	origins map[string]Entry
}

// Origin returns where key's effective value came from ("built-in default"
// when nothing set it).
func (s *Settings) Origin(key string) string {
	if e, ok := s.origins[key]; ok {
		return e.Origin
	}
	return "built-in default"
}

// Control returns the control plane configuration. It starts from
// control.DefaultConfig so fields this package does not expose keep their
// defaults (permission and channel lifetimes, message bounds).
func (s *Settings) Control() control.Config {
	c := control.DefaultConfig()
	c.Listeners = append([]control.ListenerSpec(nil), s.Listeners...)
	c.RelayIPs = append([]netip.Addr(nil), s.RelayIPs...)
	c.OtherAddresses = append([]netip.Addr(nil), s.OtherAddresses...)
	c.MinPort, c.MaxPort = s.MinPort, s.MaxPort
	c.Realm = s.Realm
	c.Users = make(map[string]string, len(s.Users))
	for k, v := range s.Users {
		c.Users[k] = v
	}
	c.AuthSecrets = append([]string(nil), s.AuthSecrets...)
	c.TLSCertFile, c.TLSKeyFile = s.TLSCert, s.TLSKey
	c.AllowPeers = append([]netip.Prefix(nil), s.AllowPeers...)
	c.DenyPeers = append([]netip.Prefix(nil), s.DenyPeers...)
	c.MaxAllocations = s.MaxAllocations
	c.MaxAllocationsPerUser = s.MaxAllocationsPerUser
	c.AlternateServers = append([]netip.AddrPort(nil), s.AlternateServers...)
	c.MaxTCPConnections = s.MaxTCPConnections
	if s.MaxTCPConnections == 0 {
		c.MaxTCPConnections = -1 // off; control's 0 means its default
	}
	c.BandwidthLimit = s.BandwidthLimit
	c.UnauthRate, c.UnauthBurst = s.UnauthRate, s.UnauthBurst
	c.DefaultLifetime, c.MaxLifetime = s.DefaultLifetime, s.MaxLifetime
	c.Datapath = s.Datapath
	return c
}

// defaults are the settings before any source is applied: the control
// plane's defaults plus the command's own.
func defaults() *Settings {
	c := control.DefaultConfig()
	return &Settings{
		Listeners:             append([]control.ListenerSpec(nil), c.Listeners...),
		RelayIPs:              append([]netip.Addr(nil), c.RelayIPs...),
		MinPort:               c.MinPort,
		MaxPort:               c.MaxPort,
		Realm:                 c.Realm,
		Users:                 map[string]string{},
		AuthSecrets:           append([]string(nil), c.AuthSecrets...),
		TLSCert:               c.TLSCertFile,
		TLSKey:                c.TLSKeyFile,
		AllowPeers:            append([]netip.Prefix(nil), c.AllowPeers...),
		DenyPeers:             append([]netip.Prefix(nil), c.DenyPeers...),
		MaxAllocations:        c.MaxAllocations,
		MaxAllocationsPerUser: c.MaxAllocationsPerUser,
		MaxTCPConnections:     c.MaxTCPConnections,
		BandwidthLimit:        c.BandwidthLimit,
		UnauthRate:            c.UnauthRate,
		UnauthBurst:           c.UnauthBurst,
		DefaultLifetime:       c.DefaultLifetime,
		MaxLifetime:           c.MaxLifetime,
		Datapath:              c.Datapath,
		XDPMode:               "auto",
		XDPMaxChannels:        16384,
		XDPPrefilter:          true,
		BPFFS:                 "/sys/fs/bpf/hybridrelay",
		BatchSize:             64,
		Loops:                 0,
		SocketBuffer:          4 << 20,
		MaxQueueDelay:         -1,
		LogLevel:              "info",
		LogFormat:             "text",
		AdminSocket:           "/run/hybridrelay/admin.sock",
		MetricsListen:         "",
		origins:               map[string]Entry{},
	}
}

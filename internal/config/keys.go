package config

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hybridrelay/hybridrelay/pkg/control"
)

// Key describes one setting: its name (the long flag name and file key),
// how it is shown in help and documentation, and how a value is applied.
type Key struct {
	Name string
	// Arg is the placeholder shown in help ("ADDR:PORT").
	Arg   string
	Usage string
	// Default is the documented default, as text.
	Default    string
	Repeatable bool
	// NoFile keys exist only as flag and environment variable (config).
	NoFile bool
	set    func(s *Settings, v string) error
	// reset empties a repeatable key before a source that names it.
	reset func(s *Settings)
}

// EnvName is the environment variable for key: HYBRIDRELAY_MIN_PORT.
func EnvName(key string) string {
	return "HYBRIDRELAY_" + strings.ToUpper(strings.ReplaceAll(key, "-", "_"))
}

// Keys returns every setting in documentation order.
func Keys() []Key { return append([]Key(nil), keys...) }

func lookupKey(name string) (Key, bool) {
	for _, k := range keys {
		if k.Name == name {
			return k, true
		}
	}
	return Key{}, false
}

func repeatableKeys() []string {
	var r []string
	for _, k := range keys {
		if k.Repeatable {
			r = append(r, k.Name)
		}
	}
	return r
}

// keys is the table every source (file, environment, flags) goes through, so
// one value is checked by one function whatever its origin.
var keys = []Key{
	{Name: "config", Arg: "FILE", NoFile: true, Default: "embedded default.conf",
		Usage: "read settings from FILE (key = value lines; see docs/configuration.md)",
		set:   func(s *Settings, v string) error { return nil }},
	{Name: "listen", Arg: "ADDR:PORT", Repeatable: true, Default: "0.0.0.0:3478 (UDP and TCP)",
		Usage: "listen on ADDR:PORT; plain = UDP and TCP, or udp://, tcp://, tls://, dtls:// for one transport (repeatable)",
		set:   setListen, reset: func(s *Settings) { s.Listeners = nil }},
	{Name: "relay-ip", Arg: "IP", Repeatable: true, Default: "the listener address, or the host's first global address",
		Usage: "address relayed transport addresses are allocated on; one per family (repeatable)",
		set:   setRelayIP, reset: func(s *Settings) { s.RelayIPs = nil }},
	{Name: "other-address", Arg: "IP", Repeatable: true, Default: "none (RFC 5780 off)",
		Usage: "a second address of this host for RFC 5780 NAT behaviour discovery: UDP listeners also answer Binding from it and from their port+1; one per family (repeatable)",
		set:   setOtherAddress, reset: func(s *Settings) { s.OtherAddresses = nil }},
	{Name: "min-port", Arg: "PORT", Default: "49152", Usage: "lowest relay port",
		set: func(s *Settings, v string) error { p, err := parsePort(v); s.MinPort = p; return err }},
	{Name: "max-port", Arg: "PORT", Default: "65535", Usage: "highest relay port",
		set: func(s *Settings, v string) error { p, err := parsePort(v); s.MaxPort = p; return err }},
	{Name: "realm", Arg: "REALM", Default: "hybridrelay", Usage: "long-term credential realm (RFC 8489 section 9.2)",
		set: setRealm},
	{Name: "user", Arg: "NAME:PASSWORD", Repeatable: true, Default: "none (a random demo user when no credentials are set)",
		Usage: "static long-term credential (repeatable)",
		set:   setUser, reset: func(s *Settings) { s.Users = map[string]string{} }},
	{Name: "auth-secret", Arg: "SECRET", Repeatable: true, Default: "none",
		Usage: "TURN REST API shared secret, coturn's static-auth-secret; all are accepted, for rotation (repeatable)",
		set:   setSecret, reset: func(s *Settings) { s.AuthSecrets = nil }},
	{Name: "tls-cert", Arg: "FILE", Default: "none", Usage: "PEM certificate chain for tls:// and dtls:// listeners (re-read on SIGHUP)",
		set: func(s *Settings, v string) error { s.TLSCert = v; return nonEmpty(v) }},
	{Name: "tls-key", Arg: "FILE", Default: "none", Usage: "PEM private key for tls:// and dtls:// listeners (re-read on SIGHUP)",
		set: func(s *Settings, v string) error { s.TLSKey = v; return nonEmpty(v) }},
	{Name: "allow-peer", Arg: "CIDR", Repeatable: true, Default: "none",
		Usage: "allow relaying to peers in CIDR; wins over deny-peer and the built-in deny list (repeatable)",
		set: func(s *Settings, v string) error {
			p, err := parsePrefix(v)
			s.AllowPeers = append(s.AllowPeers, p)
			return err
		},
		reset: func(s *Settings) { s.AllowPeers = nil }},
	{Name: "deny-peer", Arg: "CIDR", Repeatable: true, Default: "none (the built-in list still applies)",
		Usage: "deny relaying to peers in CIDR, in addition to the built-in list (repeatable)",
		set: func(s *Settings, v string) error {
			p, err := parsePrefix(v)
			s.DenyPeers = append(s.DenyPeers, p)
			return err
		},
		reset: func(s *Settings) { s.DenyPeers = nil }},
	{Name: "max-allocations", Arg: "N", Default: "10000", Usage: "total allocations (0 = unlimited); beyond it Allocate gets 300 to an alternate-server, else 486",
		set: func(s *Settings, v string) error { n, err := parseCount(v); s.MaxAllocations = n; return err }},
	{Name: "max-allocations-per-user", Arg: "N", Default: "100", Usage: "allocations per username (0 = unlimited); beyond it Allocate gets 486",
		set: func(s *Settings, v string) error { n, err := parseCount(v); s.MaxAllocationsPerUser = n; return err }},
	{Name: "alternate-server", Arg: "ADDR:PORT", Repeatable: true, Default: "none",
		Usage: "send new clients here (300 Try Alternate) while draining or at max-allocations; one of the client's family is picked, round robin (repeatable; reloaded on SIGHUP)",
		set:   setAlternate, reset: func(s *Settings) { s.AlternateServers = nil }},
	{Name: "max-tcp-connections", Arg: "N", Default: "64", Usage: "peer connections per RFC 6062 TCP relay allocation; 0 turns TCP relays off (Allocate for TCP gets 442)",
		set: func(s *Settings, v string) error {
			n, err := parseIntRange(v, 0, 65535)
			s.MaxTCPConnections = n
			return err
		}},
	{Name: "bandwidth-limit", Arg: "RATE", Default: "0 (unlimited)",
		Usage: "per-allocation limit, both directions summed: bytes/s, or with a unit (500KB, 2MB, 10Mbit)",
		set:   func(s *Settings, v string) error { n, err := parseRate(v); s.BandwidthLimit = n; return err }},
	{Name: "unauth-rate", Arg: "N", Default: "20", Usage: "unauthenticated responses per second per source IP (per 5-tuple once it holds an allocation or has authenticated)",
		set: func(s *Settings, v string) error { f, err := parsePositiveFloat(v); s.UnauthRate = f; return err }},
	{Name: "unauth-burst", Arg: "N", Default: "40", Usage: "burst of unauthenticated responses (same scopes as unauth-rate)",
		set: func(s *Settings, v string) error { n, err := parseIntRange(v, 1, 1<<20); s.UnauthBurst = n; return err }},
	{Name: "default-lifetime", Arg: "DURATION", Default: "10m", Usage: "allocation lifetime when the client asks for none (RFC 8656 section 7.2)",
		set: func(s *Settings, v string) error { d, err := parseDuration(v); s.DefaultLifetime = d; return err }},
	{Name: "max-lifetime", Arg: "DURATION", Default: "1h", Usage: "upper bound of a requested allocation lifetime",
		set: func(s *Settings, v string) error { d, err := parseDuration(v); s.MaxLifetime = d; return err }},
	{Name: "datapath", Arg: "NAME", Default: "auto", Usage: "auto, xdp (kernel fast path + gso), gso (batched userspace) or plain (one syscall per datagram)",
		set: func(s *Settings, v string) error { s.Datapath = v; return oneOf(v, "auto", "xdp", "gso", "plain") }},
	{Name: "xdp-mode", Arg: "MODE", Default: "auto", Usage: "XDP attach mode: native, generic, or auto (native, else generic)",
		set: func(s *Settings, v string) error { s.XDPMode = v; return oneOf(v, "auto", "native", "generic") }},
	{Name: "xdp-iface", Arg: "IFACE", Repeatable: true, Default: "the interfaces holding the listener and relay addresses",
		Usage: "attach the XDP program to IFACE (repeatable)",
		set:   setIface, reset: func(s *Settings) { s.XDPIfaces = nil }},
	{Name: "xdp-max-channels", Arg: "N", Default: "16384", Usage: "channels the kernel fast path can hold; beyond it channels stay in userspace",
		set: func(s *Settings, v string) error {
			n, err := parseIntRange(v, 1, 1<<20)
			s.XDPMaxChannels = n
			return err
		}},
	{Name: "xdp-prefilter", Arg: "on|off", Default: "on", Usage: "drop in XDP the datagrams to a UDP listener that are neither STUN nor ChannelData (userspace would discard them)",
		set: func(s *Settings, v string) error { s.XDPPrefilter = v == "on"; return oneOf(v, "on", "off") }},
	{Name: "bpffs", Arg: "DIR", Default: "/sys/fs/bpf/hybridrelay", Usage: "directory on a bpf filesystem where maps and links are pinned",
		set: func(s *Settings, v string) error { s.BPFFS = v; return absPath(v) }},
	{Name: "state-file", Arg: "FILE", Default: "none", Usage: "save allocations here so a restart re-adopts them",
		set: func(s *Settings, v string) error { s.StateFile = v; return nonEmpty(v) }},
	{Name: "batch-size", Arg: "N", Default: "64", Usage: "datagrams per receive/send batch (gso datapath)",
		set: func(s *Settings, v string) error { n, err := parseIntRange(v, 1, 1024); s.BatchSize = n; return err }},
	{Name: "loops", Arg: "N", Default: "0 (one per CPU)", Usage: "receive loops per listener (gso datapath)",
		set: func(s *Settings, v string) error { n, err := parseIntRange(v, 0, 1024); s.Loops = n; return err }},
	{Name: "socket-buffer", Arg: "BYTES", Default: "4MiB", Usage: "SO_RCVBUF/SO_SNDBUF per socket (gso datapath): bytes or 512KiB, 8MiB",
		set: func(s *Settings, v string) error { n, err := parseSize(v); s.SocketBuffer = n; return err }},
	{Name: "max-queue-delay", Arg: "DURATION", Default: "off", Usage: "drop received datagrams that waited longer in the socket queue (gso datapath; 100us-1s, or off; 5ms bounds added latency to 10 ms under overload)",
		set: func(s *Settings, v string) error { d, err := parseQueueDelay(v); s.MaxQueueDelay = d; return err }},
	{Name: "log-level", Arg: "LEVEL", Default: "info", Usage: "debug, info, warn or error",
		set: func(s *Settings, v string) error { s.LogLevel = v; return oneOf(v, "debug", "info", "warn", "error") }},
	{Name: "log-format", Arg: "FORMAT", Default: "text", Usage: "text or json",
		set: func(s *Settings, v string) error { s.LogFormat = v; return oneOf(v, "text", "json") }},
	{Name: "admin-socket", Arg: "PATH", Default: "/run/hybridrelay/admin.sock", Usage: "unix socket for `hybridrelay stats` and `maps` (root only); off to disable",
		set: func(s *Settings, v string) error { return setOffPath(&s.AdminSocket, v) }},
	{Name: "metrics-listen", Arg: "ADDR:PORT", Default: "off", Usage: "serve Prometheus metrics on ADDR:PORT (e.g. 127.0.0.1:9641); off to disable",
		set: setMetrics},
}

func nonEmpty(v string) error {
	if strings.TrimSpace(v) == "" {
		return errors.New("must not be empty")
	}
	return nil
}

func oneOf(v string, allowed ...string) error {
	for _, a := range allowed {
		if v == a {
			return nil
		}
	}
	msg := fmt.Sprintf("%q is not one of %s", clip(v), strings.Join(allowed, ", "))
	if s := suggest(v, allowed); s != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", s)
	}
	return errors.New(msg)
}

func parsePort(v string) (uint16, error) {
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("%s is not a port (1-65535)", quoteIfOdd(v))
	}
	return uint16(n), nil
}

// quoteIfOdd quotes a value in a message unless it is a plain token.
func quoteIfOdd(v string) string {
	for _, r := range v {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r == '.' || r == '-' || r == ':' || r == '/') {
			return strconv.Quote(clip(v))
		}
	}
	if v == "" {
		return `""`
	}
	return clip(v)
}

func parseCount(v string) (int, error) { return parseIntRange(v, 0, math.MaxInt32) }

func parseIntRange(v string, lo, hi int) (int, error) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s is not a whole number", quoteIfOdd(v))
	}
	if n < int64(lo) || n > int64(hi) {
		return 0, fmt.Errorf("%d is out of range (%d-%d)", n, lo, hi)
	}
	return int(n), nil
}

func parsePositiveFloat(v string) (float64, error) {
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f <= 0 {
		return 0, fmt.Errorf("%s is not a positive number", quoteIfOdd(v))
	}
	return f, nil
}

func parseDuration(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		if n, err2 := strconv.ParseUint(v, 10, 32); err2 == nil {
			return 0, fmt.Errorf("%s has no unit (write %ds or %dm)", v, n, n/60)
		}
		return 0, fmt.Errorf("%s is not a duration (such as 90s, 10m, 1h)", quoteIfOdd(v))
	}
	if d < time.Second || d > 24*time.Hour {
		return 0, fmt.Errorf("%s is out of range (1s-24h)", v)
	}
	return d, nil
}

// parseQueueDelay reads max-queue-delay: a duration from 100us to 1s, or
// off (returned as -1, no bound).
func parseQueueDelay(v string) (time.Duration, error) {
	if v == "off" {
		return -1, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s is not a duration (such as 5ms, 20ms) or off", quoteIfOdd(v))
	}
	if d < 100*time.Microsecond || d > time.Second {
		return 0, fmt.Errorf("%s is out of range (100us-1s, or off)", v)
	}
	return d, nil
}

// parseRate reads bytes per second: a number with an optional unit. Byte
// units are decimal (KB = 1000 B); bit units are divided by 8.
func parseRate(v string) (int64, error) {
	num, unit := splitUnit(v)
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 {
		return 0, fmt.Errorf("%s is not a rate (bytes per second, or 500KB, 2MB, 10Mbit)", quoteIfOdd(v))
	}
	mult := map[string]float64{"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9,
		"bit": 1.0 / 8, "kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8}
	m, ok := mult[strings.ToLower(unit)]
	if !ok {
		return 0, fmt.Errorf("%s has an unknown unit %q (B, KB, MB, GB, bit, Kbit, Mbit, Gbit)", quoteIfOdd(v), unit)
	}
	r := f * m
	if r > 1e12 {
		return 0, fmt.Errorf("%s is more than 1 TB/s", v)
	}
	return int64(r), nil
}

// parseSize reads a byte count with an optional binary unit (KiB, MiB) or
// decimal one (KB, MB).
func parseSize(v string) (int, error) {
	num, unit := splitUnit(v)
	n, err := strconv.ParseUint(num, 10, 40)
	if err != nil {
		return 0, fmt.Errorf("%s is not a size (bytes, or 512KiB, 8MiB)", quoteIfOdd(v))
	}
	mult := map[string]uint64{"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 1000, "m": 1 << 20, "mib": 1 << 20, "mb": 1e6, "gib": 1 << 30, "gb": 1e9}
	m, ok := mult[strings.ToLower(unit)]
	if !ok {
		return 0, fmt.Errorf("%s has an unknown unit %q (B, KiB, MiB, GiB, KB, MB, GB)", quoteIfOdd(v), unit)
	}
	size := n * m
	if size > 1<<30 {
		return 0, fmt.Errorf("%s is more than 1GiB", v)
	}
	return int(size), nil
}

func splitUnit(v string) (num, unit string) {
	i := len(v)
	for i > 0 && (v[i-1] >= 'a' && v[i-1] <= 'z' || v[i-1] >= 'A' && v[i-1] <= 'Z') {
		i--
	}
	return strings.TrimSpace(v[:i]), v[i:]
}

func absPath(v string) error {
	if v == "" || !filepath.IsAbs(v) {
		return fmt.Errorf("%s is not an absolute path", quoteIfOdd(v))
	}
	return nil
}

func setOffPath(dst *string, v string) error {
	if v == "off" || v == "" {
		*dst = ""
		return nil
	}
	*dst = v
	return absPath(v)
}

func setMetrics(s *Settings, v string) error {
	if v == "off" || v == "" {
		s.MetricsListen = ""
		return nil
	}
	ap, err := netip.ParseAddrPort(v)
	if err != nil {
		return fmt.Errorf("%s is not IP:PORT (such as 127.0.0.1:9641, or off)", quoteIfOdd(v))
	}
	if ap.Addr().Zone() != "" || ap.Addr().IsMulticast() {
		return fmt.Errorf("%s is not a unicast address", v)
	}
	s.MetricsListen = ap.String()
	return nil
}

func setRealm(s *Settings, v string) error {
	// RFC 8489 section 14.9: REALM is fewer than 128 characters (763 bytes)
	// of quoted-string text.
	if v == "" {
		return errors.New("must not be empty")
	}
	if len([]rune(v)) >= 128 {
		return errors.New("is longer than 127 characters (RFC 8489 section 14.9)")
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f || r == '"' || r == '\\' {
			return fmt.Errorf("contains %q, which a STUN REALM cannot carry", r)
		}
	}
	s.Realm = v
	return nil
}

func setUser(s *Settings, v string) error {
	name, pass, ok := strings.Cut(v, ":")
	if !ok {
		return errors.New("is not NAME:PASSWORD")
	}
	if name == "" {
		return errors.New("has an empty user name (expected NAME:PASSWORD)")
	}
	if pass == "" {
		return fmt.Errorf("user %q has an empty password", name)
	}
	// RFC 8489 section 14.3: USERNAME is at most 509 bytes.
	if len(name) > 509 {
		return errors.New("user name is longer than 509 bytes (RFC 8489 section 14.3)")
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return errors.New("user name contains a control character")
		}
	}
	if _, dup := s.Users[name]; dup {
		return fmt.Errorf("user %q is given twice", name)
	}
	if s.Users == nil {
		s.Users = map[string]string{}
	}
	s.Users[name] = pass
	return nil
}

func setSecret(s *Settings, v string) error {
	if v == "" {
		return errors.New("must not be empty")
	}
	for _, have := range s.AuthSecrets {
		if have == v {
			return errors.New("the same secret is given twice")
		}
	}
	s.AuthSecrets = append(s.AuthSecrets, v)
	return nil
}

func setIface(s *Settings, v string) error {
	// IFNAMSIZ is 16 including the terminating NUL.
	if v == "" || len(v) > 15 || strings.ContainsAny(v, "/ \t:") {
		return fmt.Errorf("%s is not an interface name", quoteIfOdd(v))
	}
	s.XDPIfaces = append(s.XDPIfaces, v)
	return nil
}

func setOtherAddress(s *Settings, v string) error {
	a, err := netip.ParseAddr(v)
	if err != nil {
		return fmt.Errorf("%s is not an IP address", quoteIfOdd(v))
	}
	a = a.Unmap()
	switch {
	case a.Zone() != "":
		return fmt.Errorf("%s has a zone; link-local addresses are not supported", v)
	case a.IsUnspecified():
		return fmt.Errorf("%s is unspecified; RFC 5780 needs a specific second address of this host", v)
	case a.IsMulticast():
		return fmt.Errorf("%s is a multicast address", v)
	}
	s.OtherAddresses = append(s.OtherAddresses, a)
	return nil
}

func setRelayIP(s *Settings, v string) error {
	a, err := netip.ParseAddr(v)
	if err != nil {
		return fmt.Errorf("%s is not an IP address", quoteIfOdd(v))
	}
	a = a.Unmap()
	switch {
	case a.Zone() != "" || a.IsLinkLocalUnicast():
		return fmt.Errorf("%s is link-local; peers cannot reach a relay address on it", v)
	case a.IsUnspecified():
		return fmt.Errorf("%s is unspecified; the relay address must be one peers can reach", v)
	case a.IsMulticast():
		return fmt.Errorf("%s is a multicast address", v)
	}
	s.RelayIPs = append(s.RelayIPs, a)
	return nil
}

// setAlternate parses an ALTERNATE-SERVER address: an IP and a port, since
// the attribute carries no name (RFC 8489 section 14.15).
func setAlternate(s *Settings, v string) error {
	ap, err := netip.ParseAddrPort(v)
	if err != nil {
		return fmt.Errorf("%s is not IP:PORT (such as 203.0.113.20:3478 or [2001:db8::20]:3478; names are not allowed, the attribute carries an address)", quoteIfOdd(v))
	}
	a := ap.Addr().Unmap()
	switch {
	case ap.Port() == 0:
		return fmt.Errorf("%s has port 0", v)
	case a.Zone() != "" || a.IsLinkLocalUnicast():
		return fmt.Errorf("%s is link-local; clients cannot be sent there", v)
	case a.IsUnspecified():
		return fmt.Errorf("%s is unspecified; name the other relay's address", v)
	case a.IsMulticast():
		return fmt.Errorf("%s is a multicast address", v)
	}
	s.AlternateServers = append(s.AlternateServers, netip.AddrPortFrom(a, ap.Port()))
	return nil
}

// setListen parses [udp://|tcp://|tls://|dtls://]ADDR:PORT. Without a scheme the
// address is served over UDP and TCP, the usual pair for TURN on 3478.
func setListen(s *Settings, v string) error {
	networks := []string{"udp", "tcp"}
	rest := v
	if scheme, after, ok := strings.Cut(v, "://"); ok {
		switch scheme {
		case "udp", "tcp", "tls", "dtls":
			networks = []string{scheme}
		default:
			msg := fmt.Sprintf("%q is not a listener scheme (udp://, tcp://, tls://, dtls://)", clip(scheme+"://"))
			if m := suggest(scheme, []string{"udp", "tcp", "tls", "dtls"}); m != "" {
				msg += fmt.Sprintf("; did you mean %s://?", m)
			}
			return errors.New(msg)
		}
		rest = after
	}
	ap, err := netip.ParseAddrPort(rest)
	if err != nil {
		if _, aerr := netip.ParseAddr(strings.Trim(rest, "[]")); aerr == nil {
			return fmt.Errorf("%s has no port (write %s)", quoteIfOdd(v), withPort(rest))
		}
		return fmt.Errorf("%s is not ADDR:PORT (such as 0.0.0.0:3478, [::]:3478, tls://[::]:5349)", quoteIfOdd(v))
	}
	a := ap.Addr().Unmap()
	if a.Zone() != "" {
		return fmt.Errorf("%s has a zone; link-local listeners are not supported", v)
	}
	if a.IsMulticast() {
		return fmt.Errorf("%s is a multicast address", v)
	}
	for _, n := range networks {
		spec := control.ListenerSpec{Network: n, Addr: netip.AddrPortFrom(a, ap.Port())}
		for _, have := range s.Listeners {
			if have == spec {
				return fmt.Errorf("%s://%s is given twice", n, spec.Addr)
			}
		}
		s.Listeners = append(s.Listeners, spec)
	}
	return nil
}

func withPort(a string) string {
	a = strings.Trim(a, "[]")
	if strings.Contains(a, ":") {
		return "[" + a + "]:3478"
	}
	return a + ":3478"
}

func parsePrefix(v string) (netip.Prefix, error) {
	if !strings.Contains(v, "/") {
		a, err := netip.ParseAddr(v)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%s is not a CIDR (such as 198.51.100.0/24 or 2001:db8::/32) or an IP address", quoteIfOdd(v))
		}
		if a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%s has a zone, which a peer rule cannot match", v)
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(v)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%s is not a CIDR (such as 198.51.100.0/24 or 2001:db8::/32)", quoteIfOdd(v))
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fmt.Errorf("%s has host bits set; did you mean %s?", v, m)
	}
	return p, nil
}

package config

import (
	_ "embed"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// DefaultFile is the embedded configuration `hybridrelay serve` runs when no
// --config is given. It is documented line by line.
//
//go:embed default.conf
var DefaultFile []byte

// DefaultFileName is how the embedded file is named in messages.
const DefaultFileName = "default.conf (embedded)"

// Sources are the inputs of Load, lowest precedence first (after the
// built-in defaults).
type Sources struct {
	// FileName names the configuration file in messages; FileData is its
	// content. Empty FileName: no file.
	FileName string
	FileData []byte
	// Env is the process environment as "KEY=value" strings (os.Environ()).
	// Only HYBRIDRELAY_* variables are read.
	Env []string
	// Flags are the settings given on the command line, in order. Their
	// Origin should be "flag --name".
	Flags []Entry
}

// ignoredEnv are HYBRIDRELAY_* variables that are not settings (test and
// debugging switches); they are neither applied nor warned about.
var ignoredEnv = map[string]bool{
	"HYBRIDRELAY_REQUIRE_PRIV": true,
	"HYBRIDRELAY_DEBUG":        true,
}

// EnvEntries turns HYBRIDRELAY_* variables into entries. Repeatable keys take
// a comma-separated list. Unknown HYBRIDRELAY_* names are returned as
// warnings (not errors: other tools share the prefix).
func EnvEntries(env []string) (entries []Entry, warnings []string) {
	byEnv := map[string]Key{}
	var names []string
	for _, k := range keys {
		byEnv[EnvName(k.Name)] = k
		names = append(names, EnvName(k.Name))
	}
	sorted := append([]string(nil), env...)
	sort.Strings(sorted) // deterministic order whatever the environment's
	for _, kv := range sorted {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, "HYBRIDRELAY_") || ignoredEnv[name] {
			continue
		}
		k, known := byEnv[name]
		if !known {
			w := fmt.Sprintf("environment %s is not a hybridrelay setting; ignored", name)
			if s := suggest(name, names); s != "" {
				w += fmt.Sprintf(" (did you mean %s?)", s)
			}
			warnings = append(warnings, w)
			continue
		}
		origin := "environment " + name
		if k.Repeatable {
			for _, part := range strings.Split(value, ",") {
				entries = append(entries, Entry{Key: k.Name, Value: strings.TrimSpace(part), Origin: origin})
			}
			continue
		}
		entries = append(entries, Entry{Key: k.Name, Value: value, Origin: origin})
	}
	return entries, warnings
}

// Load builds the settings: built-in defaults, then the file, then the
// environment, then the flags. Every error names its origin and key; the
// warnings are for the log.
func Load(src Sources) (*Settings, []string, error) {
	s := defaults()
	var layers [][]Entry
	if src.FileName != "" {
		fileEntries, err := Parse(src.FileName, src.FileData)
		if err != nil {
			return nil, nil, err
		}
		layers = append(layers, fileEntries)
	}
	envEntries, warnings := EnvEntries(src.Env)
	layers = append(layers, envEntries, src.Flags)
	for _, layer := range layers {
		if err := s.apply(layer); err != nil {
			return nil, warnings, err
		}
	}
	if err := s.validate(); err != nil {
		return nil, warnings, err
	}
	return s, warnings, nil
}

// apply sets one source's entries. A repeatable key named in this source
// first loses the values earlier sources gave it.
func (s *Settings) apply(entries []Entry) error {
	reset := map[string]bool{}
	for _, e := range entries {
		k, ok := lookupKey(e.Key)
		if !ok {
			return &Error{Origin: e.Origin, File: e.File, Line: e.Line, Key: e.Key, Err: unknownKeyError(e.Key)}
		}
		if k.Repeatable && !reset[k.Name] {
			k.reset(s)
			reset[k.Name] = true
		}
		if err := k.set(s, e.Value); err != nil {
			return &Error{Origin: e.Origin, File: e.File, Line: e.Line, Key: e.Key, Err: err}
		}
		s.origins[k.Name] = e
	}
	return nil
}

// keyError builds an error about a key whose value is fine alone but not
// together with others; it points at where the key was set.
// When several keys are involved, it names the first one that some source
// set (a default is rarely the operator's mistake).
func (s *Settings) keyError(err error, involved ...string) error {
	key := involved[0]
	for _, k := range involved {
		if _, ok := s.origins[k]; ok {
			key = k
			break
		}
	}
	if e, ok := s.origins[key]; ok && e.File != "" {
		return &Error{Origin: e.Origin, File: e.File, Line: e.Line, Key: key, Err: err}
	}
	if strings.Contains(err.Error(), s.Origin(key)) {
		// The message already says where the values came from.
		return &Error{Key: key, Err: err}
	}
	return &Error{Origin: fmt.Sprintf("%s (%s)", key, s.Origin(key)), Key: key, Err: err}
}

// validate checks what single values cannot: ranges, families, and the
// settings that need each other.
func (s *Settings) validate() error {
	if s.MinPort > s.MaxPort {
		return s.keyError(fmt.Errorf("min-port %d (%s) is greater than max-port %d (%s)", s.MinPort, s.Origin("min-port"), s.MaxPort, s.Origin("max-port")), "min-port", "max-port")
	}
	if len(s.Listeners) == 0 {
		return s.keyError(errors.New("no listener: give at least one --listen ADDR:PORT"), "listen")
	}
	var tlsListener string
	for _, l := range s.Listeners {
		if (l.Network == "tls" || l.Network == "dtls") && tlsListener == "" {
			tlsListener = l.Network + "://" + l.Addr.String()
		}
	}
	if tlsListener != "" {
		switch {
		case s.TLSCert == "" && s.TLSKey == "":
			return s.keyError(fmt.Errorf("%s needs tls-cert and tls-key", tlsListener), "listen")
		case s.TLSCert == "":
			return s.keyError(fmt.Errorf("%s needs tls-cert as well as tls-key", tlsListener), "tls-key", "listen")
		case s.TLSKey == "":
			return s.keyError(fmt.Errorf("%s needs tls-key as well as tls-cert", tlsListener), "tls-cert", "listen")
		}
	} else if (s.TLSCert == "") != (s.TLSKey == "") {
		if s.TLSCert == "" {
			return s.keyError(errors.New("tls-key is set but tls-cert is not"), "tls-key")
		}
		return s.keyError(errors.New("tls-cert is set but tls-key is not"), "tls-cert")
	}
	// Relay addresses: at most one per family is used for an allocation
	// (RFC 8656 section 7.2, REQUESTED-ADDRESS-FAMILY), so a second one of a
	// family would be dead configuration.
	var v4, v6 netip.Addr
	for _, a := range s.RelayIPs {
		prev := &v6
		if a.Is4() {
			prev = &v4
		}
		if prev.IsValid() {
			return s.keyError(fmt.Errorf("%s and %s are both %s; give one relay-ip per address family", *prev, a, family(a)), "relay-ip")
		}
		*prev = a
	}
	// A relay address of a family needs a listener that can be reached in
	// some family; an IPv6 relay address with only IPv4 listeners is fine
	// (RFC 8656 ADDITIONAL-ADDRESS-FAMILY), but specific listener addresses
	// must be consistent with the relay addresses' reachability: a loopback
	// relay address next to a public listener is almost certainly a mistake.
	for _, a := range s.RelayIPs {
		if a.IsLoopback() {
			for _, l := range s.Listeners {
				if !l.Addr.Addr().IsLoopback() && !l.Addr.Addr().IsUnspecified() {
					return s.keyError(fmt.Errorf("%s is loopback but listener %s is not: remote peers could not reach the relay address", a, l.Addr), "relay-ip", "listen")
				}
			}
		}
	}
	if err := s.validateOtherAddresses(); err != nil {
		return err
	}
	if s.MaxAllocations > 0 && s.MaxAllocationsPerUser > s.MaxAllocations {
		return s.keyError(fmt.Errorf("max-allocations-per-user %d is greater than max-allocations %d", s.MaxAllocationsPerUser, s.MaxAllocations), "max-allocations-per-user", "max-allocations")
	}
	if s.DefaultLifetime > s.MaxLifetime {
		return s.keyError(fmt.Errorf("default-lifetime %s is longer than max-lifetime %s", s.DefaultLifetime, s.MaxLifetime), "default-lifetime", "max-lifetime")
	}
	if s.Datapath == "plain" || s.Datapath == "gso" {
		if len(s.XDPIfaces) > 0 {
			return s.keyError(fmt.Errorf("xdp-iface is set but datapath is %s; use --datapath xdp or auto", s.Datapath), "xdp-iface", "datapath")
		}
	}
	return nil
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// HasCredentials reports whether any user or REST secret is configured.
func (s *Settings) HasCredentials() bool { return len(s.Users) > 0 || len(s.AuthSecrets) > 0 }

// unknownKeyError explains an unknown key, suggesting the closest one and
// translating coturn's names, which operators often bring along.
func unknownKeyError(key string) error {
	if m, ok := coturnNames[key]; ok {
		return fmt.Errorf("unknown key (coturn's %s is %s here)", key, m)
	}
	var names []string
	for _, k := range keys {
		names = append(names, k.Name)
	}
	if s := suggest(key, names); s != "" {
		return fmt.Errorf("unknown key; did you mean %q?", s)
	}
	return errors.New("unknown key (see docs/configuration.md for the list)")
}

// coturnNames maps turnserver.conf names to ours.
var coturnNames = map[string]string{
	"listening-ip":          "listen",
	"listening-port":        "listen",
	"tls-listening-port":    "listen = tls://ADDR:PORT (and dtls://ADDR:PORT for DTLS)",
	"no-tcp-relay":          "max-tcp-connections = 0",
	"alt-listening-port":    "other-address IP (the alternate port is always the listener's port + 1)",
	"relay-ip":              "relay-ip",
	"external-ip":           "relay-ip",
	"static-auth-secret":    "auth-secret",
	"cert":                  "tls-cert",
	"pkey":                  "tls-key",
	"allowed-peer-ip":       "allow-peer",
	"denied-peer-ip":        "deny-peer",
	"total-quota":           "max-allocations",
	"user-quota":            "max-allocations-per-user",
	"max-bps":               "bandwidth-limit",
	"max-allocate-lifetime": "max-lifetime",
}

// suggest returns the candidate closest to s (edit distance at most 2 or a
// third of its length, whichever is larger), or "".
func suggest(s string, candidates []string) string {
	best, bestD := "", 1<<30
	limit := len(s) / 3
	if limit < 2 {
		limit = 2
	}
	ls := strings.ToLower(s)
	for _, c := range candidates {
		d := editDistance(ls, strings.ToLower(c))
		if d < bestD {
			best, bestD = c, d
		}
	}
	if bestD <= limit {
		return best
	}
	return ""
}

// editDistance is the Levenshtein distance, bounded in cost by the short
// strings it is used on (keys, flag names).
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 1 << 30
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// validateOtherAddresses checks the RFC 5780 alternate addresses: one per
// family, not a listener address, and a UDP listener on a specific
// address of the family to pair with (the responses come from both).
func (s *Settings) validateOtherAddresses() error {
	var v4, v6 netip.Addr
	for _, a := range s.OtherAddresses {
		prev := &v6
		if a.Is4() {
			prev = &v4
		}
		if prev.IsValid() {
			return s.keyError(fmt.Errorf("%s and %s are both %s; give one other-address per address family", *prev, a, family(a)), "other-address")
		}
		*prev = a
		paired := false
		for _, l := range s.Listeners {
			la := l.Addr.Addr()
			if la == a {
				return s.keyError(fmt.Errorf("%s is also a listener address; other-address must be a second address of this host", a), "other-address", "listen")
			}
			if l.Network == "udp" && !la.IsUnspecified() && la.Is4() == a.Is4() {
				paired = true
			}
		}
		if !paired {
			return s.keyError(fmt.Errorf("%s needs a udp listener on a specific %s address to pair with (RFC 5780 answers from both addresses)", a, family(a)), "other-address", "listen")
		}
	}
	return nil
}

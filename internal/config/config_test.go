package config

import (
	"errors"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/pkg/control"
)

func TestDefaultFileMatchesControlDefaults(t *testing.T) {
	s, warn, err := Load(Sources{FileName: DefaultFileName, FileData: DefaultFile})
	if err != nil {
		t.Fatalf("embedded default.conf: %v", err)
	}
	if len(warn) != 0 {
		t.Fatalf("warnings: %v", warn)
	}
	got := s.Control()
	want := control.DefaultConfig()
	// The file says what the code defaults say; if one changes the other
	// must follow, or the documentation lies.
	want.AllowPeers, want.DenyPeers, want.AuthSecrets = nil, nil, nil
	got.AllowPeers, got.DenyPeers, got.AuthSecrets = nil, nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("default.conf gives\n%+v\nwant control.DefaultConfig()\n%+v", got, want)
	}
	if s.HasCredentials() {
		t.Fatal("default.conf must not configure credentials (the demo user is made at start-up)")
	}
	d := defaults()
	d.origins = s.origins
	if !reflect.DeepEqual(s, d) {
		t.Fatalf("default.conf differs from built-in defaults:\n%+v\n%+v", s, d)
	}
}

func TestDefaultFileDocumentsEveryKey(t *testing.T) {
	for _, k := range Keys() {
		if k.NoFile {
			continue
		}
		if !strings.Contains(string(DefaultFile), "\n"+k.Name+" = ") && !strings.Contains(string(DefaultFile), "\n#"+k.Name+" = ") {
			t.Errorf("default.conf does not show key %q", k.Name)
		}
	}
}

func TestParseSyntax(t *testing.T) {
	tests := []struct {
		name, in string
		want     []Entry // Key, Value, Line only
		err      string
	}{
		{name: "empty", in: ""},
		{name: "comments and blanks", in: "# c\n\n   # indented\n\t\n"},
		{name: "simple", in: "realm = example.org\n", want: []Entry{{Key: "realm", Value: "example.org", Line: 1}}},
		{name: "no spaces", in: "min-port=1000", want: []Entry{{Key: "min-port", Value: "1000", Line: 1}}},
		{name: "crlf and bom", in: "\xef\xbb\xbfrealm = a\r\nmin-port = 2\r\n", want: []Entry{{Key: "realm", Value: "a", Line: 1}, {Key: "min-port", Value: "2", Line: 2}}},
		{name: "inline comment", in: "realm = a # the realm", want: []Entry{{Key: "realm", Value: "a", Line: 1}}},
		{name: "hash inside value", in: "user = bob:pa#ss", want: []Entry{{Key: "user", Value: "bob:pa#ss", Line: 1}}},
		{name: "double quoted", in: `user = "bob:pa # ss\"x"`, want: []Entry{{Key: "user", Value: `bob:pa # ss"x`, Line: 1}}},
		{name: "single quoted", in: `auth-secret = 'a\b # c' # comment`, want: []Entry{{Key: "auth-secret", Value: `a\b # c`, Line: 1}}},
		{name: "empty quoted", in: `metrics-listen = ""`, want: []Entry{{Key: "metrics-listen", Value: "", Line: 1}}},
		{name: "repeatable appends", in: "user = a:1\n\nuser = b:2", want: []Entry{{Key: "user", Value: "a:1", Line: 1}, {Key: "user", Value: "b:2", Line: 3}}},
		{name: "equals in value", in: "auth-secret = a=b==", want: []Entry{{Key: "auth-secret", Value: "a=b==", Line: 1}}},
		{name: "missing equals", in: "\nrealm example", err: `f.conf:2: expected "key = value", but there is no "=" after "realm"`},
		{name: "missing equals does not echo a secret", in: "auth-secret: s3cr3t", err: `f.conf:1: expected "key = value", but there is no "=" after "auth-secret:"`},
		{name: "missing key", in: "= x", err: `f.conf:1: missing key before "="`},
		{name: "missing value", in: "realm =", err: `f.conf:1: key "realm": has no value`},
		{name: "unknown key suggests", in: "min_port = 1", err: `f.conf:1: key "min_port": unknown key; did you mean "min-port"?`},
		{name: "unknown key coturn", in: "static-auth-secret = x", err: `f.conf:1: key "static-auth-secret": unknown key (coturn's static-auth-secret is auth-secret here)`},
		{name: "unknown key far", in: "zzzzzzzz = 1", err: `f.conf:1: key "zzzzzzzz": unknown key (see docs/configuration.md`},
		{name: "duplicate scalar", in: "realm = a\nrealm = b", err: `f.conf:2: key "realm": already set on line 1`},
		{name: "config in file", in: "config = x", err: `f.conf:1: key "config": cannot be set in a configuration file`},
		{name: "unterminated quote", in: `realm = "abc`, err: `f.conf:1: key "realm": unterminated "quoted" value`},
		{name: "junk after quote", in: `realm = "abc" def`, err: `f.conf:1: key "realm": unexpected text after the quoted value`},
		{name: "bad escape", in: `auth-secret = "s3cr\qt"`, err: `f.conf:1: key "auth-secret": bad escape in "quoted" value`},
		{name: "bad key syntax", in: "re alm = x", err: `f.conf:1: "re alm" is not a key`},
		{name: "invalid utf8", in: "realm = \xff", err: `f.conf:1: line is not valid UTF-8`},
		{name: "long line", in: "realm = " + strings.Repeat("a", 9000), err: "f.conf:1: line is longer than 8192 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse("f.conf", []byte(tt.in))
			if tt.err != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.err) {
					t.Fatalf("error %v, want prefix %q", err, tt.err)
				}
				var ce *Error
				if !errors.As(err, &ce) || ce.Line == 0 || ce.File != "f.conf" {
					t.Fatalf("error %#v does not carry file and line", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var trimmed []Entry
			for _, e := range got {
				trimmed = append(trimmed, Entry{Key: e.Key, Value: e.Value, Line: e.Line})
			}
			if !reflect.DeepEqual(trimmed, tt.want) {
				t.Fatalf("got %+v\nwant %+v", trimmed, tt.want)
			}
		})
	}
}

// TestErrorsDoNotEchoSecrets: configuration errors end up in logs; the
// value of a user or auth-secret line must never be part of them.
func TestErrorsDoNotEchoSecrets(t *testing.T) {
	for _, in := range []string{
		"auth-secret: s3cr3t",
		`auth-secret = "s3cr3t\q"`,
		`auth-secret = "x" s3cr3t`,
		"auth-secret = s3cr3t\nauth-secret = s3cr3t",
		"user = s3cr3t",
		"user = alice:s3cr3t\nuser = alice:s3cr3t",
		"user = :s3cr3t",
	} {
		_, _, err := Load(Sources{FileName: "x.conf", FileData: []byte(in)})
		if err == nil {
			t.Errorf("%q: no error", in)
			continue
		}
		if strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("%q: error echoes the secret: %v", in, err)
		}
	}
}

func TestLoadValues(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		name  string
		file  string
		check func(t *testing.T, s *Settings)
		err   string
	}{
		{name: "listen plain is udp+tcp", file: "listen = 127.0.0.1:3478", check: func(t *testing.T, s *Settings) {
			want := []control.ListenerSpec{{Network: "udp", Addr: ap("127.0.0.1:3478")}, {Network: "tcp", Addr: ap("127.0.0.1:3478")}}
			if !reflect.DeepEqual(s.Listeners, want) {
				t.Fatalf("%v", s.Listeners)
			}
		}},
		{name: "listen schemes", file: "listen = udp://[::1]:3478\nlisten = tls://[::]:5349\ntls-cert = /c\ntls-key = /k", check: func(t *testing.T, s *Settings) {
			want := []control.ListenerSpec{{Network: "udp", Addr: ap("[::1]:3478")}, {Network: "tls", Addr: ap("[::]:5349")}}
			if !reflect.DeepEqual(s.Listeners, want) {
				t.Fatalf("%v", s.Listeners)
			}
		}},
		{name: "listen mapped address unmapped", file: "listen = udp://[::ffff:127.0.0.1]:1", check: func(t *testing.T, s *Settings) {
			if s.Listeners[0].Addr != ap("127.0.0.1:1") {
				t.Fatalf("%v", s.Listeners)
			}
		}},
		{name: "listen bad scheme", file: "listen = ud://1.2.3.4:5", err: `x.conf:1: key "listen": "ud://" is not a listener scheme (udp://, tcp://, tls://, dtls://); did you mean udp://?`},
		{name: "listen no port", file: "listen = 1.2.3.4", err: `x.conf:1: key "listen": 1.2.3.4 has no port (write 1.2.3.4:3478)`},
		{name: "listen v6 no port", file: "listen = ::1", err: `x.conf:1: key "listen": ::1 has no port (write [::1]:3478)`},
		{name: "listen hostname", file: "listen = example.org:3478", err: `x.conf:1: key "listen": example.org:3478 is not ADDR:PORT`},
		{name: "listen twice", file: "listen = 1.2.3.4:5\nlisten = udp://1.2.3.4:5", err: `x.conf:2: key "listen": udp://1.2.3.4:5 is given twice`},
		{name: "tls needs cert", file: "listen = tls://0.0.0.0:5349", err: `x.conf:1: key "listen": tls://0.0.0.0:5349 needs tls-cert and tls-key`},
		{name: "dtls needs cert", file: "listen = dtls://0.0.0.0:5349", err: `x.conf:1: key "listen": dtls://0.0.0.0:5349 needs tls-cert and tls-key`},
		{name: "dtls scheme", file: "listen = dtls://[::1]:5349\ntls-cert = /c\ntls-key = /k", check: func(t *testing.T, s *Settings) {
			want := []control.ListenerSpec{{Network: "dtls", Addr: ap("[::1]:5349")}}
			if !reflect.DeepEqual(s.Listeners, want) {
				t.Fatalf("listeners %v, want %v", s.Listeners, want)
			}
		}},
		{name: "tls needs key", file: "listen = tls://0.0.0.0:5349\ntls-cert = /c", err: `x.conf:2: key "tls-cert": tls://0.0.0.0:5349 needs tls-key as well as tls-cert`},
		{name: "key without cert", file: "tls-key = /k", err: `x.conf:1: key "tls-key": tls-key is set but tls-cert is not`},
		{name: "max port out of range", file: "\n\nmax-port = 70000", err: `x.conf:3: key "max-port": 70000 is not a port (1-65535)`},
		{name: "port not number", file: "min-port = abc", err: `x.conf:1: key "min-port": abc is not a port (1-65535)`},
		{name: "port zero", file: "min-port = 0", err: `x.conf:1: key "min-port": 0 is not a port (1-65535)`},
		{name: "min greater than max", file: "min-port = 60000\nmax-port = 50000", err: `x.conf:1: key "min-port": min-port 60000 (x.conf:1) is greater than max-port 50000 (x.conf:2)`},
		{name: "max below default min", file: "\nmax-port = 40000", err: `x.conf:2: key "max-port": min-port 49152 (built-in default) is greater than max-port 40000 (x.conf:2)`},
		{name: "ports ok", file: "min-port = 50000\nmax-port = 50000", check: func(t *testing.T, s *Settings) {
			if s.MinPort != 50000 || s.MaxPort != 50000 {
				t.Fatal(s.MinPort, s.MaxPort)
			}
		}},
		{name: "relay ip", file: "relay-ip = 192.0.2.1\nrelay-ip = 2001:db8::1", check: func(t *testing.T, s *Settings) {
			if len(s.RelayIPs) != 2 || s.RelayIPs[1] != netip.MustParseAddr("2001:db8::1") {
				t.Fatal(s.RelayIPs)
			}
		}},
		{name: "relay ip two v4", file: "relay-ip = 192.0.2.1\nrelay-ip = 192.0.2.2", err: `x.conf:2: key "relay-ip": 192.0.2.1 and 192.0.2.2 are both IPv4; give one relay-ip per address family`},
		{name: "coturn alt-listening-port", file: "alt-listening-port = 3479", err: `x.conf:1: key "alt-listening-port": unknown key (coturn's alt-listening-port is other-address IP (the alternate port is always the listener's port + 1) here)`},
		{name: "tcp relays off", file: "max-tcp-connections = 0", check: func(t *testing.T, s *Settings) {
			if c := s.Control(); c.MaxTCPConnections != -1 {
				t.Fatalf("control MaxTCPConnections %d, want -1 (off)", c.MaxTCPConnections)
			}
		}},
		{name: "tcp connections", file: "max-tcp-connections = 8", check: func(t *testing.T, s *Settings) {
			if c := s.Control(); c.MaxTCPConnections != 8 {
				t.Fatalf("control MaxTCPConnections %d, want 8", c.MaxTCPConnections)
			}
		}},
		{name: "coturn no-tcp-relay", file: "no-tcp-relay = 1", err: `x.conf:1: key "no-tcp-relay": unknown key (coturn's no-tcp-relay is max-tcp-connections = 0 here)`},
		{name: "other address", file: "listen = udp://192.0.2.1:3478\nother-address = 192.0.2.2", check: func(t *testing.T, s *Settings) {
			if c := s.Control(); len(c.OtherAddresses) != 1 || c.OtherAddresses[0] != netip.MustParseAddr("192.0.2.2") {
				t.Fatal(c.OtherAddresses)
			}
		}},
		{name: "other address two v4", file: "listen = udp://192.0.2.1:3478\nother-address = 192.0.2.2\nother-address = 192.0.2.3", err: `x.conf:3: key "other-address": 192.0.2.2 and 192.0.2.3 are both IPv4; give one other-address per address family`},
		{name: "other address is listener", file: "listen = udp://192.0.2.1:3478\nother-address = 192.0.2.1", err: `x.conf:2: key "other-address": 192.0.2.1 is also a listener address; other-address must be a second address of this host`},
		{name: "other address wildcard listener", file: "listen = 0.0.0.0:3478\nother-address = 192.0.2.2", err: `x.conf:2: key "other-address": 192.0.2.2 needs a udp listener on a specific IPv4 address to pair with (RFC 5780 answers from both addresses)`},
		{name: "other address bad", file: "other-address = 192.0.2", err: `x.conf:1: key "other-address": 192.0.2 is not an IP address`},
		{name: "relay ip unspecified", file: "relay-ip = 0.0.0.0", err: `x.conf:1: key "relay-ip": 0.0.0.0 is unspecified`},
		{name: "relay ip link local", file: "relay-ip = fe80::1", err: `x.conf:1: key "relay-ip": fe80::1 is link-local`},
		{name: "relay ip bad", file: "relay-ip = 1.2.3", err: `x.conf:1: key "relay-ip": 1.2.3 is not an IP address`},
		{name: "relay loopback with public listener", file: "listen = 192.0.2.1:3478\nrelay-ip = 127.0.0.1", err: `x.conf:2: key "relay-ip": 127.0.0.1 is loopback but listener 192.0.2.1:3478 is not`},
		{name: "user", file: "user = alice:pw:with:colons\nuser = bob:x", check: func(t *testing.T, s *Settings) {
			if s.Users["alice"] != "pw:with:colons" || s.Users["bob"] != "x" || !s.HasCredentials() {
				t.Fatal(s.Users)
			}
		}},
		{name: "user no colon", file: "user = alice", err: `x.conf:1: key "user": is not NAME:PASSWORD`},
		{name: "user empty password", file: "user = alice:", err: `x.conf:1: key "user": user "alice" has an empty password`},
		{name: "user twice", file: "user = a:1\nuser = a:2", err: `x.conf:2: key "user": user "a" is given twice`},
		{name: "secret twice", file: "auth-secret = s\nauth-secret = s", err: `x.conf:2: key "auth-secret": the same secret is given twice`},
		{name: "realm with quote", file: `realm = 'a"b'`, err: `x.conf:1: key "realm": contains '"'`},
		{name: "cidr", file: "allow-peer = 10.0.0.0/8\nallow-peer = 2001:db8::1\ndeny-peer = 192.0.2.0/24", check: func(t *testing.T, s *Settings) {
			want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::1/128")}
			if !reflect.DeepEqual(s.AllowPeers, want) || s.DenyPeers[0] != netip.MustParsePrefix("192.0.2.0/24") {
				t.Fatal(s.AllowPeers, s.DenyPeers)
			}
		}},
		{name: "cidr host bits", file: "allow-peer = 10.1.2.3/8", err: `x.conf:1: key "allow-peer": 10.1.2.3/8 has host bits set; did you mean 10.0.0.0/8?`},
		{name: "cidr bad", file: "deny-peer = 10.0.0.0/33", err: `x.conf:1: key "deny-peer": 10.0.0.0/33 is not a CIDR`},
		{name: "datapath suggest", file: "datapath = gs0", err: `x.conf:1: key "datapath": "gs0" is not one of auto, xdp, gso, plain (did you mean "gso"?)`},
		{name: "xdp iface with plain", file: "datapath = plain\nxdp-iface = eth0", err: `x.conf:2: key "xdp-iface": xdp-iface is set but datapath is plain`},
		{name: "bandwidth units", file: "bandwidth-limit = 10Mbit", check: func(t *testing.T, s *Settings) {
			if s.BandwidthLimit != 1250000 {
				t.Fatal(s.BandwidthLimit)
			}
		}},
		{name: "bandwidth bad unit", file: "bandwidth-limit = 5 furlongs", err: `x.conf:1: key "bandwidth-limit": "5 furlongs" has an unknown unit "furlongs"`},
		{name: "socket buffer", file: "socket-buffer = 8MiB", check: func(t *testing.T, s *Settings) {
			if s.SocketBuffer != 8<<20 {
				t.Fatal(s.SocketBuffer)
			}
		}},
		{name: "socket buffer huge", file: "socket-buffer = 4GiB", err: `x.conf:1: key "socket-buffer": 4GiB is more than 1GiB`},
		{name: "batch size range", file: "batch-size = 0", err: `x.conf:1: key "batch-size": 0 is out of range (1-1024)`},
		{name: "quota per user above total", file: "max-allocations = 10\nmax-allocations-per-user = 20", err: `x.conf:2: key "max-allocations-per-user": max-allocations-per-user 20 is greater than max-allocations 10`},
		{name: "duration no unit", file: "max-lifetime = 3600", err: `x.conf:1: key "max-lifetime": 3600 has no unit (write 3600s or 60m)`},
		{name: "durations", file: "default-lifetime = 5m\nmax-lifetime = 2h", check: func(t *testing.T, s *Settings) {
			if s.DefaultLifetime != 5*time.Minute || s.MaxLifetime != 2*time.Hour {
				t.Fatal(s.DefaultLifetime, s.MaxLifetime)
			}
		}},
		{name: "default longer than max", file: "default-lifetime = 2h", err: `x.conf:1: key "default-lifetime": default-lifetime 2h0m0s is longer than max-lifetime 1h0m0s`},
		{name: "admin off metrics on", file: "admin-socket = off\nmetrics-listen = 127.0.0.1:9641", check: func(t *testing.T, s *Settings) {
			if s.AdminSocket != "" || s.MetricsListen != "127.0.0.1:9641" {
				t.Fatal(s.AdminSocket, s.MetricsListen)
			}
		}},
		{name: "admin relative", file: "admin-socket = admin.sock", err: `x.conf:1: key "admin-socket": admin.sock is not an absolute path`},
		{name: "metrics bad", file: "metrics-listen = localhost:9641", err: `x.conf:1: key "metrics-listen": localhost:9641 is not IP:PORT`},
		{name: "log level", file: "log-level = verbose", err: `x.conf:1: key "log-level": "verbose" is not one of debug, info, warn, error`},
		{name: "alternate servers", file: "alternate-server = 198.18.7.1:3478\nalternate-server = [::ffff:198.18.7.2]:3479\nalternate-server = [2001:2::7]:3478", check: func(t *testing.T, s *Settings) {
			want := []netip.AddrPort{ap("198.18.7.1:3478"), ap("198.18.7.2:3479"), ap("[2001:2::7]:3478")}
			if !reflect.DeepEqual(s.AlternateServers, want) || !reflect.DeepEqual(s.Control().AlternateServers, want) {
				t.Fatal(s.AlternateServers)
			}
		}},
		{name: "alternate name", file: "alternate-server = turn2.example.org:3478", err: `x.conf:1: key "alternate-server": turn2.example.org:3478 is not IP:PORT`},
		{name: "alternate no port", file: "alternate-server = 198.18.7.1", err: `x.conf:1: key "alternate-server": 198.18.7.1 is not IP:PORT`},
		{name: "alternate port zero", file: "alternate-server = 198.18.7.1:0", err: `x.conf:1: key "alternate-server": 198.18.7.1:0 has port 0`},
		{name: "alternate unspecified", file: "alternate-server = 0.0.0.0:3478", err: `x.conf:1: key "alternate-server": 0.0.0.0:3478 is unspecified`},
		{name: "iface bad", file: "xdp-iface = a/b", err: `x.conf:1: key "xdp-iface": a/b is not an interface name`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _, err := Load(Sources{FileName: "x.conf", FileData: []byte(tt.file)})
			if tt.err != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.err) {
					t.Fatalf("error %v\nwant prefix %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, s)
		})
	}
}

func TestLayering(t *testing.T) {
	file := "realm = file\nmin-port = 40000\nuser = a:1\nuser = b:2\nallow-peer = 10.0.0.0/8\n"
	flag := func(k, v string) Entry { return Entry{Key: k, Value: v, Origin: "flag --" + k} }
	tests := []struct {
		name  string
		env   []string
		flags []Entry
		check func(t *testing.T, s *Settings)
		err   string
	}{
		{name: "file only", check: func(t *testing.T, s *Settings) {
			if s.Realm != "file" || s.MinPort != 40000 || len(s.Users) != 2 || s.MaxPort != 65535 {
				t.Fatalf("%+v", s)
			}
			if s.Origin("realm") != "x.conf:1" || s.Origin("max-port") != "built-in default" {
				t.Fatal(s.Origin("realm"), s.Origin("max-port"))
			}
		}},
		{name: "env beats file", env: []string{"HYBRIDRELAY_REALM=env", "HYBRIDRELAY_MIN_PORT=41000", "PATH=/bin"}, check: func(t *testing.T, s *Settings) {
			if s.Realm != "env" || s.MinPort != 41000 || s.Origin("realm") != "environment HYBRIDRELAY_REALM" {
				t.Fatalf("%+v", s)
			}
		}},
		{name: "flag beats env", env: []string{"HYBRIDRELAY_REALM=env"}, flags: []Entry{flag("realm", "flag")}, check: func(t *testing.T, s *Settings) {
			if s.Realm != "flag" || s.Origin("realm") != "flag --realm" {
				t.Fatal(s.Realm)
			}
		}},
		{name: "flag list replaces file list", flags: []Entry{flag("user", "c:3")}, check: func(t *testing.T, s *Settings) {
			if !reflect.DeepEqual(s.Users, map[string]string{"c": "3"}) {
				t.Fatal(s.Users)
			}
		}},
		{name: "repeated flags append", flags: []Entry{flag("user", "c:3"), flag("user", "d:4")}, check: func(t *testing.T, s *Settings) {
			if len(s.Users) != 2 || s.Users["d"] != "4" {
				t.Fatal(s.Users)
			}
		}},
		{name: "env list comma separated replaces file", env: []string{"HYBRIDRELAY_ALLOW_PEER=192.0.2.0/24, 198.51.100.0/24"}, check: func(t *testing.T, s *Settings) {
			if len(s.AllowPeers) != 2 || s.AllowPeers[1] != netip.MustParsePrefix("198.51.100.0/24") {
				t.Fatal(s.AllowPeers)
			}
		}},
		{name: "env error names variable", env: []string{"HYBRIDRELAY_MAX_PORT=70000"}, err: "environment HYBRIDRELAY_MAX_PORT: 70000 is not a port (1-65535)"},
		{name: "flag error names flag", flags: []Entry{flag("max-port", "x")}, err: "flag --max-port: x is not a port (1-65535)"},
		{name: "cross-field error names flag", flags: []Entry{flag("max-port", "30000")}, err: `x.conf:2: key "min-port": min-port 40000 (x.conf:2) is greater than max-port 30000 (flag --max-port)`},
		{name: "cross-field error from flags only", flags: []Entry{flag("min-port", "5000"), flag("max-port", "4000")}, err: "min-port 5000 (flag --min-port) is greater than max-port 4000 (flag --max-port)"},
		{name: "single-key cross error names origin", flags: []Entry{flag("relay-ip", "192.0.2.1"), flag("relay-ip", "192.0.2.2")}, err: "relay-ip (flag --relay-ip): 192.0.2.1 and 192.0.2.2 are both IPv4; give one relay-ip per address family"},
		{name: "unknown env is a warning", env: []string{"HYBRIDRELAY_MINPORT=1", "HYBRIDRELAY_REQUIRE_PRIV=1"}, check: func(t *testing.T, s *Settings) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, warn, err := Load(Sources{FileName: "x.conf", FileData: []byte(file), Env: tt.env, Flags: tt.flags})
			if tt.err != "" {
				if err == nil || err.Error() != tt.err {
					t.Fatalf("error %v\nwant %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, s)
			if tt.name == "unknown env is a warning" {
				if len(warn) != 1 || !strings.Contains(warn[0], "did you mean HYBRIDRELAY_MIN_PORT?") {
					t.Fatalf("warnings %q", warn)
				}
			}
		})
	}
}

func TestNoFile(t *testing.T) {
	s, _, err := Load(Sources{Flags: []Entry{{Key: "listen", Value: "udp://127.0.0.1:0", Origin: "flag --listen"}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Listeners) != 1 || s.Realm != "hybridrelay" {
		t.Fatalf("%+v", s)
	}
}

func TestSuggest(t *testing.T) {
	tests := []struct{ in, want string }{
		{"min_port", "min-port"},
		{"relayip", "relay-ip"},
		{"listn", "listen"},
		{"authsecret", "auth-secret"},
		{"qqqqqq", ""},
	}
	var names []string
	for _, k := range keys {
		names = append(names, k.Name)
	}
	for _, tt := range tests {
		if got := suggest(tt.in, names); got != tt.want {
			t.Errorf("suggest(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add(DefaultFile)
	f.Add([]byte("listen = tls://[::]:5349\ntls-cert = /c\ntls-key = /k\n"))
	f.Add([]byte("user = \"a:b\\x41\" # c\nuser = 'c:d'\n"))
	f.Add([]byte("max-port = 70000\n"))
	f.Add([]byte("min-port = 3\r\nmax-port = 2\r\n"))
	f.Add([]byte("bandwidth-limit = 1.5Mbit\nsocket-buffer = 1k"))
	f.Add([]byte("= \n\"\n'\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := Parse("fuzz.conf", data)
		if err != nil {
			var ce *Error
			if !errors.As(err, &ce) || ce.Line < 1 || !strings.HasPrefix(err.Error(), "fuzz.conf:") {
				t.Fatalf("Parse error without a line: %v", err)
			}
			return
		}
		for _, e := range entries {
			if e.Line < 1 || e.File != "fuzz.conf" {
				t.Fatalf("entry without a line: %+v", e)
			}
		}
		_, _, err = Load(Sources{FileName: "fuzz.conf", FileData: data})
		if err != nil {
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("Load error is not an *Error: %v", err)
			}
			// Every error from a file-only load names a line of the file:
			// a value that is wrong together with a default is blamed on
			// the key the file set.
			if ce.Line < 1 {
				t.Fatalf("Load error without a line: %v", err)
			}
		}
	})
}

// TestDocsCoverEveryKey keeps docs/configuration.md complete: every key and
// its environment variable appear in the reference.
func TestDocsCoverEveryKey(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range Keys() {
		if !strings.Contains(string(doc), "| `"+k.Name+"` ") {
			t.Errorf("docs/configuration.md has no reference row for %q", k.Name)
		}
		if !strings.Contains(string(doc), EnvName(k.Name)) {
			t.Errorf("docs/configuration.md does not mention %s", EnvName(k.Name))
		}
	}
}

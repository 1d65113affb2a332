package interop

import (
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/hybridrelay/hybridrelay/pkg/control"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// hrServer is an in-process hybridrelay control plane on loopback: UDP and
// TCP listeners on 127.0.0.1 and ::1 (one port for all four), a TLS
// listener on 127.0.0.1, relay addresses 127.0.0.1 and ::1.
type hrServer struct {
	srv          *control.Server
	addr4, addr6 netip.AddrPort
	tls4         netip.AddrPort
	certFile     string
}

// startHybridrelay starts the server with the package's credentials and a
// peer allow-list for loopback (which the default policy denies, docs/design.md
// "Security defaults"); tweak may change the config before it starts.
// cfg.Datapath "gso" selects the batched datapath, anything else plain.
func startHybridrelay(t *testing.T, tweak func(*control.Config)) *hrServer {
	t.Helper()
	sink := &testLogSink{t: t}
	// Registered first, so it runs last: nothing logs to t after the
	// server's Close has returned.
	t.Cleanup(sink.close)
	logger := slog.New(slog.NewTextHandler(sink, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cert, key := writeSelfSignedCert(t, t.TempDir())
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port := freeDualPort(t, lo4, lo6)
		tlsPort := freeDualPort(t, lo4)
		cfg := control.DefaultConfig()
		cfg.Listeners = []control.ListenerSpec{
			{Network: "udp", Addr: netip.AddrPortFrom(lo4, port)},
			{Network: "tcp", Addr: netip.AddrPortFrom(lo4, port)},
			{Network: "udp", Addr: netip.AddrPortFrom(lo6, port)},
			{Network: "tcp", Addr: netip.AddrPortFrom(lo6, port)},
			{Network: "tls", Addr: netip.AddrPortFrom(lo4, tlsPort)},
		}
		cfg.TLSCertFile, cfg.TLSKeyFile = cert, key
		cfg.RelayIPs = []netip.Addr{lo4, lo6}
		cfg.Realm = testRealm
		cfg.Users = map[string]string{testUser: testPass}
		cfg.AuthSecrets = []string{testSecret}
		cfg.AllowPeers = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
		cfg.Datapath = "plain"
		if tweak != nil {
			tweak(&cfg)
		}
		dp := dataplane.NewPlain()
		if cfg.Datapath == "gso" {
			var err error
			if dp, err = dataplane.NewGSO(dataplane.GSOOptions{Logger: logger}); err != nil {
				t.Fatalf("gso datapath: %v", err)
			}
		}
		srv, err := control.NewServer(cfg, control.Options{Datapath: dp, Logger: logger})
		if err != nil {
			t.Fatalf("new server: %v", err)
		}
		if err := srv.Start(); err != nil {
			lastErr = err
			_ = srv.Close()
			_ = dp.Close()
			continue
		}
		// The server does not own its datapath: close it after the server.
		t.Cleanup(func() {
			if err := dp.Close(); err != nil {
				t.Errorf("close datapath: %v", err)
			}
		})
		t.Cleanup(func() {
			if err := srv.Close(); err != nil {
				t.Errorf("close server: %v", err)
			}
		})
		return &hrServer{srv: srv, addr4: netip.AddrPortFrom(lo4, port), addr6: netip.AddrPortFrom(lo6, port),
			tls4: netip.AddrPortFrom(lo4, tlsPort), certFile: cert}
	}
	t.Fatalf("start server: %v", lastErr)
	return nil
}

// testLogSink forwards the server's warnings and errors to the test log
// until close.
type testLogSink struct {
	mu     sync.Mutex
	t      *testing.T
	closed bool
}

func (s *testLogSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.t.Log("server: " + strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (s *testLogSink) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}

// allocInfo is what the tests read about one allocation.
type allocInfo = control.AllocationInfo

// lookupAllocation finds the allocation whose relayed address is relay.
func lookupAllocation(s *hrServer, relay netip.AddrPort) *allocInfo {
	for _, a := range s.srv.Allocations() {
		for _, r := range a.Relays {
			if r.Addr().Unmap() == relay.Addr().Unmap() && r.Port() == relay.Port() {
				return &a
			}
		}
	}
	return nil
}

func findAllocation(t *testing.T, s *hrServer, relay netip.AddrPort) *allocInfo {
	t.Helper()
	a := lookupAllocation(s, relay)
	if a == nil {
		t.Fatalf("server lists no allocation with relayed address %s", relay)
	}
	return a
}

func hasPermission(a *allocInfo, ip netip.Addr) bool {
	for _, p := range a.Permissions {
		if p.Peer.Unmap() == ip {
			return true
		}
	}
	return false
}

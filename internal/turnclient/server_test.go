package turnclient

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/pkg/control"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// hybridServer runs hybridrelay's own control plane (plain datapath) on
// loopback with user "alice"/"wonderland" and REST secret "rest-secret".
func hybridServer(t *testing.T, nonceLife time.Duration) netip.AddrPort {
	t.Helper()
	cfg := control.DefaultConfig()
	cfg.Listeners = []control.ListenerSpec{{Network: "udp", Addr: netip.MustParseAddrPort("127.0.0.1:0")}}
	cfg.RelayIPs = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	cfg.AllowPeers = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	cfg.Realm = testRealm
	cfg.Users = map[string]string{"alice": "wonderland"}
	cfg.AuthSecrets = []string{"rest-secret"}
	if nonceLife > 0 {
		cfg.NonceLifetime = nonceLife
	}
	srv, err := control.NewServer(cfg, control.Options{Datapath: dataplane.NewPlain(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv.Addrs()[0].Addr
}

// TestClientAgainstHybridrelay is the same exchange as against pion, plus
// what hybridrelay answers exactly: 437 after release, 401 for a wrong
// password (RFC 8489 section 9.2.4), 438 for a stale nonce.
func TestClientAgainstHybridrelay(t *testing.T) {
	server := hybridServer(t, 0)
	for _, creds := range []Credentials{{"alice", "wonderland"}, RESTCredentials("rest-secret", "bob", time.Now().Add(time.Hour))} {
		t.Run(creds.Username, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := New(Config{Server: server, Credentials: creds, Local: netip.MustParseAddrPort("127.0.0.1:0")})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			a, err := c.Allocate(ctx, AllocateOptions{Lifetime: 300 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if a.Relayed.Addr() != netip.MustParseAddr("127.0.0.1") || a.Mapped != c.LocalAddr() {
				t.Fatalf("allocation %+v", a)
			}
			relayBothWays(ctx, t, c, a, loopbackPeer(t), 0x4abc)
			// Below the 600 s default the server grants the default (RFC
			// 8656 section 7.2); between default and maximum, what was asked.
			if lt, err := c.Refresh(ctx, 1200*time.Second); err != nil || lt != 1200*time.Second {
				t.Fatalf("refresh %v %v", lt, err)
			}
			if err := c.Release(ctx); err != nil {
				t.Fatal(err)
			}
			_, err = c.Refresh(ctx, 60*time.Second)
			var er *ErrorResponse
			if !errors.As(err, &er) || er.Code != stun.CodeAllocMismatch {
				t.Fatalf("refresh after release: %v, want 437", err)
			}
		})
	}
	t.Run("wrong password", func(t *testing.T) {
		c, err := New(Config{Server: server, Credentials: Credentials{"alice", "nope"}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = c.Allocate(context.Background(), AllocateOptions{})
		var er *ErrorResponse
		if !errors.As(err, &er) || er.Code != stun.CodeUnauthorized {
			t.Fatalf("%v, want 401", err)
		}
	})
}

// TestClientStaleNonce lets the nonce expire between two requests: the
// server answers 438 with a fresh nonce and the client retries with it.
func TestClientStaleNonce(t *testing.T) {
	server := hybridServer(t, time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := New(Config{Server: server, Credentials: Credentials{"alice", "wonderland"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Allocate(ctx, AllocateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, before := c.Nonce()
	time.Sleep(1100 * time.Millisecond)
	if _, err := c.Refresh(ctx, 300*time.Second); err != nil {
		t.Fatalf("refresh with a stale nonce: %v", err)
	}
	if _, after := c.Nonce(); after == before {
		t.Fatal("nonce not replaced after 438")
	}
}

package turnclient

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/pkg/control"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// drainable runs hybridrelay's control plane on 127.0.0.1 and returns it,
// so a test can drain it and point it at other servers.
func drainable(t *testing.T, relayIP string) *control.Server {
	t.Helper()
	cfg := control.DefaultConfig()
	cfg.Listeners = []control.ListenerSpec{{Network: "udp", Addr: netip.MustParseAddrPort("127.0.0.1:0")}}
	cfg.RelayIPs = []netip.Addr{netip.MustParseAddr(relayIP)}
	cfg.Realm = testRealm
	cfg.Users = map[string]string{"alice": "wonderland"}
	dp := dataplane.NewPlain()
	srv, err := control.NewServer(cfg, control.Options{Datapath: dp, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(); dp.Close() })
	return srv
}

// TestAllocateFollowsAlternate: an Allocate answered 300 Try Alternate is
// retried on the ALTERNATE-SERVER with the same credentials (RFC 8489
// section 10), the client then talks to that server; a loop back to a
// server already tried, and a client told to ignore redirects, fail with
// the 300.
func TestAllocateFollowsAlternate(t *testing.T) {
	a, b := drainable(t, "127.0.0.1"), drainable(t, "127.0.0.2")
	aAddr, bAddr := a.Addrs()[0].Addr, b.Addrs()[0].Addr
	if err := a.SetAlternateServers([]netip.AddrPort{bAddr}); err != nil {
		t.Fatal(err)
	}
	a.SetDraining(true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	newClient := func(ignore bool) *Client {
		c, err := New(Config{Server: aAddr, Credentials: Credentials{"alice", "wonderland"}, IgnoreAlternate: ignore,
			Local: netip.MustParseAddrPort("127.0.0.1:0")})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	c := newClient(false)
	al, err := c.Allocate(ctx, AllocateOptions{})
	if err != nil {
		t.Fatalf("Allocate through a redirect: %v", err)
	}
	if c.Server() != bAddr || al.Relayed.Addr() != netip.MustParseAddr("127.0.0.2") {
		t.Fatalf("after the redirect: server %v relayed %v, want %v on 127.0.0.2", c.Server(), al.Relayed, bAddr)
	}
	// The allocation lives on b: refreshing it there works.
	if _, err := c.Refresh(ctx, 300*time.Second); err != nil {
		t.Fatalf("Refresh on the alternate: %v", err)
	}
	if got := a.Stats().Requests["allocate"]["300"]; got != 1 {
		t.Errorf("a answered 300 %d times, want 1", got)
	}

	var er *ErrorResponse
	ign := newClient(true)
	if _, err := ign.Allocate(ctx, AllocateOptions{}); !errors.As(err, &er) || er.Code != stun.CodeTryAlternate || ign.Server() != aAddr {
		t.Fatalf("IgnoreAlternate: %v, server %v", err, ign.Server())
	}

	// b drains too and sends clients back to a: a loop, not followed.
	if err := b.SetAlternateServers([]netip.AddrPort{aAddr}); err != nil {
		t.Fatal(err)
	}
	b.SetDraining(true)
	loop := newClient(false)
	if _, err := loop.Allocate(ctx, AllocateOptions{}); !errors.As(err, &er) || er.Code != stun.CodeTryAlternate || !strings.Contains(err.Error(), "redirect loop") {
		t.Fatalf("redirect loop: %v", err)
	}
	// Both draining with no alternate: 486, the usual quota error.
	a.SetAlternateServers(nil)
	if _, err := newClient(false).Allocate(ctx, AllocateOptions{}); !errors.As(err, &er) || er.Code != stun.CodeAllocQuotaReached {
		t.Fatalf("draining without alternate: %v", err)
	}
}

// TestAllocateRefusesUnsignedRedirect: a 300 without MESSAGE-INTEGRITY to
// an Allocate that carried credentials is not followed (anyone who sees
// the request could forge it). The server here is a socket answering by
// hand: 401 with REALM and NONCE, then an unsigned 300.
func TestAllocateRefusesUnsignedRedirect(t *testing.T) {
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := srv.ReadFromUDP(buf)
			if err != nil {
				return
			}
			req := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
			if req.Decode() != nil {
				continue
			}
			typ := stun.NewType(req.Type.Method, stun.ClassErrorResponse)
			var res *stun.Message
			if !req.Contains(stun.AttrMessageIntegrity) {
				res = stun.MustBuild(stun.NewTransactionIDSetter(req.TransactionID), typ, stun.CodeUnauthorized,
					stun.NewRealm(testRealm), stun.NewNonce("n0nce"))
			} else {
				res = stun.MustBuild(stun.NewTransactionIDSetter(req.TransactionID), typ, stun.CodeTryAlternate,
					&stun.AlternateServer{IP: net.IPv4(127, 0, 0, 9), Port: 3478})
			}
			srv.WriteToUDP(res.Raw, from)
		}
	}()
	addr := srv.LocalAddr().(*net.UDPAddr).AddrPort()
	c, err := New(Config{Server: addr, Credentials: Credentials{"alice", "wonderland"}, Local: netip.MustParseAddrPort("127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = c.Allocate(ctx, AllocateOptions{})
	var er *ErrorResponse
	if !errors.As(err, &er) || er.Code != stun.CodeTryAlternate || !strings.Contains(err.Error(), "unauthenticated redirect") || c.Server() != addr {
		t.Fatalf("unsigned 300: %v, server %v", err, c.Server())
	}
}

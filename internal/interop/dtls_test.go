package interop

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/privtest"
	"github.com/hybridrelay/hybridrelay/pkg/control"
)

// withDTLS adds a DTLS listener on 127.0.0.1 (an ephemeral port) to the
// in-process server's configuration.
func withDTLS(cfg *control.Config) {
	cfg.Listeners = append(cfg.Listeners, control.ListenerSpec{Network: "dtls", Addr: netip.AddrPortFrom(lo4, 0)})
}

// dtlsAddr is the bound DTLS listener of s.
func dtlsAddr(t *testing.T, s *hrServer) netip.AddrPort {
	t.Helper()
	for _, l := range s.srv.Addrs() {
		if l.Network == "dtls" {
			return l.Addr
		}
	}
	t.Fatal("server has no dtls listener")
	return netip.AddrPort{}
}

// uclientDTLS runs turnutils_uclient over DTLS (-S without -t: RFC 7350,
// TURN over DTLS over UDP) and checks the run byte for byte: every message
// goes client -> relay -> turnutils_peer (echo) -> relay -> client.
func uclientDTLS(t *testing.T, server, peer netip.AddrPort, msgs, msgLen int, extra ...string) {
	t.Helper()
	args := []string{"-S", "-c", "-n", strconv.Itoa(msgs), "-l", strconv.Itoa(msgLen), "-z", "5",
		"-p", strconv.Itoa(int(server.Port())), "-e", peer.Addr().String(), "-r", strconv.Itoa(int(peer.Port())),
		"-u", testUser, "-w", testPass}
	args = append(args, extra...)
	args = append(args, server.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := runBounded(ctx, "turnutils_uclient", args...)
	cmdline := "turnutils_uclient " + strings.Join(args, " ")
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmdline, err, out)
	}
	r, err := ParseUclient(out)
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmdline, err, out)
	}
	want := int64(msgs)
	if r.SentMsgs != want || r.RecvMsgs != want || r.LostPackets != 0 || len(r.Errors) != 0 {
		t.Fatalf("%s: sent %d received %d lost %d errors %q, want %d/%d/0/none\n%s",
			cmdline, r.SentMsgs, r.RecvMsgs, r.LostPackets, r.Errors, want, want, out)
	}
	if r.SentBytes != want*int64(msgLen) || r.RecvBytes != want*int64(msgLen) {
		t.Fatalf("%s: bytes sent %d received %d, want %d each", cmdline, r.SentBytes, r.RecvBytes, want*int64(msgLen))
	}
}

// TestUclientDTLS: coturn's client over DTLS in channel mode (ChannelData
// in DTLS records, RFC 8656 section 12) and Send mode (Send/Data
// indications, section 11), byte-exact; the allocations are listed with
// transport dtls and are never offered to the kernel path.
func TestUclientDTLS(t *testing.T) {
	privtest.Need(t, "turnutils_uclient", "turnutils_peer")
	s := startHybridrelay(t, withDTLS)
	server := dtlsAddr(t, s)
	peer := startTurnutilsPeer(t, lo4)
	// 121 bytes: not a multiple of 4; ChannelData over DTLS is not padded.
	for _, tc := range []struct {
		name  string
		extra []string
	}{
		{name: "channel"},
		{name: "send", extra: []string{"-s"}},
		{name: "channel-padded", extra: []string{"-D"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := s.srv.Stats().Protocol["dtls_handshakes"]
			uclientDTLS(t, server, peer, 20, 121, tc.extra...)
			if got := s.srv.Stats().Protocol["dtls_handshakes"]; got <= before {
				t.Fatalf("dtls_handshakes %d -> %d: the run did not go through the DTLS listener", before, got)
			}
		})
	}
	st := s.srv.Stats()
	if st.OffloadInstalls != 0 {
		t.Fatalf("offload installs %d: DTLS clients must stay in userspace", st.OffloadInstalls)
	}
}

// TestDTLSMalformedFlood: garbage, truncated and forged DTLS records (and
// fake ClientHellos that never finish) from many sources at the DTLS
// listener leave a DTLS client that runs at the same time served byte for
// byte, and leave no connection behind.
func TestDTLSMalformedFlood(t *testing.T) {
	privtest.Need(t, "turnutils_uclient", "turnutils_peer")
	s := startHybridrelay(t, withDTLS)
	server := dtlsAddr(t, s)
	peer := startTurnutilsPeer(t, lo4)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var sent atomic.Int64
	const floodSockets, perSocket = 64, 400 // bounded: 25 600 datagrams at most
	for i := range floodSockets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(server))
			if err != nil {
				return
			}
			defer c.Close()
			r := mrand.New(mrand.NewPCG(uint64(i), 7))
			for range perSocket {
				if ctx.Err() != nil {
					return
				}
				if _, err := c.Write(malformedDTLS(r)); err == nil {
					sent.Add(1)
				}
				time.Sleep(time.Duration(r.IntN(3)) * time.Millisecond)
			}
		}()
	}
	uclientDTLS(t, server, peer, 40, 200)
	cancel()
	wg.Wait()
	t.Logf("flood: %d malformed DTLS datagrams; server protocol counters %v", sent.Load(), s.srv.Stats().Protocol)
	if sent.Load() < floodSockets*10 {
		t.Fatalf("the flood sent only %d datagrams; the test proved nothing", sent.Load())
	}
	// Also a second, fresh client after the flood.
	uclientDTLS(t, server, peer, 10, 100)
}

// malformedDTLS returns one datagram aimed at a DTLS server: random bytes,
// a record header with a lying length, an encrypted-looking application
// record in epoch 1 from a source with no association, or a truncated or
// corrupted ClientHello.
func malformedDTLS(r *mrand.Rand) []byte {
	rec := func(ct byte, epoch uint16, body []byte) []byte {
		b := make([]byte, 13, 13+len(body))
		b[0] = ct
		b[1], b[2] = 0xfe, 0xfd // DTLS 1.2
		binary.BigEndian.PutUint16(b[3:], epoch)
		binary.BigEndian.PutUint16(b[11:], uint16(len(body)))
		return append(b, body...)
	}
	body := make([]byte, r.IntN(300))
	_, _ = rand.Read(body)
	switch r.IntN(5) {
	case 0:
		b := make([]byte, 1+r.IntN(1200))
		_, _ = rand.Read(b)
		return b
	case 1: // handshake record whose length runs past the datagram
		b := rec(22, 0, body)
		binary.BigEndian.PutUint16(b[11:], uint16(len(body)+1+r.IntN(1000)))
		return b
	case 2: // application data in epoch 1 with no association
		return rec(23, 1, body)
	case 3: // a handshake header of type ClientHello with junk contents
		hs := make([]byte, 12, 12+len(body))
		hs[0] = 1
		hs[3] = byte(len(body))
		hs[11] = byte(len(body))
		return rec(22, 0, append(hs, body...))
	default: // alert and change-cipher-spec records out of place
		return rec(byte(20+r.IntN(2)), uint16(r.IntN(2)), body[:min(len(body), 2)])
	}
}

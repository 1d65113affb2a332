package control

import (
	"context"
	"crypto/x509"
	"math/big"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pion/dtls/v3"

	"github.com/hybridrelay/hybridrelay/pkg/dataplane"

	"github.com/hybridrelay/hybridrelay/internal/testutil"
)

// dialDTLS makes a DTLS association to addr (pion/dtls as the client) and
// returns a raw STUN client over it and the serial of the certificate the
// server presented.
func dialDTLS(t *testing.T, addr netip.AddrPort) (*rawClient, *dtls.Conn, *big.Int) {
	t.Helper()
	conn, err := dtls.DialWithOptions("udp", net.UDPAddrFromAddrPort(addr),
		dtls.WithInsecureSkipVerify(true)) //nolint:gosec // test certificate
	if err != nil {
		t.Fatalf("dtls dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := conn.HandshakeContext(ctx); err != nil {
		t.Fatalf("dtls handshake: %v", err)
	}
	st, ok := conn.ConnectionState()
	if !ok || len(st.PeerCertificates) == 0 {
		t.Fatal("dtls: no peer certificate")
	}
	cert, err := x509.ParseCertificate(st.PeerCertificates[0])
	if err != nil {
		t.Fatal(err)
	}
	return &rawClient{t: t, conn: conn, user: testUser, pass: testPass, realm: testRealm}, conn, cert.SerialNumber
}

// TestDTLSListenerAndReload: TURN over DTLS (RFC 7350) with the TLS
// certificate files and their reload; ChannelData in both directions
// without padding (RFC 8656 section 12.5: only streams pad); the
// allocation is a dtls one, never offloaded, and ends with the
// association (close_notify).
func TestDTLSListenerAndReload(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, serial1 := writeSelfSigned(t, dir, "one")
	off := newRecordingOffload()
	s := startServer(t, func(c *Config, _ *Options) {
		c.Listeners = []ListenerSpec{{Network: "dtls", Addr: netip.MustParseAddrPort("127.0.0.1:0")}}
		c.TLSCertFile, c.TLSKeyFile = certFile, keyFile
	}, withOffload(off))
	c, conn, got := dialDTLS(t, s.addr("dtls"))
	if got.Cmp(serial1) != 0 {
		t.Fatalf("serial %v, want %v", got, serial1)
	}
	peer := newPeer(t, "127.0.0.1:0")
	relay := c.allocate()
	if r := c.do(methodChannelBind, channelAttr(0x4000), peerAttr(peer.addr())); code(r) != 0 {
		t.Fatal(code(r))
	}
	payload := []byte("dtls data, 21 bytes!!") // not a multiple of 4
	c.write(appendChannelData(nil, 0x4000, payload, false))
	if b, from, err := peer.recv(2 * time.Second); err != nil || string(b) != string(payload) || from != relay {
		t.Fatalf("peer got %q from %v (%v)", b, from, err)
	}
	peer.send(payload, relay)
	b := c.read(2 * time.Second)
	if len(b) != 4+len(payload) || b[0] != 0x40 || b[1] != 0x00 || string(b[4:]) != string(payload) {
		t.Fatalf("client got %x, want unpadded ChannelData 0x4000 with %q", b, payload)
	}
	ai := s.Allocations()
	if len(ai) != 1 || ai[0].Transport != "dtls" || len(ai[0].Channels) != 1 || ai[0].Channels[0].Offloaded {
		t.Fatalf("allocations %+v", ai)
	}
	if n := off.count("install"); n != 0 {
		t.Fatalf("%d offload installs for a DTLS client's channel, want 0", n)
	}
	if st := s.Stats(); st.OffloadInstalls != 0 || st.Protocol["dtls_handshakes"] != 1 {
		t.Fatalf("offload installs %d (want 0), dtls handshakes %d (want 1)", st.OffloadInstalls, st.Protocol["dtls_handshakes"])
	}

	// A record that is neither STUN nor ChannelData is dropped; the
	// association keeps working.
	c.write([]byte{0xC0, 1, 2, 3, 4, 5})
	if r := c.do(methodRefresh, lifetimeAttr(600)); code(r) != 0 {
		t.Fatalf("refresh after a bad record: %d", code(r))
	}
	if n := s.Stats().Protocol["dtls_records_malformed"]; n != 1 {
		t.Fatalf("dtls_records_malformed %d, want 1", n)
	}

	// Closing the association (close_notify) deletes the allocation.
	conn.Close()
	testutil.WaitFor(t, 3*time.Second, "allocation deleted after close_notify", func() bool { return len(s.Allocations()) == 0 })

	// Reload: new handshakes get the new certificate; a broken file keeps
	// the current one.
	_, _, serial2 := writeSelfSigned(t, dir, "two")
	if err := s.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	if _, _, got := dialDTLS(t, s.addr("dtls")); got.Cmp(serial2) != 0 {
		t.Fatalf("after reload: serial %v, want %v", got, serial2)
	}
	os.WriteFile(keyFile, []byte("garbage"), 0o600)
	if err := s.ReloadTLS(); err == nil {
		t.Fatal("reload of a broken key succeeded")
	}
	if _, _, got := dialDTLS(t, s.addr("dtls")); got.Cmp(serial2) != 0 {
		t.Fatalf("after failed reload: serial %v, want %v", got, serial2)
	}
}

// TestDTLSNeedsCertificate: a dtls listener without certificate files is
// a configuration error naming them.
func TestDTLSNeedsCertificate(t *testing.T) {
	cfg := testConfig()
	cfg.Listeners = []ListenerSpec{{Network: "dtls", Addr: netip.MustParseAddrPort("127.0.0.1:0")}}
	_, err := NewServer(cfg, Options{Datapath: dataplane.NewPlain()})
	if err == nil || !strings.Contains(err.Error(), "tls_cert_file") {
		t.Fatalf("NewServer: %v, want an error naming tls_cert_file", err)
	}
}

// recordingPacketConn is a PacketConn that keeps the first datagram
// written to it and never delivers anything: a DTLS client on it sends its
// ClientHello and waits.
type recordingPacketConn struct {
	first  chan []byte
	closed chan struct{}
}

func (r *recordingPacketConn) ReadFrom([]byte) (int, net.Addr, error) {
	<-r.closed
	return 0, nil, net.ErrClosed
}

func (r *recordingPacketConn) WriteTo(b []byte, _ net.Addr) (int, error) {
	select {
	case r.first <- append([]byte(nil), b...):
	default:
	}
	return len(b), nil
}
func (r *recordingPacketConn) Close() error {
	select {
	case <-r.closed:
	default:
		close(r.closed)
	}
	return nil
}
func (r *recordingPacketConn) LocalAddr() net.Addr              { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)} }
func (r *recordingPacketConn) SetDeadline(time.Time) error      { return nil }
func (r *recordingPacketConn) SetReadDeadline(time.Time) error  { return nil }
func (r *recordingPacketConn) SetWriteDeadline(time.Time) error { return nil }

// TestDTLSPendingHandshakeLimit: a real ClientHello replayed from more
// sources than maxDTLSPending, none of which ever continues its
// handshake, fills at most maxDTLSPending slots; the rest are refused and
// counted.
func TestDTLSPendingHandshakeLimit(t *testing.T) {
	certFile, keyFile, _ := writeSelfSigned(t, t.TempDir(), "one")
	s := startServer(t, func(c *Config, _ *Options) {
		c.Listeners = []ListenerSpec{{Network: "dtls", Addr: netip.MustParseAddrPort("127.0.0.1:0")}}
		c.TLSCertFile, c.TLSKeyFile = certFile, keyFile
	})
	rec := &recordingPacketConn{first: make(chan []byte, 1), closed: make(chan struct{})}
	dc, err := dtls.ClientWithOptions(rec, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}, dtls.WithInsecureSkipVerify(true))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = dc.HandshakeContext(ctx)
	}()
	var hello []byte
	select {
	case hello = <-rec.first:
	case <-time.After(3 * time.Second):
		t.Fatal("no ClientHello")
	}
	dc.Close()
	const sources = maxDTLSPending + 40
	server := net.UDPAddrFromAddrPort(s.addr("dtls"))
	seen := func() int {
		s.lnMu.Lock()
		defer s.lnMu.Unlock()
		return len(s.streams) + int(s.Stats().Protocol["dtls_refused_pending"])
	}
	// In batches the listener's accept queue (128) can hold, each waited
	// for, so none is lost to a full queue on a slow (race-detector) run.
	for sent := 0; sent < sources; {
		for range min(32, sources-sent) {
			u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { u.Close() })
			if _, err := u.WriteToUDP(hello, server); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		// Well within dtlsHandshakeTimeout, after which slots free up.
		testutil.WaitFor(t, 5*time.Second, "the batch accepted or refused", func() bool { return seen() >= sent })
	}
	if n := s.Stats().Protocol["dtls_refused_pending"]; n != 40 {
		t.Fatalf("dtls_refused_pending %d, want 40 (%d sources, limit %d)", n, sources, maxDTLSPending)
	}
}

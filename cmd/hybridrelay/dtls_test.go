package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/pion/stun/v3"
)

// dtlsBinding sends a Binding request over DTLS (RFC 7350) and returns the
// served certificate's serial.
func dtlsBinding(t *testing.T, port int) int64 {
	t.Helper()
	c, err := dtls.DialWithOptions("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port},
		dtls.WithInsecureSkipVerify(true)) // self-signed test certificate; the serial is what is checked
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.HandshakeContext(ctx); err != nil {
		t.Fatalf("dtls handshake: %v", err)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	if _, err := c.Write(req.Raw); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	res := &stun.Message{Raw: buf[:n]}
	if err := res.Decode(); err != nil || res.Type != stun.BindingSuccess {
		t.Fatalf("binding over DTLS: %v %v", res, err)
	}
	st, _ := c.ConnectionState()
	cert, err := x509.ParseCertificate(st.PeerCertificates[0])
	if err != nil {
		t.Fatal(err)
	}
	return cert.SerialNumber.Int64()
}

// TestServeDTLSReload: --listen dtls:// with tls-cert/tls-key, and SIGHUP
// re-reads the certificate for DTLS handshakes as it does for TLS.
func TestServeDTLSReload(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeCert(t, cert, key, 3003)
	port := freePort(t)
	conf := writeTestFile(t, dir, "dtls.conf", fmt.Sprintf("relay-ip = 127.0.0.1\ntls-cert = %s\ntls-key = %s\nuser = a:b\nadmin-socket = off\n", cert, key))
	d := startDaemon(t, nil, "--config", conf, "--datapath", "plain", "--listen", fmt.Sprintf("dtls://127.0.0.1:%d", port))
	if got := dtlsBinding(t, port); got != 3003 {
		t.Fatalf("serial %d, want 3003", got)
	}
	writeCert(t, cert, key, 4004)
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLog(t, "reload: TLS certificate reloaded", 10*time.Second)
	if got := dtlsBinding(t, port); got != 4004 {
		t.Fatalf("serial after SIGHUP %d, want 4004", got)
	}
	if code := d.stop(t, syscall.SIGTERM, 15*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

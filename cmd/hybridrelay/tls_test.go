package main

import (
	"crypto/tls"
	"fmt"
	"math/big"
	"net"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/internal/testutil"
)

// writeCert writes a self-signed certificate for 127.0.0.1 with the given
// serial number to certPath/keyPath.
func writeCert(t *testing.T, certPath, keyPath string, serial int64) {
	t.Helper()
	testutil.WriteSelfSignedCert(t, certPath, keyPath, "hybridrelay test", big.NewInt(serial))
}

// tlsBinding sends a Binding request over TLS (STUN framing over a stream,
// RFC 8489 section 6.2.2) and returns the served certificate's serial.
func tlsBinding(t *testing.T, port int) int64 {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", port),
		&tls.Config{InsecureSkipVerify: true}) // self-signed test certificate; the serial is what is checked
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
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
		t.Fatalf("binding over TLS: %v %v", res, err)
	}
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

// TestServeTLSReload: SIGHUP re-reads the certificate files and new
// connections get the new certificate.
func TestServeTLSReload(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeCert(t, cert, key, 1001)
	port := freePort(t)
	conf := writeTestFile(t, dir, "tls.conf", fmt.Sprintf("listen = tls://127.0.0.1:%d\nrelay-ip = 127.0.0.1\ntls-cert = %s\ntls-key = %s\nuser = a:b\nadmin-socket = off\n", port, cert, key))
	d := startDaemon(t, nil, "--config", conf, "--datapath", "plain")
	if got := tlsBinding(t, port); got != 1001 {
		t.Fatalf("serial %d, want 1001", got)
	}
	writeCert(t, cert, key, 2002)
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLog(t, "reload: TLS certificate reloaded", 10*time.Second)
	if got := tlsBinding(t, port); got != 2002 {
		t.Fatalf("serial after SIGHUP %d, want 2002", got)
	}
	// A broken key keeps the previous certificate.
	writeTestFile(t, dir, "key.pem", "not a key")
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLog(t, "reload: TLS certificate not reloaded; keeping the previous one", 10*time.Second)
	if got := tlsBinding(t, port); got != 2002 {
		t.Fatalf("serial after a failed reload %d, want 2002", got)
	}
	if code := d.stop(t, syscall.SIGTERM, 15*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

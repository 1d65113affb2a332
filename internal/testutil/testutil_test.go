package testutil

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"math/big"
	"net/netip"
	"path/filepath"
	"testing"
	"time"
)

// TestChecksumRFC1071 checks the example of RFC 1071 section 3 and that a
// split at an odd offset does not change the sum.
func TestChecksumRFC1071(t *testing.T) {
	b := []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}
	// The one's complement sum of the example is 0xddf2.
	if got, want := Checksum(b), ^uint16(0xddf2); got != want {
		t.Fatalf("checksum %#04x, want %#04x", got, want)
	}
	for i := range b {
		if got := Checksum(b[:i], b[i:]); got != ^uint16(0xddf2) {
			t.Errorf("split at %d: %#04x", i, got)
		}
	}
	if got := Checksum([]byte{0xab}); got != ^uint16(0xab00) {
		t.Errorf("odd length: %#04x, want %#04x", got, ^uint16(0xab00))
	}
}

func TestVerifyUDP(t *testing.T) {
	for _, tc := range []struct{ src, dst string }{
		{"198.18.0.1", "198.18.0.2"},
		{"2001:2::1", "2001:2::2"},
		{"::ffff:198.18.0.1", "198.18.0.2"},
	} {
		src, dst := netip.MustParseAddr(tc.src), netip.MustParseAddr(tc.dst)
		udp := []byte{0x0d, 0x96, 0x13, 0x88, 0, 13, 0, 0, 'h', 'e', 'l', 'l', 'o'}
		if err := VerifyUDP(src, dst, udp); !errors.Is(err, ErrNoChecksum) {
			t.Errorf("%s: zero checksum: %v, want ErrNoChecksum", tc.src, err)
		}
		c := Checksum(UDPPseudoHeader(src, dst, len(udp)), udp)
		binary.BigEndian.PutUint16(udp[6:], c)
		if err := VerifyUDP(src, dst, udp); err != nil {
			t.Errorf("%s: correct checksum refused: %v", tc.src, err)
		}
		udp[9] ^= 1
		if err := VerifyUDP(src, dst, udp); err == nil || errors.Is(err, ErrNoChecksum) {
			t.Errorf("%s: corrupted payload accepted: %v", tc.src, err)
		}
		udp[9] ^= 1
		if err := VerifyUDP(src, netip.MustParseAddr(map[bool]string{true: "198.18.0.3", false: "2001:2::3"}[src.Unmap().Is4()]), udp); err == nil {
			t.Errorf("%s: wrong pseudo-header accepted", tc.src)
		}
	}
	if err := VerifyUDP(netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2"), []byte{1, 2, 3}); err == nil {
		t.Error("short datagram accepted")
	}
}

func TestWaitFor(t *testing.T) {
	n := 0
	WaitFor(t, 0, "a condition that already holds", func() bool { return true })
	WaitFor(t, 10*time.Second, "the third poll", func() bool { n++; return n >= 3 })
	if n != 3 {
		t.Fatalf("polled %d times, want 3", n)
	}
}

func TestWriteSelfSignedCert(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	WriteSelfSignedCert(t, cert, key, "test", big.NewInt(42))
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if c.SerialNumber.Int64() != 42 || c.Subject.CommonName != "test" {
		t.Fatalf("serial %v, cn %q", c.SerialNumber, c.Subject.CommonName)
	}
	if err := c.VerifyHostname("127.0.0.1"); err != nil {
		t.Fatal(err)
	}
}

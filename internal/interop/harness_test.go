package interop

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/internal/testutil"
	"github.com/hybridrelay/hybridrelay/pkg/control"
)

// The credentials every target in this package is configured with.
const (
	testRealm  = "interop.test"
	testUser   = "alice"
	testPass   = "wonderland-pass"
	testSecret = "rest-api-shared-secret"
)

var (
	lo4 = netip.MustParseAddr("127.0.0.1")
	lo6 = netip.MustParseAddr("::1")
)

// relayTarget is a running TURN server the tests talk to. lt* addresses
// accept the static user, rest* addresses accept TURN REST API credentials
// derived from testSecret; for hybridrelay they are the same server (it
// takes both at once), for the coturn reference they are two processes
// (turnserver's use-auth-secret turns static users off). UDP and TCP share
// one port on every address, because turnutils_uclient has one -p.
type relayTarget struct {
	name       string
	lt4, rest4 netip.AddrPort
	lt6        netip.AddrPort
	// TLS listeners (RFC 8656 section 3.1, TURN over TLS over TCP) on
	// 127.0.0.1, with a self-signed certificate for 127.0.0.1 and ::1.
	lt4TLS, rest4TLS netip.AddrPort
	tlsRoots         *x509.CertPool // trusts the listeners' certificate
	hybridrelay      *hrServer      // nil for the coturn reference
}

// referenceMode reports whether the tests should run against coturn's own
// turnserver instead of hybridrelay (HYBRIDRELAY_INTEROP_REFERENCE=coturn).
// It exists to tell a harness bug from a server bug: a test that fails
// against hybridrelay but passes against coturn points at the server.
func referenceMode() bool { return os.Getenv("HYBRIDRELAY_INTEROP_REFERENCE") == "coturn" }

// startTarget starts the server under test (hybridrelay unless the coturn
// reference is asked for). Everything it starts stops in t.Cleanup.
func startTarget(t *testing.T, tweak func(*control.Config)) *relayTarget {
	t.Helper()
	if referenceMode() {
		return startCoturn(t)
	}
	s := startHybridrelay(t, tweak)
	return &relayTarget{name: "hybridrelay", lt4: s.addr4, rest4: s.addr4, lt6: s.addr6,
		lt4TLS: s.tls4, rest4TLS: s.tls4, tlsRoots: certPool(t, s.certFile), hybridrelay: s}
}

// freeDualPort returns a port that is free for both UDP and TCP on every
// address in ips at the time of the call. Servers are started on it with a
// retry, because another process may take it in between.
func freeDualPort(t testing.TB, ips ...netip.Addr) uint16 {
	t.Helper()
	for range 50 {
		l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(ips[0], 0)))
		if err != nil {
			t.Fatalf("pick a port: %v", err)
		}
		port := uint16(l.Addr().(*net.TCPAddr).Port)
		closers := []io.Closer{l}
		ok := true
		for i, ip := range ips {
			ap := netip.AddrPortFrom(ip, port)
			u, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
			if err != nil {
				ok = false
				break
			}
			closers = append(closers, u)
			if i > 0 {
				tl, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(ap))
				if err != nil {
					ok = false
					break
				}
				closers = append(closers, tl)
			}
		}
		for _, c := range closers {
			_ = c.Close()
		}
		if ok {
			return port
		}
	}
	t.Fatal("no port free for both UDP and TCP on the loopback addresses")
	return 0
}

// freeUDPPort returns a UDP port free on ip at the time of the call.
func freeUDPPort(t testing.TB, ip netip.Addr) uint16 {
	t.Helper()
	u, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
	if err != nil {
		t.Fatalf("pick a UDP port: %v", err)
	}
	defer u.Close()
	return uint16(u.LocalAddr().(*net.UDPAddr).Port)
}

// stunBinding sends one Binding request over UDP to addr and waits up to
// timeout for the success response (RFC 8489 section 6). It returns the
// XOR-MAPPED-ADDRESS.
func stunBinding(addr netip.AddrPort, timeout time.Duration) (netip.AddrPort, error) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("dial %s: %w", addr, err)
	}
	defer c.Close()
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 1500)
	for time.Now().Before(deadline) {
		if _, err := c.Write(req.Raw); err != nil {
			return netip.AddrPort{}, fmt.Errorf("send binding request: %w", err)
		}
		_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := c.Read(buf)
		if err != nil {
			continue
		}
		var res stun.Message
		if err := stun.Decode(buf[:n], &res); err != nil || res.TransactionID != req.TransactionID {
			continue
		}
		var xma stun.XORMappedAddress
		if err := xma.GetFrom(&res); err != nil {
			return netip.AddrPort{}, fmt.Errorf("binding response without XOR-MAPPED-ADDRESS: %w", err)
		}
		ip, _ := netip.AddrFromSlice(xma.IP)
		return netip.AddrPortFrom(ip.Unmap(), uint16(xma.Port)), nil
	}
	return netip.AddrPort{}, fmt.Errorf("no binding response from %s within %s", addr, timeout)
}

// startProcess starts bin in its own process group; t.Cleanup kills the
// group (by the child's pid, nothing else) and waits for it. Output goes to
// the returned buffer.
func startProcess(t *testing.T, bin string, args ...string) *syncBuffer {
	t.Helper()
	out := &syncBuffer{}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Errorf("%s (pid %d) did not exit after SIGKILL", bin, cmd.Process.Pid)
		}
	})
	return out
}

// toolRun is one finished run of a command-line client.
type toolRun struct {
	cmdline string // bin and its arguments, for messages
	out     []byte
	err     error
}

// runAll runs bin once per argument list, all at once (coturn's clients
// spend most of their time in their own timers), each bounded by timeout,
// and returns the runs in the order of argsList.
func runAll(bin string, argsList [][]string, timeout time.Duration) []toolRun {
	runs := make([]toolRun, len(argsList))
	var wg sync.WaitGroup
	for i, args := range argsList {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			out, err := runBounded(ctx, bin, args...)
			runs[i] = toolRun{bin + " " + strings.Join(args, " "), out, err}
		}()
	}
	wg.Wait()
	return runs
}

// runBounded runs bin to completion, killing its process group when ctx
// ends. It returns the combined output.
func runBounded(ctx context.Context, bin string, args ...string) ([]byte, error) {
	// coturn's tools print with stdio: piped, their output is block
	// buffered and lost when they are killed. stdbuf (coreutils) makes it
	// line buffered, so a run killed at its time bound still says where it
	// hung.
	if sb, err := exec.LookPath("stdbuf"); err == nil {
		args = append([]string{"-oL", "-eL", bin}, args...)
		bin = sb
	}
	var out syncBuffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		return out.Bytes(), fmt.Errorf("%s killed after its time bound: %w", bin, ctx.Err())
	}
	return out.Bytes(), err
}

// syncBuffer is a bytes.Buffer safe for a process's stdout and stderr
// writers and a concurrent reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.b.Bytes()...)
}

// startTurnutilsPeer runs coturn's turnutils_peer (a UDP echo server) on
// ip and waits until it echoes.
func startTurnutilsPeer(t *testing.T, ip netip.Addr) netip.AddrPort {
	t.Helper()
	for attempt := 0; attempt < 3; attempt++ {
		addr := netip.AddrPortFrom(ip, freeUDPPort(t, ip))
		out := startProcess(t, "turnutils_peer", "-L", ip.String(), "-p", strconv.Itoa(int(addr.Port())))
		if err := waitEcho(addr, 3*time.Second); err == nil {
			return addr
		} else if attempt == 2 {
			t.Fatalf("turnutils_peer on %s: %v; output:\n%s", addr, err, out.Bytes())
		}
	}
	return netip.AddrPort{}
}

func waitEcho(addr netip.AddrPort, timeout time.Duration) error {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return err
	}
	defer c.Close()
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 64)
	for time.Now().Before(deadline) {
		if _, err := c.Write([]byte("ping")); err != nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if n, err := c.Read(buf); err == nil && string(buf[:n]) == "ping" {
			return nil
		}
	}
	return errors.New("no echo")
}

// startCoturn starts the reference: two coturn turnservers on loopback, one
// with the static user and one with the REST secret.
func startCoturn(t *testing.T) *relayTarget {
	t.Helper()
	if _, err := exec.LookPath("turnserver"); err != nil {
		t.Skip("coturn reference asked for, but turnserver is not installed")
	}
	dir := t.TempDir()
	cert, key := writeSelfSignedCert(t, dir)
	start := func(name string, auth ...string) (uint16, uint16) {
		for attempt := 0; ; attempt++ {
			port := freeDualPort(t, lo4, lo6)
			tlsPort := freeDualPort(t, lo4, lo6)
			args := []string{"-n", "--no-cli", "--no-dtls", "--allow-loopback-peers",
				"--tls-listening-port=" + strconv.Itoa(int(tlsPort)), "--cert=" + cert, "--pkey=" + key,
				"--listening-ip=127.0.0.1", "--listening-ip=::1", "--relay-ip=127.0.0.1", "--relay-ip=::1",
				"--listening-port=" + strconv.Itoa(int(port)),
				"--realm=" + testRealm, "--min-port=40000", "--max-port=60000",
				"--pidfile=" + filepath.Join(dir, name+".pid"), "--db=" + filepath.Join(dir, name+".db"),
				"--log-file=" + filepath.Join(dir, name+".log"), "--no-stdout-log"}
			out := startProcess(t, "turnserver", append(args, auth...)...)
			if _, err := stunBinding(netip.AddrPortFrom(lo4, port), 3*time.Second); err == nil {
				return port, tlsPort
			} else if attempt == 2 {
				t.Fatalf("coturn reference: %v\n%s", err, out.Bytes())
			}
		}
	}
	lt, ltTLS := start("lt", "--lt-cred-mech", "--user="+testUser+":"+testPass)
	rest, restTLS := start("rest", "--use-auth-secret", "--static-auth-secret="+testSecret)
	return &relayTarget{name: "coturn", lt4: netip.AddrPortFrom(lo4, lt), rest4: netip.AddrPortFrom(lo4, rest),
		lt6: netip.AddrPortFrom(lo6, lt), lt4TLS: netip.AddrPortFrom(lo4, ltTLS), rest4TLS: netip.AddrPortFrom(lo4, restTLS),
		tlsRoots: certPool(t, cert)}
}

// tapConn wraps the socket a pion client uses and counts what crosses it,
// so a test knows which TURN path (Send/Data indications or ChannelData,
// RFC 8656 sections 11 and 12) really carried the data. When
// requestFamily is non-zero it adds REQUESTED-ADDRESS-FAMILY (RFC 8656
// section 18.11) to every Allocate request and re-signs it with the
// long-term key, since pion's client cannot ask for an IPv6 relay itself.
type tapConn struct {
	net.PacketConn
	requestFamily byte // 0x01 IPv4, 0x02 IPv6, 0 leave alone
	user, pass    string
	// pion v4.1.4 resolves the server address with "udp4" only, so it
	// cannot talk to a server on IPv6. When realServer is set, pion is
	// given an IPv4 stand-in address (fakeServer): every write goes to
	// realServer, and reads from realServer are reported as fakeServer.
	realServer, fakeServer net.Addr
	// duplicate sends every request twice, as a client does when its
	// first copy's response is lost (RFC 8489 section 6.2.1).
	duplicate bool
	// blackhole, once set, drops everything the client sends: a client
	// that vanished without deallocating. dropRequests drops only its
	// requests (its refreshes are lost, its data still flows).
	blackhole, dropRequests atomic.Bool

	mu         sync.Mutex
	errorCodes map[string]int // "Method code" of error responses received

	outChannelData, outSend, outRequests atomic.Int64
	inChannelData, inData, inResponses   atomic.Int64
	lastChannel                          atomic.Uint32 // number of the last ChannelData sent
}

func (c *tapConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	if c.blackhole.Load() {
		return len(p), nil
	}
	if c.realServer != nil {
		addr = c.realServer
	}
	switch {
	case len(p) >= 4 && p[0]&0xC0 == 0x40:
		c.outChannelData.Add(1)
		c.lastChannel.Store(uint32(p[0])<<8 | uint32(p[1]))
	case stun.IsMessage(p):
		var m stun.Message
		if err := stun.Decode(p, &m); err == nil {
			switch {
			case m.Type == stun.NewType(stun.MethodSend, stun.ClassIndication):
				c.outSend.Add(1)
			case m.Type.Class == stun.ClassRequest:
				c.outRequests.Add(1)
				if c.dropRequests.Load() {
					return len(p), nil
				}
			}
			raw := p
			if c.requestFamily != 0 && m.Type == stun.NewType(stun.MethodAllocate, stun.ClassRequest) {
				var err error
				if raw, err = c.withFamily(&m); err != nil {
					return 0, err
				}
			}
			if _, err := c.PacketConn.WriteTo(raw, addr); err != nil {
				return 0, err
			}
			if c.duplicate && m.Type.Class == stun.ClassRequest {
				if _, err := c.PacketConn.WriteTo(raw, addr); err != nil {
					return 0, err
				}
			}
			return len(p), nil
		}
	}
	return c.PacketConn.WriteTo(p, addr)
}

func (c *tapConn) ReadFrom(p []byte) (int, net.Addr, error) {
	n, addr, err := c.PacketConn.ReadFrom(p)
	if err == nil && c.realServer != nil && addr.String() == c.realServer.String() {
		addr = c.fakeServer
	}
	if err == nil && n >= 4 {
		switch {
		case p[0]&0xC0 == 0x40:
			c.inChannelData.Add(1)
		case stun.IsMessage(p[:n]):
			var m stun.Message
			if stun.Decode(p[:n], &m) == nil {
				switch {
				case m.Type == stun.NewType(stun.MethodData, stun.ClassIndication):
					c.inData.Add(1)
				case m.Type.Class == stun.ClassSuccessResponse:
					c.inResponses.Add(1)
				case m.Type.Class == stun.ClassErrorResponse:
					c.inResponses.Add(1)
					var code stun.ErrorCodeAttribute
					_ = code.GetFrom(&m)
					c.mu.Lock()
					if c.errorCodes == nil {
						c.errorCodes = map[string]int{}
					}
					c.errorCodes[fmt.Sprintf("%s %d", m.Type.Method, code.Code)]++
					c.mu.Unlock()
				}
			}
		}
	}
	return n, addr, err
}

// withFamily rebuilds an Allocate request with REQUESTED-ADDRESS-FAMILY
// added before MESSAGE-INTEGRITY, keeping the transaction ID.
func (c *tapConn) withFamily(orig *stun.Message) ([]byte, error) {
	m := new(stun.Message)
	m.Type = orig.Type
	m.TransactionID = orig.TransactionID
	m.WriteHeader()
	var realm string
	signed := false
	for _, a := range orig.Attributes {
		switch a.Type {
		case stun.AttrMessageIntegrity, stun.AttrMessageIntegritySHA256:
			signed = true
			continue
		case stun.AttrFingerprint:
			continue
		case stun.AttrRealm:
			realm = string(a.Value)
		}
		m.Add(a.Type, a.Value)
	}
	m.Add(stun.AttrRequestedAddressFamily, []byte{c.requestFamily, 0, 0, 0})
	if signed {
		if err := stun.NewLongTermIntegrity(c.user, realm, c.pass).AddTo(m); err != nil {
			return nil, fmt.Errorf("re-sign allocate: %w", err)
		}
	}
	if err := stun.Fingerprint.AddTo(m); err != nil {
		return nil, fmt.Errorf("fingerprint allocate: %w", err)
	}
	return m.Raw, nil
}

// writeSelfSignedCert writes a self-signed certificate for 127.0.0.1, ::1
// and localhost into dir (cert.pem, key.pem).
func writeSelfSignedCert(t testing.TB, dir string) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	testutil.WriteSelfSignedCert(t, certFile, keyFile, "hybridrelay interop test", big.NewInt(time.Now().UnixNano()))
	return certFile, keyFile
}

// certPool trusts the certificate in the PEM file certFile.
func certPool(t testing.TB, certFile string) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatalf("no certificate in %s", certFile)
	}
	return pool
}

// errors returns a copy of the error responses counted so far.
func (c *tapConn) errors() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[string]int, len(c.errorCodes))
	for k, v := range c.errorCodes {
		m[k] = v
	}
	return m
}

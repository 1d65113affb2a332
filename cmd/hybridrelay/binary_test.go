package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pion/stun/v3"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// binary is the hybridrelay executable built by TestMain: the tests run the
// real program, as an operator would.
var binary string

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "hybridrelay-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "hybridrelay")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build hybridrelay:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// syncBuffer collects a child's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runBinary runs hybridrelay to completion and returns stdout, stderr and
// the exit code.
func runBinary(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(cleanEnv(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	// A grandchild holding the output pipes must not hang the test.
	cmd.WaitDelay = 5 * time.Second
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return out.String(), errb.String(), ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return out.String(), errb.String(), 0
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("hybridrelay %v did not finish within 60s", args)
	}
	return "", "", -1
}

// cleanEnv is the test's environment without HYBRIDRELAY_* settings, so an
// operator's environment cannot change what the tests see.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "HYBRIDRELAY_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// daemonProc is a running `hybridrelay serve`.
type daemonProc struct {
	cmd    *exec.Cmd
	stdout *syncBuffer
	stderr *syncBuffer
	done   chan struct{}
	err    error
}

func startDaemon(t *testing.T, env []string, args ...string) *daemonProc {
	t.Helper()
	return runDaemon(t, exec.Command(binary, append([]string{"serve"}, args...)...), env, 20*time.Second)
}

// runDaemon starts cmd (serve, run directly or through `ip netns exec`)
// with env added to a clean environment, waits up to ready until it
// serves, and kills it at cleanup, showing its output if the test failed.
func runDaemon(t *testing.T, cmd *exec.Cmd, env []string, ready time.Duration) *daemonProc {
	t.Helper()
	d := &daemonProc{cmd: cmd, stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Env = append(cleanEnv(), env...)
	cmd.Stdout, cmd.Stderr = d.stdout, d.stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.err = cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("daemon stderr:\n%s\nstdout:\n%s", d.stderr.String(), d.stdout.String())
		}
	})
	d.waitLog(t, "turn server started", ready)
	return d
}

// waitLog waits until the daemon's log contains s (n-th occurrence when
// given), or fails.
func (d *daemonProc) waitLog(t *testing.T, s string, timeout time.Duration, n ...int) {
	t.Helper()
	want := 1
	if len(n) > 0 {
		want = n[0]
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Count(d.stderr.String(), s) >= want {
			return
		}
		select {
		case <-d.done:
			t.Fatalf("daemon exited (%v) before logging %q", d.err, s)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("daemon did not log %q within %s", s, timeout)
}

// waitDemo waits until the demo user's warning is on stderr and its
// credential block, which is printed after it, is complete on stdout
// (os/exec copies the two streams through separate goroutines, so one
// being there says nothing about the other), and returns stdout.
func (d *daemonProc) waitDemo(t *testing.T, timeout time.Duration) string {
	t.Helper()
	d.waitLog(t, "no users or auth secrets configured", timeout)
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if out := d.stdout.String(); strings.Contains(out, "url: ") {
			return out
		}
	}
	t.Fatalf("demo credentials not printed within %s:\n%s", timeout, d.stdout.String())
	return ""
}

// stop sends sig and waits for the exit code.
func (d *daemonProc) stop(t *testing.T, sig os.Signal, within time.Duration) int {
	t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.done:
	case <-time.After(within):
		t.Fatalf("daemon did not exit within %s of %v", within, sig)
	}
	var ee *exec.ExitError
	if errors.As(d.err, &ee) {
		return ee.ExitCode()
	}
	return 0
}

// freePort returns a port free for both UDP and TCP on 127.0.0.1.
func freePort(t *testing.T) int {
	t.Helper()
	for i := 0; i < 50; i++ {
		u, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := u.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
		u.Close()
		if err == nil {
			l.Close()
			return port
		}
	}
	t.Fatal("no port free for both UDP and TCP")
	return 0
}

// relayRange returns a 100-port relay range starting at a free-looking port.
func relayRange(t *testing.T) (int, int) {
	p := 20000 + os.Getpid()%20000
	return p, p + 99
}

func writeTestFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// stunRoundTrip sends m over UDP to addr and returns the decoded answer.
func stunRoundTrip(t *testing.T, c *net.UDPConn, m *stun.Message) *stun.Message {
	t.Helper()
	buf := make([]byte, 1500)
	// UDP: retransmit like a client, RTO 500 ms doubling (RFC 8489
	// section 6.2.1), capped so a busy machine gets about 20 s in all.
	rto := 500 * time.Millisecond
	for attempt := 0; attempt < 7; attempt++ {
		if _, err := c.Write(m.Raw); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(rto))
		rto = min(2*rto, 4*time.Second)
		n, err := c.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			t.Fatal(err)
		}
		res := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
		if err := res.Decode(); err != nil {
			t.Fatalf("decode answer: %v", err)
		}
		if res.TransactionID != m.TransactionID {
			t.Fatalf("answer for another transaction")
		}
		return res
	}
	t.Fatal("no STUN answer after 7 tries")
	return nil
}

func dialUDP(t *testing.T, port int) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// allocate runs the long-term credential exchange (RFC 8489 section 9.2):
// an unauthenticated Allocate, the 401 with REALM and NONCE, then the
// authenticated one. It returns the final answer.
func allocate(t *testing.T, c *net.UDPConn, user, pass string) *stun.Message {
	t.Helper()
	transport := stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{17, 0, 0, 0}} // UDP, RFC 8656 section 18.8
	allocType := stun.NewType(stun.MethodAllocate, stun.ClassRequest)
	first := stun.MustBuild(stun.TransactionID, allocType, transport, stun.Fingerprint)
	res := stunRoundTrip(t, c, first)
	var code stun.ErrorCodeAttribute
	if err := code.GetFrom(res); err != nil || code.Code != stun.CodeUnauthorized {
		t.Fatalf("first Allocate: want 401, got %v (%v)", res, err)
	}
	var nonce stun.Nonce
	var realm stun.Realm
	if err := nonce.GetFrom(res); err != nil {
		t.Fatal(err)
	}
	if err := realm.GetFrom(res); err != nil {
		t.Fatal(err)
	}
	second := stun.MustBuild(stun.TransactionID, allocType, transport,
		stun.NewUsername(user), realm, nonce,
		stun.NewLongTermIntegrity(user, realm.String(), pass), stun.Fingerprint)
	return stunRoundTrip(t, c, second)
}

func TestServeBindingReloadAndTerm(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	lo, hi := relayRange(t)
	conf := writeTestFile(t, dir, "hybridrelay.conf", fmt.Sprintf(`# test configuration
listen = 127.0.0.1:%d
relay-ip = 127.0.0.1
min-port = %d
max-port = %d
realm = test.example
user = alice:first-password
datapath = plain
admin-socket = off
log-level = debug
`, port, lo, hi))
	d := startDaemon(t, nil, "--config", conf)

	c := dialUDP(t, port)
	// A Binding request is answered with the client's address (RFC 8489
	// section 14.2).
	res := stunRoundTrip(t, c, stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint))
	if res.Type != stun.BindingSuccess {
		t.Fatalf("binding answer type %v", res.Type)
	}
	var xor stun.XORMappedAddress
	if err := xor.GetFrom(res); err != nil {
		t.Fatal(err)
	}
	local := c.LocalAddr().(*net.UDPAddr)
	if !xor.IP.Equal(local.IP) || xor.Port != local.Port {
		t.Fatalf("XOR-MAPPED-ADDRESS %v, want %v", xor, local)
	}

	// bob is not configured yet: 401 after the credentials are checked.
	res = allocate(t, c, "bob", "second-password")
	var code stun.ErrorCodeAttribute
	if err := code.GetFrom(res); err != nil || code.Code != stun.CodeUnauthorized {
		t.Fatalf("Allocate as unknown bob: want 401, got %v", res)
	}

	// Add bob and reload.
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`listen = 127.0.0.1:%d
relay-ip = 127.0.0.1
min-port = %d
max-port = %d
realm = test.example
user = alice:first-password
user = bob:second-password
datapath = plain
admin-socket = off
log-level = debug
`, port, lo, hi)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	d.waitLog(t, "reload: credentials applied", 10*time.Second)
	if !strings.Contains(d.stderr.String(), "users_added=[bob]") {
		t.Errorf("reload log does not name the added user:\n%s", d.stderr.String())
	}
	if strings.Contains(d.stderr.String(), "second-password") {
		t.Fatal("a password reached the log")
	}
	c2 := dialUDP(t, port) // a new 5-tuple for a new allocation
	res = allocate(t, c2, "bob", "second-password")
	if res.Type != stun.NewType(stun.MethodAllocate, stun.ClassSuccessResponse) {
		t.Fatalf("Allocate as bob after reload: %v", res)
	}
	var relayed stun.XORMappedAddress
	if err := relayed.GetFromAs(res, stun.AttrXORRelayedAddress); err != nil {
		t.Fatal(err)
	}
	if !relayed.IP.Equal(net.IPv4(127, 0, 0, 1)) || relayed.Port < lo || relayed.Port > hi {
		t.Fatalf("relayed address %v outside 127.0.0.1:%d-%d", relayed, lo, hi)
	}

	// A broken file on SIGHUP keeps the running configuration.
	writeTestFile(t, dir, "hybridrelay.conf", "max-port = 70000\n")
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLog(t, "reload failed; keeping the running configuration", 10*time.Second)
	res = stunRoundTrip(t, c, stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint))
	if res.Type != stun.BindingSuccess {
		t.Fatal("not serving after a failed reload")
	}

	start := time.Now()
	if code := d.stop(t, syscall.SIGTERM, 15*time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit code %d, want 0", code)
	}
	t.Logf("SIGTERM to exit: %s", time.Since(start))
	if !strings.Contains(d.stderr.String(), "msg=stopped") {
		t.Errorf("no graceful stop logged")
	}
}

func TestServeDemoUser(t *testing.T) {
	port := freePort(t)
	lo, hi := relayRange(t)
	d := startDaemon(t, []string{
		fmt.Sprintf("HYBRIDRELAY_LISTEN=udp://127.0.0.1:%d", port),
		"HYBRIDRELAY_ADMIN_SOCKET=off",
		fmt.Sprintf("HYBRIDRELAY_MIN_PORT=%d", lo), fmt.Sprintf("HYBRIDRELAY_MAX_PORT=%d", hi),
	}, "--datapath", "auto", "--log-format", "json")
	out := d.waitDemo(t, 10*time.Second)
	i := strings.Index(out, "password: ")
	if i < 0 || !strings.Contains(out, "username: demo") {
		t.Fatalf("demo credentials not printed:\n%s", out)
	}
	pass := strings.Fields(out[i+len("password: "):])[0]
	if !strings.Contains(d.stderr.String(), `"level":"WARN"`) || !strings.Contains(d.stderr.String(), "testing only") {
		t.Fatalf("no WARN about the demo user:\n%s", d.stderr.String())
	}
	if strings.Contains(d.stderr.String(), pass) {
		t.Fatal("the demo password reached the log")
	}
	if !strings.Contains(d.stderr.String(), `"msg":"datapath selected"`) {
		t.Fatal("datapath choice not logged")
	}
	res := allocate(t, dialUDP(t, port), "demo", pass)
	if res.Type != stun.NewType(stun.MethodAllocate, stun.ClassSuccessResponse) {
		t.Fatalf("Allocate with the printed demo credentials: %v", res)
	}
	if code := d.stop(t, syscall.SIGINT, 15*time.Second); code != 0 {
		t.Fatalf("SIGINT: exit code %d", code)
	}
}

func TestServeConfigErrors(t *testing.T) {
	dir := t.TempDir()
	bad := writeTestFile(t, dir, "bad.conf", "# comment\nrealm = example.org\n\nmax-port = 70000\n")
	unknown := writeTestFile(t, dir, "typo.conf", "listen = 127.0.0.1:3478\nrelayip = 192.0.2.1\n")
	tests := []struct {
		name string
		env  []string
		args []string
		code int
		msg  string
	}{
		{"bad value", nil, []string{"serve", "--config", bad}, 2, bad + `:4: key "max-port": 70000 is not a port (1-65535)`},
		{"unknown key", nil, []string{"serve", "--config", unknown}, 2, unknown + `:2: key "relayip": unknown key; did you mean "relay-ip"?`},
		{"missing file", nil, []string{"serve", "--config", filepath.Join(dir, "nope.conf")}, 2, "read config: open " + filepath.Join(dir, "nope.conf")},
		{"bad env", []string{"HYBRIDRELAY_MIN_PORT=0"}, []string{"serve"}, 2, "environment HYBRIDRELAY_MIN_PORT: 0 is not a port (1-65535)"},
		{"bad flag value", nil, []string{"serve", "--datapath", "turbo"}, 2, `flag --datapath: "turbo" is not one of auto, xdp, gso, plain`},
		{"unknown flag", nil, []string{"serve", "--listn", "x"}, 2, "flag provided but not defined: -listn"},
		{"stray argument", nil, []string{"serve", "my.conf"}, 2, `serve takes no arguments, got "my.conf" (did you mean --config my.conf?)`},
		{"unknown command", nil, []string{"srve"}, 2, "srve"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, stderr, code := runBinary(t, tt.env, tt.args...)
			if code != tt.code || !strings.Contains(stderr, tt.msg) {
				t.Fatalf("exit %d, want %d; stderr:\n%s\nwant it to contain %q", code, tt.code, stderr, tt.msg)
			}
			if strings.Contains(stderr, "goroutine ") || strings.Contains(stderr, "panic") {
				t.Fatalf("stack trace reached the user:\n%s", stderr)
			}
		})
	}
}

// TestHelpGolden pins the --help output of every command of this file's
// owner: flag names are an interface scripts rely on. go test -run
// TestHelpGolden -update rewrites the files. The top-level help changes
// whenever a command is added, so it is checked for completeness instead.
func TestHelpGolden(t *testing.T) {
	for _, cmd := range goldenHelpCommands {
		t.Run(strings.Join(cmd, "-"), func(t *testing.T) {
			stdout, stderr, code := runBinary(t, nil, append(cmd, "--help")...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			compareGolden(t, filepath.Join("testdata", "help-"+strings.Join(cmd, "-")+".golden"), stdout)
		})
	}
	t.Run("top-level", func(t *testing.T) {
		stdout, stderr, code := runBinary(t, nil, "--help")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		for _, c := range commands {
			if !strings.Contains(stdout, "\n   "+c.Name+" ") {
				t.Errorf("top-level help does not list %q:\n%s", c.Name, stdout)
			}
			if c.Usage == "" {
				t.Errorf("command %q has no usage line", c.Name)
			}
		}
	})
}

// goldenHelpCommands are the commands whose help is pinned.
var goldenHelpCommands = [][]string{{"serve"}, {"stats"}, {"maps"}, {"maps", "dump"}, {"maps", "dump", "channels"}, {"maps", "dump", "peers"}, {"maps", "dump", "allocations"}, {"maps", "unpin"}, {"probe"}, {"compare"}, {"drain"}, {"version"}}

func compareGolden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update to create it)", err, t.Name())
	}
	if string(want) != got {
		t.Fatalf("output differs from %s (go test -update rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// execCommand is exec.Command (a seam only for readability in the tests).
var execCommand = exec.Command

type netipAddrPort = netip.AddrPort

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// authed sends an authenticated request of type typ with attrs, after
// fetching a nonce with an unauthenticated one (RFC 8489 section 9.2).
func authed(t *testing.T, c *net.UDPConn, user, pass string, typ stun.MessageType, attrs ...stun.Setter) *stun.Message {
	t.Helper()
	first := stun.MustBuild(append([]stun.Setter{stun.TransactionID, typ}, append(attrs, stun.Fingerprint)...)...)
	res := stunRoundTrip(t, c, first)
	var nonce stun.Nonce
	var realm stun.Realm
	if err := nonce.GetFrom(res); err != nil {
		t.Fatalf("no NONCE in %v", res)
	}
	if err := realm.GetFrom(res); err != nil {
		t.Fatalf("no REALM in %v", res)
	}
	setters := append([]stun.Setter{stun.TransactionID, typ}, attrs...)
	setters = append(setters, stun.NewUsername(user), realm, nonce, stun.NewLongTermIntegrity(user, realm.String(), pass), stun.Fingerprint)
	return stunRoundTrip(t, c, stun.MustBuild(setters...))
}

// bindChannel allocates on c and binds channel number to peer (RFC 8656
// section 11), failing the test unless every step succeeds.
func bindChannel(t *testing.T, c *net.UDPConn, user, pass, peer string, number uint16) {
	t.Helper()
	if res := allocate(t, c, user, pass); res.Type.Class != stun.ClassSuccessResponse {
		t.Fatalf("allocate: %v", res)
	}
	ap := netip.MustParseAddrPort(peer)
	xpeer := stun.XORMappedAddress{IP: ap.Addr().AsSlice(), Port: int(ap.Port())}
	peerAttr := setterFunc(func(m *stun.Message) error { return xpeer.AddToAs(m, stun.AttrXORPeerAddress) })
	// CHANNEL-NUMBER: the number, then 16 bits RFFU (RFC 8656 section 18.1).
	chAttr := stun.RawAttribute{Type: stun.AttrChannelNumber, Value: []byte{byte(number >> 8), byte(number), 0, 0}}
	res := authed(t, c, user, pass, stun.NewType(stun.MethodChannelBind, stun.ClassRequest), chAttr, peerAttr)
	if res.Type.Class != stun.ClassSuccessResponse {
		var code stun.ErrorCodeAttribute
		code.GetFrom(res)
		t.Fatalf("ChannelBind: %v %v", res, code)
	}
}

// setterFunc adapts a function to stun.Setter.
type setterFunc func(*stun.Message) error

func (f setterFunc) AddTo(m *stun.Message) error { return f(m) }

// TestServeAddressInUse: a runtime failure exits 1 and names the address.
func TestServeAddressInUse(t *testing.T) {
	busy, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	addr := busy.LocalAddr().String()
	_, stderr, code := runBinary(t, nil, "serve", "--listen", "udp://"+addr, "--datapath", "plain", "--admin-socket", "off", "--user", "a:b")
	if code != 1 || !strings.Contains(stderr, "listen udp "+addr) || !strings.Contains(stderr, "address already in use") {
		t.Fatalf("exit %d, want 1 naming %s:\n%s", code, addr, stderr)
	}
}

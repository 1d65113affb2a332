package admin

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/privtest"
	"github.com/hybridrelay/hybridrelay/pkg/control"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// TestMain doubles as a client process for the peer-credential test: with
// ADMIN_TEST_CLIENT set it calls "stats" on that socket and reports.
func TestMain(m *testing.M) {
	if p := os.Getenv("ADMIN_TEST_CLIENT"); p != "" {
		c, err := Dial(p)
		if err == nil {
			var s Snapshot
			err = c.Call("stats", &s)
		}
		if err != nil {
			fmt.Println("ERR", err)
			os.Exit(3)
		}
		fmt.Println("OK")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// fixedSource answers with fixed data; the admin package only carries it.
type fixedSource struct{ kernel bool }

func (f fixedSource) Snapshot() (Snapshot, error) {
	return Snapshot{Time: time.Unix(1700000000, 0).UTC(), PID: 42, Datapath: "gso",
		Server:    &control.ServerStats{Allocations: 3, AuthFailures: map[string]uint64{"bad_integrity": 2}},
		Dataplane: &dataplane.Stats{Datapath: "gso", RxPackets: 99}}, nil
}

func (f fixedSource) Allocations() []control.AllocationInfo {
	return []control.AllocationInfo{{Transport: "udp", Client: netip.MustParseAddrPort("192.0.2.1:5000"), Username: "alice"}}
}

func (f fixedSource) Channels() ([]Channel, error) {
	if !f.kernel {
		return nil, ErrNoKernelPath
	}
	return []Channel{{Number: 0x4000, Peer: netip.MustParseAddrPort("198.51.100.1:9")}}, nil
}

func (f fixedSource) SetDraining(on bool) (DrainStatus, error) {
	return DrainStatus{Draining: on, Changed: true, Allocations: 3}, nil
}

func listen(t *testing.T, src Source) (*Server, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "run", "hybridrelay")
	path := filepath.Join(dir, "admin.sock")
	s, err := Listen(path, src, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func TestCommands(t *testing.T) {
	_, path := listen(t, fixedSource{})
	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var s Snapshot
	if err := c.Call("stats", &s); err != nil {
		t.Fatal(err)
	}
	if s.PID != 42 || s.Server.Allocations != 3 || s.Server.AuthFailures["bad_integrity"] != 2 || s.Dataplane.RxPackets != 99 {
		t.Fatalf("stats: %+v", s)
	}
	var allocs []control.AllocationInfo
	if err := c.Call("allocations", &allocs); err != nil || len(allocs) != 1 || allocs[0].Username != "alice" ||
		allocs[0].Client != netip.MustParseAddrPort("192.0.2.1:5000") {
		t.Fatalf("allocations: %+v %v", allocs, err)
	}
	// The same connection carries further requests; errors are answers.
	if err := c.Call("channels", nil); err == nil || !strings.Contains(err.Error(), "without the kernel fast path") {
		t.Fatalf("channels without xdp: %v", err)
	}
	for _, cmd := range []string{"drain", "undrain"} {
		var ds DrainStatus
		if err := c.Call(cmd, &ds); err != nil || ds.Draining != (cmd == "drain") || ds.Allocations != 3 {
			t.Fatalf("%s: %+v %v", cmd, ds, err)
		}
	}
	if err := c.Call("reboot", nil); err == nil || !strings.Contains(err.Error(), `unknown command "reboot"`) {
		t.Fatalf("unknown command: %v", err)
	}
}

func TestPermissionsAndStaleSocket(t *testing.T) {
	s, path := listen(t, fixedSource{kernel: true})
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket mode %v, want socket 0600", st.Mode())
	}
	dst, _ := os.Stat(filepath.Dir(path))
	if dst.Mode().Perm() != 0o700 {
		t.Fatalf("directory mode %v, want 0700", dst.Mode().Perm())
	}
	// A second daemon on the same path is refused while the first lives.
	if _, err := Listen(path, fixedSource{}, nil); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("second Listen: %v", err)
	}
	s.Close()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket not removed on Close: %v", err)
	}
	if _, err := Dial(path); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Dial after Close: %v, want ErrNotRunning", err)
	}
	// A stale socket file (a crashed daemon) is replaced.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if _, err := Dial(path); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Dial on stale socket: %v, want ErrNotRunning", err)
	}
	s2, err := Listen(path, fixedSource{}, nil)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	s2.Close()
}

func TestLooseDirectoryTightened(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "loose")
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o777)
	s, err := Listen(filepath.Join(dir, "a.sock"), fixedSource{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, _ := os.Stat(dir)
	if st.Mode().Perm() != 0o700 {
		t.Fatalf("directory mode %v after Listen, want 0700", st.Mode().Perm())
	}
}

func TestMalformedRequests(t *testing.T) {
	_, path := listen(t, fixedSource{})
	tests := []struct {
		name, send, want string
	}{
		{"not json", "hello\n", `"error":"request is not JSON`},
		{"too long", strings.Repeat("x", maxRequest+10) + "\n", `request longer than 4096 bytes`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte(tt.send)); err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || !strings.Contains(line, tt.want) {
				t.Fatalf("answer %q (%v), want %q", line, err, tt.want)
			}
		})
	}
}

// TestOtherUserRefused connects as user nobody (through a 0755 directory
// made for the test, so that only SO_PEERCRED can refuse it) and expects
// the daemon to hang up without an answer.
func TestOtherUserRefused(t *testing.T) {
	privtest.Need(t)
	dir, err := os.MkdirTemp("", "hr-admin-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "admin.sock")
	s, err := Listen(path, fixedSource{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Open the fences the test is not about.
	os.Chmod(dir, 0o755)
	os.Chmod(path, 0o666)
	// The test binary lives under a 0700 build directory: copy it where
	// nobody can execute it.
	self, _ := os.Executable()
	bin, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "client")
	if err := os.WriteFile(exe, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		uid  uint32
		want string
	}{
		{"root", 0, "OK"},
		{"nobody", 65534, "ERR"},
	} {
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), "ADMIN_TEST_CLIENT="+path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: tt.uid, Gid: tt.uid}}
		out, err := cmd.CombinedOutput()
		if !strings.HasPrefix(string(out), tt.want) {
			t.Errorf("%s: client said %q (%v), want %s", tt.name, out, err, tt.want)
		}
	}
}

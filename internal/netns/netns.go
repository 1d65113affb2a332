package netns

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Prefix starts the name of every namespace this package makes; the pid of
// the creating process follows, so stale ones can be found and removed.
const Prefix = "hrt"

var seq atomic.Uint32

// NS is one named network namespace (as made by `ip netns add`).
type NS struct {
	Name string
}

// Run runs cmd with args through `ip`, returning its output and an error
// that carries that output.
func Run(args ...string) (string, error) {
	return run("ip", args...)
}

func run(bin string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", bin, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// New makes a namespace named hrt<pid>-<n><role> with its loopback up.
func New(role string) (*NS, error) {
	name := fmt.Sprintf("%s%d-%d%s", Prefix, os.Getpid(), seq.Add(1), role)
	if len(name) > 40 {
		name = name[:40]
	}
	if _, err := Run("netns", "add", name); err != nil {
		return nil, fmt.Errorf("create namespace: %w", err)
	}
	ns := &NS{Name: name}
	if _, err := ns.IP("link", "set", "lo", "up"); err != nil {
		ns.Delete()
		return nil, err
	}
	return ns, nil
}

// Delete removes the namespace; errors are ignored (it may be gone already).
func (ns *NS) Delete() {
	_, _ = Run("netns", "del", ns.Name)
}

// IP runs `ip -n NAME args...`.
func (ns *NS) IP(args ...string) (string, error) {
	return Run(append([]string{"-n", ns.Name}, args...)...)
}

// Exec returns a command that runs inside the namespace.
func (ns *NS) Exec(bin string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns.Name, bin}, args...)...)
}

// Sh runs bin with args inside the namespace and waits for it.
func (ns *NS) Sh(bin string, args ...string) (string, error) {
	return run("ip", append([]string{"netns", "exec", ns.Name, bin}, args...)...)
}

// Do runs fn on an OS thread that has entered the namespace. Sockets made
// inside fn stay in the namespace after Do returns and can be used from any
// goroutine. fn must not start goroutines that expect to be in the
// namespace.
func (ns *NS) Do(fn func() error) error {
	target, err := unix.Open("/run/netns/"+ns.Name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", ns.Name, err)
	}
	defer unix.Close(target)
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open current namespace: %w", err)
	}
	defer unix.Close(orig)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter namespace %s: %w", ns.Name, err)
	}
	fnErr := fn()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		// The thread is stuck in the wrong namespace: keep it locked so
		// the runtime throws it away when this goroutine ends.
		return fmt.Errorf("return from namespace %s: %w", ns.Name, err)
	}
	runtime.UnlockOSThread()
	return fnErr
}

// Ifindex returns the index of interface name inside the namespace. It asks
// the kernel from inside the namespace (SIOCGIFINDEX): /sys/class/net in
// this process belongs to the root namespace and would name another device.
func (ns *NS) Ifindex(name string) (int, error) {
	var idx int
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("interface %s: %w", name, err)
		}
		defer unix.Close(fd)
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return fmt.Errorf("interface %s: %w", name, err)
		}
		if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
			return fmt.Errorf("interface %s in %s: %w", name, ns.Name, err)
		}
		idx = int(ifr.Uint32())
		return nil
	})
	return idx, err
}

// RemoveStale deletes namespaces made by this package in processes that no
// longer exist (a test killed before its cleanup ran).
func RemoveStale() {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, Prefix) {
			continue
		}
		pidStr, _, ok := strings.Cut(strings.TrimPrefix(name, Prefix), "-")
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat("/proc/" + pidStr); err == nil {
			continue
		}
		_, _ = Run("netns", "del", name)
	}
}

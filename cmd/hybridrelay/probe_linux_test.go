//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hybridrelay/hybridrelay/internal/privtest"
)

// probeNetnsName matches the namespaces these tests make: hrt<pid>pr<case>.
var probeNetnsName = regexp.MustCompile(`^hrt(\d+)pr[a-z]+$`)

// newProbeNetns makes an empty network namespace for one test case and
// removes it when the test ends, however it ends. Namespaces of this kind
// left by an earlier run that was killed (its pid gone) are removed first.
func newProbeNetns(t *testing.T, tag string) string {
	t.Helper()
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			m := probeNetnsName.FindStringSubmatch(e.Name())
			if m == nil {
				continue
			}
			if pid, _ := strconv.Atoi(m[1]); pid != os.Getpid() && syscall.Kill(pid, 0) == syscall.ESRCH {
				exec.Command("ip", "netns", "del", e.Name()).Run()
			}
		}
	}
	name := fmt.Sprintf("hrt%dpr%s", os.Getpid(), tag)
	exec.Command("ip", "netns", "del", name).Run()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return name
}

// nsRun runs `ip -n ns ARGS...` and fails the test on error.
func nsRun(t *testing.T, ns string, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", ns, strings.Join(args, " "), err, out)
	}
}

// nsSysctl reads a /proc/sys file as a process in ns sees it.
func nsSysctl(t *testing.T, ns, path string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "cat", path).Output()
	if err != nil {
		t.Fatalf("read %s in %s: %v", path, ns, err)
	}
	return strings.TrimSpace(string(out))
}

// probeIn runs the real `hybridrelay probe` inside ns with a configuration
// file, as text and as JSON.
func probeIn(t *testing.T, ns, conf string) (probeReport, string) {
	t.Helper()
	path := writeTestFile(t, t.TempDir(), "hybridrelay.conf", conf)
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("ip", append([]string{"netns", "exec", ns, binary, "probe", "--config", path}, args...)...)
		cmd.Env = cleanEnv()
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			t.Fatalf("probe in %s: %v\n%s%s", ns, err, out.String(), errb.String())
		}
		return out.String()
	}
	var r probeReport
	js := run("--json")
	if err := json.Unmarshal([]byte(js), &r); err != nil {
		t.Fatalf("%v:\n%s", err, js)
	}
	// The JSON's decision is serve's own decision on the JSON's facts.
	if name, reason, err := decideDatapath("auto", "auto", r.hostFacts); err != nil || name != r.Auto.Datapath || reason != r.Auto.Reason {
		t.Fatalf("probe said %s (%s); the decision on its facts is %s (%s, %v)", r.Auto.Datapath, r.Auto.Reason, name, reason, err)
	}
	return r, run()
}

// TestProbeNetnsVethForwardingOff: a host as it comes (IP forwarding off),
// one veth with the default routes. The kernel path needs no forwarding:
// auto picks xdp, and probe leaves the sysctls as they were.
func TestProbeNetnsVethForwardingOff(t *testing.T) {
	privtest.Need(t, "ip")
	ns := newProbeNetns(t, "veth")
	nsRun(t, ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
	nsRun(t, ns, "addr", "add", "198.18.0.2/24", "dev", "v0")
	nsRun(t, ns, "addr", "add", "2001:2::2/64", "dev", "v0", "nodad")
	for _, l := range []string{"lo", "v0", "v1"} {
		nsRun(t, ns, "link", "set", l, "up")
	}
	nsRun(t, ns, "route", "add", "default", "via", "198.18.0.1", "dev", "v0")
	nsRun(t, ns, "-6", "route", "add", "default", "via", "2001:2::1", "dev", "v0")
	const v4fwd, v6fwd = "/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"
	if a, b := nsSysctl(t, ns, v4fwd), nsSysctl(t, ns, v6fwd); a != "0" || b != "0" {
		t.Fatalf("a new namespace has forwarding %s/%s; this case needs the defaults (off)", a, b)
	}

	r, text := probeIn(t, ns, "listen = udp://198.18.0.2:3478\nlisten = udp://[2001:2::2]:3478\nrelay-ip = 198.18.0.2\nrelay-ip = 2001:2::2\n")
	if r.Auto.Datapath != "xdp" {
		t.Fatalf("auto picked %s (%s), want xdp\n%s", r.Auto.Datapath, r.Auto.Reason, text)
	}
	if len(r.XDP) != 1 || r.XDP[0].Iface != "v0" || !r.XDP[0].Up || !r.XDP[0].Ethernet || r.XDP[0].MAC == "" || r.XDP[0].MTU != 1500 ||
		strings.Join(r.XDP[0].RouteFamilies, ",") != "ipv4,ipv6" {
		t.Fatalf("interface facts: %+v", r.XDP)
	}
	if r.Netlink != "" || len(r.Routes) != 2 {
		t.Fatalf("netlink %q, routes %+v", r.Netlink, r.Routes)
	}
	for i, want := range []struct{ fam, gw string }{{"ipv4", "198.18.0.1"}, {"ipv6", "2001:2::1"}} {
		rf := r.Routes[i]
		if rf.Family != want.fam || !rf.ViaXDP || rf.Gateway != want.gw || rf.LookupDst != want.gw ||
			!strings.Contains(rf.Lookup, "dev v0") || rf.LookupErr != "" || rf.Neighbour == "" {
			t.Errorf("%s route: %+v", want.fam, rf)
		}
	}
	for _, a := range r.Addrs {
		if a.Iface != "v0" || !a.OnXDP {
			t.Errorf("address %+v not placed on the XDP interface", a)
		}
	}
	if r.Forwarding.IPv4 != "off" || r.Forwarding.IPv6 != "off" {
		t.Errorf("forwarding reported %+v", r.Forwarding)
	}
	for _, want := range []string{"link v0          up, ethernet ", "route ipv4       default via 198.18.0.1 dev v0 (an XDP interface)",
		"route get 2001:2::1: ", "forwarding       ipv4 off, ipv6 off (information only: the kernel path does not need IP forwarding and hybridrelay never changes it)",
		"datapath auto would pick: xdp"} {
		if !strings.Contains(text, want) {
			t.Errorf("text lacks %q:\n%s", want, text)
		}
	}
	if a, b := nsSysctl(t, ns, v4fwd), nsSysctl(t, ns, v6fwd); a != "0" || b != "0" {
		t.Fatalf("forwarding is %s/%s after probe; probe must never change it", a, b)
	}
}

// TestProbeNetnsTunOnly: the only interface besides loopback is a tun
// device (no Ethernet header for the program to rewrite), up and carrying
// the default route. XDP still attaches to it, but the kernel path would
// forward nothing: probe and serve --datapath auto pick gso and say why.
func TestProbeNetnsTunOnly(t *testing.T) {
	privtest.Need(t, "ip")
	ns := newProbeNetns(t, "tun")
	tunFD := tunInNetns(t, ns, "t0")
	t.Cleanup(func() { unix.Close(tunFD) })
	nsRun(t, ns, "addr", "add", "198.18.2.1/24", "dev", "t0")
	nsRun(t, ns, "link", "set", "lo", "up")
	nsRun(t, ns, "link", "set", "t0", "up")
	nsRun(t, ns, "route", "add", "default", "dev", "t0")

	const conf = "listen = udp://198.18.2.1:3478\nrelay-ip = 198.18.2.1\n"
	r, text := probeIn(t, ns, conf)
	if len(r.XDP) != 1 || r.XDP[0].Iface != "t0" || !r.XDP[0].Up || r.XDP[0].Ethernet || !strings.HasPrefix(r.XDP[0].LinkType, "none") {
		t.Fatalf("interface facts: %+v\n%s", r.XDP, text)
	}
	if !r.XDP[0].Native && !r.XDP[0].Generic {
		t.Fatalf("XDP did not attach to t0 at all (%+v); this case is about attaching but not forwarding", r.XDP[0])
	}
	wantReason := "auto: xdp would forward nothing (no XDP interface is up, Ethernet and carries an IPv4 route: t0 not Ethernet (link type none"
	if r.Auto.Datapath != "gso" || !strings.HasPrefix(r.Auto.Reason, wantReason) {
		t.Fatalf("auto picked %s (%s), want gso because %s", r.Auto.Datapath, r.Auto.Reason, wantReason)
	}
	if !strings.Contains(text, "cannot forward: not Ethernet") || !strings.Contains(text, "datapath auto would pick: gso") {
		t.Errorf("text:\n%s", text)
	}

	// serve makes the same decision and logs why.
	path := writeTestFile(t, t.TempDir(), "serve.conf", conf+"user = u:p\nadmin-socket = off\n")
	d := runDaemon(t, exec.Command("ip", "netns", "exec", ns, binary, "serve", "--config", path, "--bpffs", filepath.Join("/sys/fs/bpf", ns)), nil, 20*time.Second)
	log := d.stderr.String()
	for _, want := range []string{`level=WARN msg="xdp would forward nothing on this host: using the userspace datapath" datapath=gso`,
		`msg="datapath selected" datapath=gso reason="` + wantReason} {
		if !strings.Contains(log, want) {
			t.Errorf("serve log lacks %q:\n%s", want, log)
		}
	}
	if code := d.stop(t, syscall.SIGTERM, 15*time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit %d", code)
	}
}

// tunInNetns creates a tun device in ns and keeps it attached (carrier on)
// while the returned descriptor is open. The setns happens on a thread of
// its own that is never returned to the runtime's pool.
func tunInNetns(t *testing.T, ns, name string) int {
	t.Helper()
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// Never unlocked: the thread, now in ns, exits with the goroutine.
		runtime.LockOSThread()
		nsfd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- result{-1, err}
			return
		}
		defer unix.Close(nsfd)
		if err := unix.Setns(nsfd, unix.CLONE_NEWNET); err != nil {
			ch <- result{-1, fmt.Errorf("setns: %w", err)}
			return
		}
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- result{-1, err}
			return
		}
		ifr, err := unix.NewIfreq(name)
		if err == nil {
			ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
			err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		}
		if err != nil {
			unix.Close(fd)
			ch <- result{-1, fmt.Errorf("TUNSETIFF %s: %w", name, err)}
			return
		}
		ch <- result{fd, nil}
	}()
	r := <-ch
	if r.err != nil {
		if privtest.Required() {
			t.Fatalf("tun device in %s: %v", ns, r.err)
		}
		t.Skipf("no tun device: %v", r.err)
	}
	return r.fd
}

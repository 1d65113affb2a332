package loader

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/internal/privtest"
	"golang.org/x/sys/unix"
)

// xdpMd is struct xdp_md, the BPF_PROG_RUN context.
type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// progEnv is one namespace shaped like a relay host, for BPF_PROG_RUN:
//
//	rc0       198.18.0.2/24 2001:2::2/64        client side; neighbours .1 and .3 (v4 and v6)
//	rv0       198.18.2.2/24 2001:2:0:2::2/64    "VLAN 100 on rc0" (SetVLANDevice); neighbours .1 and .5
//	rp0       198.18.1.2/24 2001:2:0:1::2/64    peer side (MTU 1400); neighbours .1 and .3
//	rx0       198.18.3.2/24                     not in the devmap; neighbour .1
//
// Neighbours are permanent entries with fixed MACs, so the egress resolver
// finds them without any traffic; 198.18.1.99 has none. IP forwarding
// stays off, as on a host that is not a router.
type progEnv struct {
	ns                  *netns.NS
	x                   *XDP
	rc0, rc0v, rp0, rx0 int
}

var (
	macRC0   = [6]byte{0x02, 0, 0, 0, 0, 0xc0}
	macRP0   = [6]byte{0x02, 0, 0, 0, 0, 0xd0}
	macRX0   = [6]byte{0x02, 0, 0, 0, 0, 0xe0}
	macCli   = [6]byte{0x02, 0, 0, 0, 1, 1}
	macCli3  = [6]byte{0x02, 0, 0, 0, 1, 3}
	macPeer  = [6]byte{0x02, 0, 0, 0, 2, 1}
	macPeer3 = [6]byte{0x02, 0, 0, 0, 2, 3}
	macVCli  = [6]byte{0x02, 0, 0, 0, 3, 1}
	macVPr   = [6]byte{0x02, 0, 0, 0, 3, 5}
	macX     = [6]byte{0x02, 0, 0, 0, 4, 1}
)

func macStr(m [6]byte) string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
}

var pinSeq atomic.Uint32

// testPinDir is a pin directory on a private bpffs mounted for the test
// and unmounted (with every pin in it) at cleanup: tests leave nothing in
// the host's /sys/fs/bpf.
func testPinDir(t testing.TB) string {
	mnt := filepath.Join(os.TempDir(), fmt.Sprintf("hrbpffs-%d-%d", os.Getpid(), pinSeq.Add(1)))
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", mnt, "bpf", 0, "mode=0700"); err != nil {
		os.Remove(mnt)
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount test bpffs: %v", err)
		}
		os.Remove(mnt)
	})
	return filepath.Join(mnt, "hybridrelay")
}

func newProgEnv(t testing.TB, maxChannels int) *progEnv {
	return newProgEnvPin(t, maxChannels, true)
}

// newProgEnvPin is newProgEnv; pin=false loads private maps (no bpffs
// mount: fuzz workers may be stopped before their cleanups run).
func newProgEnvPin(t testing.TB, maxChannels int, pin bool) *progEnv {
	privtest.Need(t, "ip")
	ns, err := netns.New("g")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Delete)
	steps := [][]string{
		{"link", "add", "rc0", "address", macStr(macRC0), "type", "veth", "peer", "name", "rc1"},
		{"link", "add", "rp0", "address", macStr(macRP0), "mtu", "1400", "type", "veth", "peer", "name", "rp1", "mtu", "1400"},
		{"link", "add", "rx0", "address", macStr(macRX0), "type", "veth", "peer", "name", "rx1"},
		// Stand-in for the VLAN device rc0.100 (kernels without 8021q exist,
		// this one among them): SetVLANDevice says "rv0 is VLAN 100 on rc0"
		// and routes to its subnet name rv0.
		{"link", "add", "rv0", "address", macStr(macRC0), "type", "veth", "peer", "name", "rv1"},
	}
	for _, d := range []string{"rc0", "rc1", "rp0", "rp1", "rx0", "rx1", "rv0", "rv1"} {
		steps = append(steps, []string{"link", "set", d, "up"})
	}
	steps = append(steps,
		[]string{"addr", "add", "198.18.0.2/24", "dev", "rc0"},
		[]string{"addr", "add", "2001:2::2/64", "dev", "rc0", "nodad"},
		[]string{"addr", "add", "198.18.2.2/24", "dev", "rv0"},
		[]string{"addr", "add", "2001:2:0:2::2/64", "dev", "rv0", "nodad"},
		[]string{"addr", "add", "198.18.1.2/24", "dev", "rp0"},
		[]string{"addr", "add", "2001:2:0:1::2/64", "dev", "rp0", "nodad"},
		[]string{"addr", "add", "198.18.3.2/24", "dev", "rx0"},
		[]string{"neigh", "add", "198.18.0.1", "lladdr", macStr(macCli), "dev", "rc0", "nud", "permanent"},
		[]string{"neigh", "add", "2001:2::1", "lladdr", macStr(macCli), "dev", "rc0", "nud", "permanent"},
		[]string{"neigh", "add", "198.18.0.3", "lladdr", macStr(macCli3), "dev", "rc0", "nud", "permanent"},
		[]string{"neigh", "add", "198.18.2.1", "lladdr", macStr(macVCli), "dev", "rv0", "nud", "permanent"},
		[]string{"neigh", "add", "198.18.2.5", "lladdr", macStr(macVPr), "dev", "rv0", "nud", "permanent"},
		[]string{"neigh", "add", "2001:2:0:2::1", "lladdr", macStr(macVCli), "dev", "rv0", "nud", "permanent"},
		[]string{"neigh", "add", "2001:2:0:2::5", "lladdr", macStr(macVPr), "dev", "rv0", "nud", "permanent"},
		[]string{"neigh", "add", "198.18.1.1", "lladdr", macStr(macPeer), "dev", "rp0", "nud", "permanent"},
		[]string{"neigh", "add", "2001:2:0:1::1", "lladdr", macStr(macPeer), "dev", "rp0", "nud", "permanent"},
		[]string{"neigh", "add", "2001:2::3", "lladdr", macStr(macCli3), "dev", "rc0", "nud", "permanent"},
		[]string{"neigh", "add", "198.18.1.3", "lladdr", macStr(macPeer3), "dev", "rp0", "nud", "permanent"},
		[]string{"neigh", "add", "2001:2:0:1::3", "lladdr", macStr(macPeer3), "dev", "rp0", "nud", "permanent"},
		[]string{"neigh", "add", "198.18.3.1", "lladdr", macStr(macX), "dev", "rx0", "nud", "permanent"},
	)
	for _, s := range steps {
		if _, err := ns.IP(s...); err != nil {
			t.Fatal(err)
		}
	}
	// The namespace keeps the sysctls a host comes with: IP forwarding
	// is off, and the program must forward all the same (its egress
	// comes from the control plane's resolver, not bpf_fib_lookup).
	e := &progEnv{ns: ns}
	for _, p := range []struct {
		name string
		dst  *int
	}{{"rc0", &e.rc0}, {"rv0", &e.rc0v}, {"rp0", &e.rp0}, {"rx0", &e.rx0}} {
		if *p.dst, err = ns.Ifindex(p.name); err != nil {
			t.Fatal(err)
		}
	}
	opts := Options{MaxChannels: maxChannels, DisablePin: !pin, NetNS: "/run/netns/" + ns.Name, Prefilter: true}
	if pin {
		opts.PinDir = testPinDir(t)
	}
	x, err := Load(opts)
	if err != nil {
		t.Fatalf("%+v", err)
	}
	t.Cleanup(func() { x.Unpin(); x.Close() })
	e.x = x
	// The devmap resolves ifindexes in the caller's namespace.
	if err := ns.Do(func() error { return x.SetRedirectIfaces([]int{e.rc0, e.rp0}) }); err != nil {
		t.Fatal(err)
	}
	if err := x.SetVLANDevice(e.rc0v, e.rc0, 100); err != nil {
		t.Fatal(err)
	}
	return e
}

// run runs prog on frame as if it arrived on ingress, inside the namespace.
func (e *progEnv) run(prog *ebpf.Program, frame []byte, ingress int) (uint32, []byte, error) {
	var ret uint32
	out := make([]byte, len(frame)+256)
	err := e.ns.Do(func() error {
		opts := ebpf.RunOptions{
			Data:    frame,
			DataOut: out,
			Context: xdpMd{DataEnd: uint32(len(frame)), IngressIfindex: uint32(ingress)},
			Repeat:  1,
		}
		var err error
		ret, err = prog.Run(&opts)
		out = opts.DataOut
		return err
	})
	return ret, out, err
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func hour() time.Time { return time.Now().Add(time.Hour) }

func fmtInt(i int) string { return fmt.Sprint(i) }

func contains(s, sub string) bool { return strings.Contains(s, sub) }

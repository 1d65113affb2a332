package loader

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/hybridrelay/hybridrelay/internal/kchan"
)

// TestChannelUsageCounts forwards through BPF_PROG_RUN and reads the
// per-channel and global counters back.
func TestChannelUsageCounts(t *testing.T) {
	e := newProgEnv(t, 16)
	installGolden(t, e.x)
	for i := 0; i < 3; i++ {
		if ret, _, err := e.run(e.x.Program(), c2pIn(chV4, seq(100), nil, nil), e.rc0); err != nil || ret != xdpRedirect {
			t.Fatalf("c2p: %d %v", ret, err)
		}
	}
	if ret, _, err := e.run(e.x.Program(), p2cIn(chV4, seq(33), nil), e.rp0); err != nil || ret != xdpRedirect {
		t.Fatalf("p2c: %d %v", ret, err)
	}
	got, err := e.x.ChannelCounters(chV4)
	if err != nil {
		t.Fatal(err)
	}
	want := kchan.Usage{ToPeerPackets: 3, ToPeerBytes: 300, ToClientPackets: 1, ToClientBytes: 33}
	if got != want {
		t.Fatalf("channel counters %+v, want %+v", got, want)
	}
	if other, _ := e.x.ChannelCounters(chV6); other != (kchan.Usage{}) {
		t.Fatalf("another channel counted %+v", other)
	}
	c, err := e.x.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c.Get(FwdToPeerPackets) != 3 || c.Get(FwdToPeerBytes) != 300 || c.Get(FwdToClientPackets) != 1 || c.Get(FwdToClientBytes) != 33 {
		t.Fatalf("global counters %v", c.Map())
	}
	var sum uint64
	for _, cpu := range c.PerCPU {
		sum += cpu[FwdToPeerPackets]
	}
	if sum != 3 {
		t.Fatalf("per-CPU detail sums to %d", sum)
	}
	// A refresh rewrites the entries but not the usage.
	ch := chV4
	ch.Expires = hour().Add(time.Hour)
	if err := e.x.UpdateExpiry(ch); err != nil {
		t.Fatal(err)
	}
	if got2, _ := e.x.ChannelCounters(chV4); got2 != want {
		t.Fatalf("after refresh %+v", got2)
	}
	// Re-installing keeps the slot and the counters.
	if err := e.x.PutChannel(ch); err != nil {
		t.Fatal(err)
	}
	if got2, _ := e.x.ChannelCounters(chV4); got2 != want {
		t.Fatalf("after re-install %+v", got2)
	}
	// A new channel in a freed slot starts from zero.
	if err := e.x.DeleteChannel(chV4); err != nil {
		t.Fatal(err)
	}
	fresh := chV4
	fresh.Number = 0x4ABC
	fresh.Expires = hour()
	if err := e.x.PutChannel(fresh); err != nil {
		t.Fatal(err)
	}
	if got3, _ := e.x.ChannelCounters(fresh); got3 != (kchan.Usage{}) {
		t.Fatalf("new channel inherited %+v", got3)
	}
}

// TestRestartReadopts is the restart sequence of a daemon: load, attach,
// install; Close without Unpin (program keeps running); load again from
// the same pins: entries, counters and the link are re-adopted, the link's
// program is replaced in place, Reconcile drops what was not re-installed,
// and Unpin finally detaches and removes everything.
func TestRestartReadopts(t *testing.T) {
	e := newProgEnv(t, 16)
	dir := e.x.PinDir()
	installGolden(t, e.x)
	if ret, _, err := e.run(e.x.Program(), c2pIn(chV4, seq(10), nil, nil), e.rc0); err != nil || ret != xdpRedirect {
		t.Fatalf("c2p: %d %v", ret, err)
	}
	if err := e.ns.Do(func() error { return e.x.Attach([]int{e.rc0, e.rp0}, ModeNative) }); err != nil {
		t.Fatal(err)
	}
	linkInfo := func() (progID uint32) {
		t.Helper()
		l, err := link.LoadPinnedLink(filepath.Join(dir, "link_"+itoa(e.rc0)), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		return uint32(info.Program)
	}
	firstProg := linkInfo()
	n := e.x.Len()
	if err := e.x.Close(); err != nil {
		t.Fatal(err)
	}
	// The attachment survives the process's handles.
	if linkInfo() != firstProg {
		t.Fatal("link lost its program after Close")
	}

	x2, err := Load(Options{MaxChannels: 16, PinDir: dir, NetNS: "/run/netns/" + e.ns.Name})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	e.x = x2
	t.Cleanup(func() { x2.Unpin(); x2.Close() })
	if x2.Len() != n {
		t.Fatalf("re-adopted %d channels, want %d", x2.Len(), n)
	}
	if st, err := x2.ChannelCounters(chV4); err != nil || st.ToPeerPackets != 1 {
		t.Fatalf("re-adopted counters %+v %v", st, err)
	}
	// The restored control plane re-installs two channels.
	for _, c := range []Channel{chV4, chV6} {
		c.Expires = hour()
		if err := x2.PutChannel(c); err != nil {
			t.Fatal(err)
		}
	}
	if st, _ := x2.ChannelCounters(chV4); st.ToPeerPackets != 1 {
		t.Fatalf("re-install reset the counters: %+v", st)
	}
	if err := e.ns.Do(func() error { return x2.Attach([]int{e.rc0, e.rp0}, ModeNative) }); err != nil {
		t.Fatal(err)
	}
	if second := linkInfo(); second == firstProg {
		t.Fatal("pinned link still runs the old program")
	}
	removed, err := x2.Reconcile()
	if err != nil {
		t.Fatal(err)
	}
	if removed != n-2 || x2.Len() != 2 {
		t.Fatalf("reconcile removed %d, %d left; want %d and 2", removed, x2.Len(), n-2)
	}
	count := 0
	x2.IterateChannels(func(ChannelEntry) bool { count++; return true })
	if count != 2 {
		t.Fatalf("%d entries in the kernel map after reconcile", count)
	}
	// The still-installed channel forwards with the new program.
	if ret, _, err := e.run(x2.Program(), c2pIn(chV4, seq(10), nil, nil), e.rc0); err != nil || ret != xdpRedirect {
		t.Fatalf("c2p after restart: %d %v", ret, err)
	}
	// Shutdown: unpin detaches.
	if err := x2.Unpin(); err != nil {
		t.Fatal(err)
	}
	if err := x2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pin directory left behind: %v", err)
	}
	out, err := e.ns.IP("link", "show", "rc0")
	if err != nil {
		t.Fatal(err)
	}
	if contains(out, "xdp") {
		t.Fatalf("program still attached after Unpin+Close: %s", out)
	}
}

// TestIncompatiblePinFails: a size change cannot silently re-adopt.
func TestIncompatiblePinFails(t *testing.T) {
	e := newProgEnv(t, 16)
	if _, err := Load(Options{MaxChannels: 32, PinDir: e.x.PinDir()}); err == nil {
		t.Fatal("loading with another map size re-adopted incompatible maps")
	}
}

func itoa(i int) string {
	return fmtInt(i)
}

// TestVLANDevicesStayOutOfDevmap: the program redirects untagged frames
// only, so a VLAN device must never be a redirect target, and vice versa.
func TestVLANDevicesStayOutOfDevmap(t *testing.T) {
	e := newProgEnv(t, 16)
	err := e.ns.Do(func() error { return e.x.SetRedirectIfaces([]int{e.rc0, e.rc0v}) })
	if err == nil {
		t.Fatal("a VLAN device was accepted as redirect interface")
	}
	if err := e.x.SetVLANDevice(e.rp0, e.rc0, 7); err == nil {
		t.Fatal("a redirect interface was accepted as VLAN device")
	}
	if err := e.x.SetVLANDevice(e.rc0v, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := e.ns.Do(func() error { return e.x.SetRedirectIfaces([]int{e.rc0, e.rc0v}) }); err != nil {
		t.Fatalf("after removing the VLAN entry: %v", err)
	}
}

// TestUnpinLeavesForeignPins: Unpin removes this program's pins only, so a
// pin directory shared with something else (or the bpffs root) survives.
func TestUnpinLeavesForeignPins(t *testing.T) {
	e := newProgEnv(t, 16)
	dir := e.x.PinDir()
	foreign := filepath.Join(dir, "someone_elses_map")
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Pin(foreign); err != nil {
		t.Fatal(err)
	}
	if err := e.x.Unpin(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(foreign); err != nil {
		t.Fatalf("foreign pin removed: %v", err)
	}
	for _, n := range []string{"c2p_channels", "counters", "tx_ports"} {
		if _, err := os.Stat(filepath.Join(dir, n)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s still pinned: %v", n, err)
		}
	}
	os.Remove(foreign)
}

// TestAttachModes: native where the driver has XDP (veth), an error for
// native without it (bridge), and auto falling back to generic with a
// warning.
func TestAttachModes(t *testing.T) {
	e := newProgEnv(t, 16)
	if _, err := e.ns.IP("link", "add", "br0", "type", "bridge"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ns.IP("link", "set", "br0", "up"); err != nil {
		t.Fatal(err)
	}
	var br0 int
	if err := e.ns.Do(func() error {
		ifc, err := net.InterfaceByName("br0")
		if err == nil {
			br0 = ifc.Index
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var logBuf bytes.Buffer
	x, err := Load(Options{MaxChannels: 16, DisablePin: true, Logger: slog.New(slog.NewTextHandler(&logBuf, nil))})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	defer x.Close()
	show := func(dev string) string {
		out, err := e.ns.IP("-d", "link", "show", dev)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if err := e.ns.Do(func() error { return x.Attach([]int{br0}, ModeNative) }); err == nil {
		t.Fatal("native attach on a bridge succeeded")
	}
	if err := e.ns.Do(func() error { return x.Attach([]int{br0}, ModeAuto) }); err != nil {
		t.Fatalf("auto attach on a bridge: %v", err)
	}
	if out := show("br0"); !contains(out, "xdpgeneric") {
		t.Fatalf("bridge not in generic mode: %s", out)
	}
	if !contains(logBuf.String(), "generic mode") {
		t.Fatalf("no warning about the generic fallback: %q", logBuf.String())
	}
	if err := e.ns.Do(func() error { return x.Attach([]int{e.rx0}, ModeGeneric) }); err != nil {
		t.Fatal(err)
	}
	if out := show("rx0"); !contains(out, "xdpgeneric") {
		t.Fatalf("rx0 not in generic mode: %s", out)
	}
	if err := e.ns.Do(func() error { return x.Attach([]int{e.rc0}, ModeAuto) }); err != nil {
		t.Fatal(err)
	}
	if out := show("rc0"); contains(out, "xdpgeneric") || !contains(out, "prog/xdp") {
		t.Fatalf("veth not in native mode: %s", out)
	}
	for _, idx := range []int{br0, e.rx0, e.rc0} {
		if err := x.Detach(idx); err != nil {
			t.Fatal(err)
		}
	}
	for _, dev := range []string{"br0", "rx0", "rc0"} {
		if out := show(dev); contains(out, "prog/xdp") {
			t.Fatalf("%s still has a program after Detach: %s", dev, out)
		}
	}
	if _, err := ParseMode("turbo"); err == nil {
		t.Fatal("ParseMode accepted an unknown mode")
	}
}

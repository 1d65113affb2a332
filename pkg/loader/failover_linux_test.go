package loader

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	ebpflink "github.com/cilium/ebpf/link"
	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/internal/privtest"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Failover tests: real ChannelData through real veths, with the relay
// namespace at the sysctls a host comes with (IP forwarding off), while
// the relay's way to the peer changes under it (docs/design.md "Egress",
// "Following changes"): the kernel path must follow within 1 s, to the new
// next hop or by passing the packet to the stack, and never keep sending
// to a dead MAC or into a dead link for longer.
//
//	client ns            relay ns                               peer ns
//	eth0 .0.1 ───── cli0 .0.2      la0 .1.2 ══ link A ══ pa0 .1.1   lo 198.18.8.1/32
//	                 lo 198.18.9.1 lb0 .2.2 ══ link B ══ pb0 .2.1      2001:2:0:8::1/128
//	                 (relay addr)
//
// (198.18.N.0/24 and 2001:2:0:N::/64 per link.) The relay namespace routes
// the peer's /32 (/128) via pa0's or pb0's address. There is no userspace
// relay here at all: a packet the program passes reaches the relay's own
// stack, which has nothing listening and forwards nothing, so it is simply
// not delivered; the program's pass counters must then say why.

const (
	foRate      = time.Millisecond // one ChannelData per tick
	foBound     = time.Second      // the requirement
	foChannel   = 0x4000
	foPeerPort  = 40000
	foRelayPort = 49152
)

type foAddrs struct {
	client, listener, relay, peer netip.Addr
	relayA, gwA, relayB, gwB      netip.Addr // relay and peer ends of links A and B
	bits, host                    string     // on-link and host prefix lengths
}

func foAddrsFor(v6 bool) foAddrs {
	m := netip.MustParseAddr
	if v6 {
		return foAddrs{
			client: m("2001:2::1"), listener: m("2001:2::2"), relay: m("2001:2:0:9::1"), peer: m("2001:2:0:8::1"),
			relayA: m("2001:2:0:1::2"), gwA: m("2001:2:0:1::1"), relayB: m("2001:2:0:2::2"), gwB: m("2001:2:0:2::1"),
			bits: "64", host: "128",
		}
	}
	return foAddrs{
		client: m("198.18.0.1"), listener: m("198.18.0.2"), relay: m("198.18.9.1"), peer: m("198.18.8.1"),
		relayA: m("198.18.1.2"), gwA: m("198.18.1.1"), relayB: m("198.18.2.2"), gwB: m("198.18.2.1"),
		bits: "24", host: "32",
	}
}

// foTopo is one failover topology with the relay program loaded, attached
// and one channel installed.
type foTopo struct {
	t                   *testing.T
	v6                  bool
	a                   foAddrs
	client, relay, peer *netns.NS
	x                   *XDP
	ch                  Channel
	cli0, la0, lb0      int // relay namespace ifindexes
	pa0, pb0            int // peer namespace ifindexes
	pass                map[string]ebpflink.Link
	base                time.Time
}

// family returns "-4" or "-6" for ip(8).
func (f *foTopo) family() string {
	if f.v6 {
		return "-6"
	}
	return "-4"
}

func (f *foTopo) must(ns *netns.NS, args ...string) string {
	f.t.Helper()
	out, err := ns.IP(args...)
	if err != nil {
		f.t.Fatal(err)
	}
	return out
}

func (f *foTopo) sh(ns *netns.NS, bin string, args ...string) string {
	f.t.Helper()
	out, err := ns.Sh(bin, args...)
	if err != nil {
		f.t.Fatal(err)
	}
	return out
}

// sysctl writes /proc/sys/KEY (dots as slashes) inside ns.
func (f *foTopo) sysctl(ns *netns.NS, key, val string) {
	f.t.Helper()
	p := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	if err := ns.Do(func() error { return os.WriteFile(p, []byte(val+"\n"), 0o644) }); err != nil {
		f.t.Fatalf("sysctl %s=%s in %s: %v", key, val, ns.Name, err)
	}
}

func (f *foTopo) readSysctl(ns *netns.NS, key string) string {
	f.t.Helper()
	p := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	var b []byte
	if err := ns.Do(func() (err error) { b, err = os.ReadFile(p); return err }); err != nil {
		f.t.Fatalf("read sysctl %s in %s: %v", key, ns.Name, err)
	}
	return strings.TrimSpace(string(b))
}

// newFoTopo builds the topology; relaySysctls are set in the relay
// namespace before anything is resolved (keys with dots, as sysctl(8)),
// routes are its routes to the peer (ip(8) arguments after "route add",
// family implied).
func newFoTopo(t *testing.T, v6 bool, relaySysctls map[string]string, routes ...[]string) *foTopo {
	privtest.Need(t, "ip", "ethtool", "ping")
	netns.RemoveStale()
	f := &foTopo{t: t, v6: v6, a: foAddrsFor(v6), pass: map[string]ebpflink.Link{}}
	for _, p := range []struct {
		ns   **netns.NS
		role string
	}{{&f.client, "fc"}, {&f.relay, "fr"}, {&f.peer, "fp"}} {
		ns, err := netns.New(p.role)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(ns.Delete)
		*p.ns = ns
	}
	// Each veth pair is made in its namespaces directly: no temporary
	// names in the root namespace.
	f.must(f.client, "link", "add", "eth0", "type", "veth", "peer", "name", "cli0", "netns", f.relay.Name)
	f.must(f.relay, "link", "add", "la0", "type", "veth", "peer", "name", "pa0", "netns", f.peer.Name)
	f.must(f.relay, "link", "add", "lb0", "type", "veth", "peer", "name", "pb0", "netns", f.peer.Name)
	ends := []struct {
		ns *netns.NS
		If string
	}{{f.client, "eth0"}, {f.relay, "cli0"}, {f.relay, "la0"}, {f.relay, "lb0"}, {f.peer, "pa0"}, {f.peer, "pb0"}}
	for _, e := range ends {
		f.must(e.ns, "link", "set", e.If, "up")
		// With checksum offload on, XDP sees partial checksums and
		// rewritten packets are dropped.
		f.sh(e.ns, "ethtool", "-K", e.If, "tx", "off", "rx", "off")
	}
	// The peer accepts the relay's source address on either link
	// (strict reverse-path filtering would drop link B's packets).
	for _, k := range []string{"all", "default", "pa0", "pb0"} {
		f.sysctl(f.peer, "net.ipv4.conf."+k+".rp_filter", "0")
	}
	a4, a6 := foAddrsFor(false), foAddrsFor(true)
	for _, s := range []struct {
		ns       *netns.NS
		If       string
		v4, v6   netip.Addr
		bits4, b string
	}{
		{f.client, "eth0", a4.client, a6.client, "24", "64"},
		{f.relay, "cli0", a4.listener, a6.listener, "24", "64"},
		{f.relay, "la0", a4.relayA, a6.relayA, "24", "64"},
		{f.relay, "lb0", a4.relayB, a6.relayB, "24", "64"},
		{f.peer, "pa0", a4.gwA, a6.gwA, "24", "64"},
		{f.peer, "pb0", a4.gwB, a6.gwB, "24", "64"},
		{f.relay, "lo", a4.relay, a6.relay, "32", "128"},
		{f.peer, "lo", a4.peer, a6.peer, "32", "128"},
	} {
		f.must(s.ns, "addr", "add", s.v4.String()+"/"+s.bits4, "dev", s.If)
		f.must(s.ns, "addr", "add", s.v6.String()+"/"+s.b, "dev", s.If, "nodad")
	}
	for k, v := range relaySysctls {
		f.sysctl(f.relay, k, v)
	}
	for _, r := range routes {
		f.must(f.relay, append([]string{f.family(), "route", "add"}, r...)...)
	}
	// IPv6 neighbour solicitations go out from a link-local address
	// (ndisc_send_ns sends nothing while the device's is tentative), so
	// until duplicate address detection of the links' own link-local
	// addresses is over (about 1-2 s after link up), a next hop on them
	// cannot be resolved and the kernel retries only after retrans_time
	// (1 s). A server's links are long past that; wait for it here, or a
	// failover to a new next hop measures DAD, not the resolver.
	for _, ns := range []*netns.NS{f.client, f.relay, f.peer} {
		deadline := time.Now().Add(5 * time.Second)
		for {
			out := f.must(ns, "-6", "addr", "show", "tentative")
			if strings.TrimSpace(out) == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("IPv6 addresses still tentative in %s after 5 s: %s", ns.Name, out)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// The client resolves the listener now, so the first packets are not
	// lost to ARP/ND (an address on the link: works with forwarding off).
	f.sh(f.client, "ping", "-c", "1", "-W", "2", f.a.listener.String())
	var err error
	for _, p := range []struct {
		ns  *netns.NS
		If  string
		dst *int
	}{{f.relay, "cli0", &f.cli0}, {f.relay, "la0", &f.la0}, {f.relay, "lb0", &f.lb0}, {f.peer, "pa0", &f.pa0}, {f.peer, "pb0", &f.pb0}} {
		if *p.dst, err = p.ns.Ifindex(p.If); err != nil {
			t.Fatal(err)
		}
	}
	// Forwarding stays off in the relay namespace: the point of these
	// tests. Check it, so nothing upstream turned it on by inheritance.
	for _, k := range []string{"net.ipv4.conf.all.forwarding", "net.ipv6.conf.all.forwarding"} {
		if v := f.readSysctl(f.relay, k); v != "0" {
			t.Fatalf("%s=%s in the relay namespace; these tests need a host as it comes", k, v)
		}
	}

	x, err := Load(Options{DisablePin: true, NetNS: "/run/netns/" + f.relay.Name})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	t.Cleanup(func() { x.Close() })
	f.x = x
	if err := f.relay.Do(func() error {
		if err := x.Attach([]int{f.cli0, f.la0, f.lb0}, ModeNative); err != nil {
			return err
		}
		return x.SetRedirectIfaces([]int{f.cli0, f.la0, f.lb0})
	}); err != nil {
		t.Fatal(err)
	}
	// XDP redirect into a veth delivers nothing unless the far end runs
	// an XDP program.
	for _, p := range []struct {
		If  string
		idx int
	}{{"pa0", f.pa0}, {"pb0", f.pb0}} {
		if err := f.peer.Do(func() error {
			l, err := x.AttachPass(p.idx, ModeNative)
			if err != nil {
				return err
			}
			f.pass[p.If] = l.(ebpflink.Link)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, l := range f.pass {
			l.Close()
		}
	})
	f.ch = Channel{
		Client:   netip.AddrPortFrom(f.a.client, 50000),
		Listener: netip.AddrPortFrom(f.a.listener, 3478),
		Relay:    netip.AddrPortFrom(f.a.relay, foRelayPort),
		Peer:     netip.AddrPortFrom(f.a.peer, foPeerPort),
		Number:   foChannel,
		Expires:  time.Now().Add(time.Hour),
	}
	if err := x.PutChannel(f.ch); err != nil {
		t.Fatal(err)
	}
	// The resolver asked the kernel to resolve the gateway; the answer
	// arrives as a neighbour event.
	f.waitEgress(3*time.Second, "usable", func(e EgressEntry) bool { return e.Usable() })
	f.base = time.Now()
	return f
}

// egress returns the slot of the channel's peer direction.
func (f *foTopo) egress() (EgressEntry, bool) {
	for _, e := range f.x.Egress() {
		if e.Dst == f.a.peer {
			return e, true
		}
	}
	return EgressEntry{}, false
}

func (f *foTopo) waitEgress(d time.Duration, what string, ok func(EgressEntry) bool) EgressEntry {
	f.t.Helper()
	deadline := time.Now().Add(d)
	for {
		e, found := f.egress()
		if found && ok(e) {
			return e
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("egress slot for %s not %s within %v: %+v (found %v)", f.a.peer, what, d, e, found)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (f *foTopo) now() time.Duration { return time.Since(f.base) }

// foArrival is one datagram the peer received.
type foArrival struct {
	seq        uint64
	sent, recv time.Duration
	link       byte // 'A' (pa0) or 'B' (pb0)
}

type foSample struct {
	at time.Duration
	c  [NumCounters]uint64
}

type foEvent struct {
	name   string
	after  time.Duration // since the previous event (the first: since traffic is steady)
	fn     func() error
	t0, t1 time.Duration // filled in: before and after fn ran
}

type foRun struct {
	f       *foTopo
	start   time.Duration // traffic start
	ev      []*foEvent
	stop    time.Duration // sending stopped
	sent    []time.Duration
	arr     []foArrival // by recv
	samples []foSample
}

// bindToDevice is a ListenConfig whose sockets receive only what arrives
// on device If (SO_BINDTODEVICE): per-link evidence at the peer.
func bindToDevice(If string) *net.ListenConfig {
	return &net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr != nil {
				return
			}
			serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, If)
		})
		return errors.Join(err, serr)
	}}
}

// run sends ChannelData from the client at one per foRate, lets it settle
// for warm, runs the events (each after its delay), keeps sending for tail
// after the last one, and returns what the peer received and the
// program's counters over time. Total time: warm + delays + tail + 0.2 s.
func (f *foTopo) run(warm, tail time.Duration, events ...*foEvent) *foRun {
	t := f.t
	t.Helper()
	r := &foRun{f: f, ev: events}
	udp := "udp4"
	if f.v6 {
		udp = "udp6"
	}
	var socks []*net.UDPConn
	defer func() {
		for _, s := range socks {
			s.Close()
		}
	}()
	links := map[*net.UDPConn]byte{}
	for _, l := range []struct {
		If   string
		name byte
	}{{"pa0", 'A'}, {"pb0", 'B'}} {
		var pc net.PacketConn
		err := f.peer.Do(func() (err error) {
			pc, err = bindToDevice(l.If).ListenPacket(context.Background(), udp, netip.AddrPortFrom(f.a.peer, foPeerPort).String())
			return err
		})
		if err != nil {
			t.Fatalf("peer socket on %s: %v", l.If, err)
		}
		s := pc.(*net.UDPConn)
		socks = append(socks, s)
		links[s] = l.name
	}
	var cli *net.UDPConn
	if err := f.client.Do(func() (err error) {
		cli, err = net.ListenUDP(udp, net.UDPAddrFromAddrPort(f.ch.Client))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	socks = append(socks, cli)

	var mu sync.Mutex
	var wg sync.WaitGroup
	for s, name := range links {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 2048)
			for {
				n, err := s.Read(buf)
				if err != nil {
					return // closed
				}
				at := f.now()
				if n != 16 {
					continue
				}
				a := foArrival{seq: binary.BigEndian.Uint64(buf), sent: time.Duration(binary.BigEndian.Uint64(buf[8:])), recv: at, link: name}
				mu.Lock()
				r.arr = append(r.arr, a)
				mu.Unlock()
			}
		}()
	}
	// The baseline is taken before anything is sent.
	r.samples = append(r.samples, foSample{at: f.now(), c: mustCounters(t, f.x).Total})
	stopPoll := make(chan struct{})
	pollDone := make(chan struct{})
	go func() {
		defer close(pollDone)
		tk := time.NewTicker(5 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stopPoll:
				return
			case <-tk.C:
			}
			if c, err := f.x.Counters(); err == nil {
				mu.Lock()
				r.samples = append(r.samples, foSample{at: f.now(), c: c.Total})
				mu.Unlock()
			}
		}
	}()
	stopSend := make(chan struct{})
	sendDone := make(chan struct{})
	dst := net.UDPAddrFromAddrPort(f.ch.Listener)
	r.start = f.now()
	go func() {
		defer close(sendDone)
		tk := time.NewTicker(foRate)
		defer tk.Stop()
		var data [16]byte
		for seq := uint64(0); ; seq++ {
			at := f.now()
			binary.BigEndian.PutUint64(data[:], seq)
			binary.BigEndian.PutUint64(data[8:], uint64(at))
			// Unconnected: the ICMP errors of passed packets (nothing
			// listens on the relay) do not fail later writes.
			_, _ = cli.WriteToUDP(channelData(foChannel, data[:], nil), dst)
			mu.Lock()
			r.sent = append(r.sent, at)
			mu.Unlock()
			select {
			case <-stopSend:
				return
			case <-tk.C:
			}
		}
	}()
	fail := func(format string, args ...any) {
		close(stopSend)
		<-sendDone
		close(stopPoll)
		<-pollDone
		t.Fatalf(format, args...)
	}
	time.Sleep(warm)
	mu.Lock()
	got, sent := len(r.arr), len(r.sent)
	mu.Unlock()
	// A loaded machine sends fewer than one per foRate; what matters is
	// that what was sent arrives.
	if sent < 50 || float64(got) < 0.9*float64(sent) {
		c, _ := f.x.Counters()
		e, _ := f.egress()
		fail("before any event the peer received %d of %d datagrams sent in %v: egress %+v, counters %v", got, sent, warm, e, nonZero(c))
	}
	for _, ev := range events {
		time.Sleep(ev.after)
		ev.t0 = f.now()
		if err := ev.fn(); err != nil {
			fail("%s: %v", ev.name, err)
		}
		ev.t1 = f.now()
	}
	time.Sleep(tail)
	close(stopSend)
	<-sendDone
	r.stop = f.now()
	time.Sleep(100 * time.Millisecond) // in flight
	close(stopPoll)
	<-pollDone
	r.samples = append(r.samples, foSample{at: f.now(), c: mustCounters(t, f.x).Total})
	for s := range links {
		s.Close()
	}
	wg.Wait()
	sort.Slice(r.arr, func(i, j int) bool { return r.arr[i].recv < r.arr[j].recv })
	return r
}

func nonZero(c Counters) map[string]uint64 {
	m := map[string]uint64{}
	for k, v := range c.Map() {
		if v != 0 {
			m[k] = v
		}
	}
	return m
}

// counterAt is the counter's value in the last sample taken at or before
// at (the first sample if none).
func (r *foRun) counterAt(c Counter, at time.Duration) uint64 {
	v := r.samples[0].c[c]
	for _, s := range r.samples {
		if s.at > at {
			break
		}
		v = s.c[c]
	}
	return v
}

// lastRise is when counter c was last seen rising, and firstRiseAfter the
// first sample after from at which it had risen (-1: never).
func (r *foRun) lastRise(c Counter) time.Duration {
	last := time.Duration(-1)
	for i := 1; i < len(r.samples); i++ {
		if r.samples[i].c[c] > r.samples[i-1].c[c] {
			last = r.samples[i].at
		}
	}
	return last
}

func (r *foRun) firstRiseAfter(c Counter, from time.Duration) time.Duration {
	base := r.counterAt(c, from)
	for _, s := range r.samples {
		if s.at > from && s.c[c] > base {
			return s.at
		}
	}
	return -1
}

// blackout is the longest time the peer received nothing, from the last
// arrival before at (on any link) to the end of the run.
func (r *foRun) blackout(at time.Duration) (gap, resumed time.Duration) {
	prev := time.Duration(-1)
	for _, a := range r.arr {
		if a.recv <= at {
			prev = a.recv
			continue
		}
		if prev >= 0 && a.recv-prev > gap {
			gap, resumed = a.recv-prev, a.recv
		}
		prev = a.recv
	}
	if prev >= 0 && r.stop-prev > gap {
		gap, resumed = r.stop-prev, -1 // never resumed
	}
	return gap, resumed
}

// delivered counts the datagrams sent in [from, to) and how many of them
// arrived, per link.
func (r *foRun) delivered(from, to time.Duration) (sent int, got map[byte]int) {
	got = map[byte]int{}
	for _, s := range r.sent {
		if s >= from && s < to {
			sent++
		}
	}
	for _, a := range r.arr {
		if a.sent >= from && a.sent < to {
			got[a.link]++
		}
	}
	return sent, got
}

// firstOn / lastOn are the first and last arrival on link l received
// after from (-1: none).
func (r *foRun) firstOn(l byte, from time.Duration) time.Duration {
	for _, a := range r.arr {
		if a.link == l && a.recv > from {
			return a.recv
		}
	}
	return -1
}

func (r *foRun) lastOn(l byte) time.Duration {
	last := time.Duration(-1)
	for _, a := range r.arr {
		if a.link == l {
			last = a.recv
		}
	}
	return last
}

// requireSteady fails unless every datagram sent in [from, r.stop-50ms)
// arrived on link want (a few lost to scheduling noise are tolerated, none
// on the other link), and the program forwarded at least as many as the
// peer received in the run (kernel path: the relay namespace forwards
// nothing by itself).
func (r *foRun) requireSteady(t *testing.T, from time.Duration, want byte) {
	t.Helper()
	to := r.stop - 50*time.Millisecond
	sent, got := r.delivered(from, to)
	other := byte('A')
	if want == 'A' {
		other = 'B'
	}
	if sent < 100 {
		t.Fatalf("only %d datagrams sent in [%v, %v): the run is too short to judge", sent, from, to)
	}
	if got[other] != 0 || float64(got[want]) < 0.98*float64(sent) {
		t.Fatalf("of %d datagrams sent in [%v, %v) %d arrived via link %c and %d via link %c; want all via %c",
			sent, from, to, got[want], want, got[other], other, want)
	}
	fwd := r.samples[len(r.samples)-1].c[FwdToPeerPackets] - r.samples[0].c[FwdToPeerPackets]
	if fwd < uint64(len(r.arr)) {
		t.Fatalf("program forwarded %d packets but the peer received %d: something other than the kernel path delivered", fwd, len(r.arr))
	}
}

func (r *foRun) ms(d time.Duration) string {
	if d < 0 {
		return "never"
	}
	return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
}

func foFamilies(t *testing.T, fn func(t *testing.T, v6 bool)) {
	for _, fam := range []struct {
		name string
		v6   bool
	}{{"v4", false}, {"v6", true}} {
		t.Run(fam.name, func(t *testing.T) { fn(t, fam.v6) })
	}
}

// TestFailoverGatewayMACChange: the gateway on link A changes its MAC and
// announces it itself (arp_notify / ndisc_notify: when a device's address
// changes the kernel sends a gratuitous ARP request / an unsolicited NA
// with the override flag). The relay's neighbour entry takes the new MAC,
// the neighbour event rewrites the egress slot, and the program forwards
// to the new MAC.
//
// Three changes, 300 ms apart:
//
//  0. silent (no announcement): the control. The program keeps sending to
//     the old MAC and the peer's stack drops those frames (PACKET_OTHERHOST),
//     so arrivals stop: the recovery measured next is real, not frames to
//     a stale MAC that happened to be delivered.
//  1. announced: arrivals resume within 1 s (in practice: within the time
//     the kernel takes to send the announcement and the resolver one
//     netlink round trip).
//  2. announced again, 300 ms later: well inside the relay's neighbour
//     locktime (net.ipv4.neigh.IF.locktime, 1 s by default), during which
//     ARP keeps the first of back-to-back answers. A gratuitous ARP is not
//     subject to it (arp_process overrides when is_garp), and ND has no
//     locktime (an NA with the override flag replaces the address, RFC
//     4861 §7.2.5): the second change is followed as fast as the first.
func TestFailoverGatewayMACChange(t *testing.T) {
	foFamilies(t, func(t *testing.T, v6 bool) {
		a := foAddrsFor(v6)
		f := newFoTopo(t, v6, nil, []string{a.peer.String() + "/" + a.host, "via", a.gwA.String(), "dev", "la0"})
		t.Logf("relay neighbour locktime on la0: %s (USER_HZ)", f.readSysctl(f.relay, "net.ipv4.neigh.la0.locktime"))
		before, _ := f.egress()
		macs := []string{"02:00:00:00:aa:00", "02:00:00:00:aa:01", "02:00:00:00:aa:02"}
		var evs []*foEvent
		for i, mac := range macs {
			ev := &foEvent{name: fmt.Sprintf("change %d: gateway MAC -> %s", i, mac), after: 300 * time.Millisecond}
			if i == 0 {
				ev.name += " (silent)"
				ev.after = 0
			}
			ev.fn = func() error {
				if i == 1 {
					f.sysctl(f.peer, "net.ipv4.conf.pa0.arp_notify", "1")
					f.sysctl(f.peer, "net.ipv6.conf.pa0.ndisc_notify", "1")
				}
				_, err := f.peer.IP("link", "set", "pa0", "address", mac)
				return err
			}
			evs = append(evs, ev)
		}
		r := f.run(300*time.Millisecond, foBound+time.Second, evs...)
		// The control: nothing sent after the silent change arrived.
		ctl := evs[0]
		sent, got := r.delivered(ctl.t1+20*time.Millisecond, evs[1].t0)
		t.Logf("%s: %d of %d datagrams sent after it arrived (frames to the old MAC are dropped)", ctl.name, got['A']+got['B'], sent)
		// At ~1 kpps the window holds about 300; a loaded machine's
		// generator sends fewer, and 50 still show the drop.
		if sent < 50 || got['A']+got['B'] > sent/20 {
			t.Fatalf("control: %d of %d datagrams sent after a silent MAC change arrived; the peer should drop frames to its old MAC, or the run is too short", got['A']+got['B'], sent)
		}
		for i, ev := range evs[1:] {
			end := r.stop
			if i+2 < len(evs) {
				end = evs[i+2].t0
			}
			o := r.outage(ev.t0, end)
			t.Logf("%s: command took %s; %d of %d datagrams sent after it lost, the last one sent %s after, first arrival %s after",
				ev.name, r.ms(ev.t1-ev.t0), o.lost, o.sent, r.ms(o.lastLost-ev.t0), r.ms(o.firstArrival-ev.t0))
			if o.firstArrival < 0 || o.firstArrival-ev.t0 > foBound || o.lastLost-ev.t0 > foBound {
				t.Errorf("%s: not followed within %v (last lost datagram sent %s after, first arrival %s after)",
					ev.name, foBound, r.ms(o.lastLost-ev.t0), r.ms(o.firstArrival-ev.t0))
			}
		}
		after, ok := f.egress()
		if !ok || after.DstMAC.String() != macs[len(macs)-1] || !after.Usable() {
			t.Errorf("egress slot after the changes: %+v (before: DstMAC %s); want DstMAC %s, usable", after, before.DstMAC, macs[len(macs)-1])
		}
		last := evs[len(evs)-1]
		r.requireSteady(t, last.t0+foBound, 'A')
	})
}

// foOutage is what became of the datagrams sent in a window after an
// event: how many were lost, when the last lost one was sent (the event's
// own time when none was lost), and when the first one arrived.
type foOutage struct {
	sent, lost             int
	lastLost, firstArrival time.Duration
}

func (r *foRun) outage(from, to time.Duration) foOutage {
	o := foOutage{lastLost: from, firstArrival: -1}
	arrived := map[uint64]bool{}
	for _, a := range r.arr {
		arrived[a.seq] = true
		if a.sent >= from && a.sent < to && (o.firstArrival < 0 || a.recv < o.firstArrival) {
			o.firstArrival = a.recv
		}
	}
	for seq, s := range r.sent {
		if s < from || s >= to {
			continue
		}
		o.sent++
		if !arrived[uint64(seq)] {
			o.lost++
			o.lastLost = s
		}
	}
	return o
}

// blackoutUntil is blackout limited to arrivals before end (the next
// event).
func (r *foRun) blackoutUntil(at, end time.Duration) (gap, resumed time.Duration) {
	sub := *r
	sub.arr = nil
	for _, a := range r.arr {
		if a.recv <= end {
			sub.arr = append(sub.arr, a)
		}
	}
	sub.stop = end
	return sub.blackout(at)
}

func mustCounters(t *testing.T, x *XDP) Counters {
	t.Helper()
	c, err := x.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestFailoverRouteChange: the route to the peer moves from link A's
// gateway to link B's (`ip route replace`). The route event re-resolves
// the slot (after the resolver's debounce), B's gateway is resolved on
// demand (NTF_USE, then a neighbour event), and the program redirects into
// link B; link A receives nothing more.
func TestFailoverRouteChange(t *testing.T) {
	foFamilies(t, func(t *testing.T, v6 bool) {
		a := foAddrsFor(v6)
		dst := a.peer.String() + "/" + a.host
		f := newFoTopo(t, v6, nil, []string{dst, "via", a.gwA.String(), "dev", "la0"})
		ev := &foEvent{name: "route via B", fn: func() error {
			_, err := f.relay.IP(f.family(), "route", "replace", dst, "via", a.gwB.String(), "dev", "lb0")
			return err
		}}
		r := f.run(300*time.Millisecond, foBound+time.Second, ev)
		firstB, lastA := r.firstOn('B', ev.t0), r.lastOn('A')
		gap, _ := r.blackout(ev.t0)
		t.Logf("route change: first arrival via B %s after, last via A %s after, longest gap %s",
			r.ms(firstB-ev.t0), r.ms(lastA-ev.t0), r.ms(gap))
		if firstB < 0 || firstB-ev.t0 > foBound {
			t.Errorf("first arrival via link B %s after the route change; want within %v", r.ms(firstB-ev.t0), foBound)
		}
		if lastA-ev.t0 > foBound {
			t.Errorf("link A still received %s after the route change", r.ms(lastA-ev.t0))
		}
		if e, _ := f.egress(); e.Ifindex != f.lb0 || !e.Usable() {
			t.Errorf("egress slot: %+v; want usable on lb0 (%d)", e, f.lb0)
		}
		r.requireSteady(t, ev.t0+foBound, 'B')
	})
}

// TestFailoverLinkDown: the route via link A (metric 10) has a backup via
// link B (metric 20), and link A goes down.
//
//   - relay-side: `ip link set la0 down` on the relay. The kernel removes
//     the routes through a device that goes administratively down (IPv4
//     fib_sync_down_dev, IPv6 rt6_sync_down_dev), so its own choice becomes
//     the backup: the program must follow to link B.
//   - carrier: the peer sets its end (pa0) down. The relay's la0 loses
//     carrier (operstate LOWERLAYERDOWN) but stays up and keeps its routes,
//     flagged linkdown. With ignore_routes_with_linkdown=0 (the default)
//     IPv4 still chooses the dead route; IPv6 does too. Whatever the
//     kernel's own output lookup picks is what the program must do: via
//     B, or, if the kernel still routes into the dead link, pass every
//     packet with pass_link_down rather than redirect into it.
//
// Either way the program stops sending into link A within 1 s.
func TestFailoverLinkDown(t *testing.T) {
	for _, mode := range []struct {
		name string
		down func(f *foTopo) error
	}{
		{"relay-side", func(f *foTopo) error { _, err := f.relay.IP("link", "set", "la0", "down"); return err }},
		{"carrier", func(f *foTopo) error { _, err := f.peer.IP("link", "set", "pa0", "down"); return err }},
	} {
		t.Run(mode.name, func(t *testing.T) {
			foFamilies(t, func(t *testing.T, v6 bool) {
				a := foAddrsFor(v6)
				dst := a.peer.String() + "/" + a.host
				f := newFoTopo(t, v6, nil,
					[]string{dst, "via", a.gwA.String(), "dev", "la0", "metric", "10"},
					[]string{dst, "via", a.gwB.String(), "dev", "lb0", "metric", "20"})
				ev := &foEvent{name: "link A down (" + mode.name + ")", fn: func() error { return mode.down(f) }}
				r := f.run(300*time.Millisecond, foBound+time.Second, ev)
				// What the kernel itself would do now.
				rt := f.must(f.relay, f.family(), "route", "get", a.peer.String(), "from", a.relay.String())
				viaB := strings.Contains(rt, " dev lb0")
				t.Logf("kernel's own route after link A went down: %s", strings.TrimSpace(rt))
				fwdStop := r.lastRise(FwdToPeerPackets)
				lastA := r.lastOn('A')
				t.Logf("%s: last arrival via A %s after, first via B %s after, fwd_to_peer last rose %s after, pass_link_down first rose %s after",
					ev.name, r.ms(lastA-ev.t0), r.ms(r.firstOn('B', ev.t0)-ev.t0), r.ms(fwdStop-ev.t0),
					r.ms(r.firstRiseAfter(PassLinkDown, ev.t0)-ev.t0))
				if lastA-ev.t0 > foBound {
					t.Errorf("link A still received %s after it went down", r.ms(lastA-ev.t0))
				}
				e, _ := f.egress()
				if viaB {
					firstB := r.firstOn('B', ev.t0)
					if firstB < 0 || firstB-ev.t0 > foBound {
						t.Errorf("first arrival via B %s after link A went down; want within %v", r.ms(firstB-ev.t0), foBound)
					}
					if e.Ifindex != f.lb0 || !e.Usable() {
						t.Errorf("egress slot: %+v; want usable on lb0", e)
					}
					r.requireSteady(t, ev.t0+foBound, 'B')
					return
				}
				if !strings.Contains(rt, " dev la0") {
					t.Fatalf("kernel routes %s neither via A nor B: %s", a.peer, rt)
				}
				// The kernel still routes into the dead link: the program
				// must pass, with the link-down reason, from 1 s on.
				if e.Reason != PassLinkDown {
					t.Errorf("egress slot: %+v; want reason %v", e, PassLinkDown)
				}
				if fwdStop-ev.t0 > foBound {
					t.Errorf("program still forwarded into link A %s after it went down", r.ms(fwdStop-ev.t0))
				}
				from := ev.t0 + foBound
				sent, _ := r.delivered(from, r.stop)
				passed := r.counterAt(PassLinkDown, r.stop+100*time.Millisecond) - r.counterAt(PassLinkDown, from)
				if float64(passed) < 0.95*float64(sent) {
					t.Errorf("pass_link_down rose by %d while %d datagrams were sent from 1 s after the link went down", passed, sent)
				}
			})
		})
	}
}

// xdpDropProgram is a two-instruction XDP_DROP program: the far end of a
// veth that swallows everything, a gateway that died silently with its
// carrier still up.
func xdpDropProgram(t *testing.T) *ebpf.Program {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.XDP, AttachType: ebpf.AttachXDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()}, // XDP_DROP
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// TestFailoverGatewayDiesSilently: the gateway stops answering anything
// (its end of link A drops every frame, carrier stays up). Nothing tells
// the relay; the traffic the program forwards never passes the neighbour
// layer, so only the resolver's keepalive (NTF_USE on a STALE next hop)
// makes the kernel probe it: REACHABLE -> STALE (after reachable_time) ->
// DELAY -> PROBE (after delay_first_probe_time) -> FAILED (after
// ucast_solicit probes, retrans_time apart), and the FAILED event makes
// the slot pass with pass_no_neigh. The relay's NUD timers are shortened
// (base_reachable_time 500 ms, delay_first_probe_time 1 s, retrans_time
// 200 ms) to keep the test short; with the defaults (30 s, 5 s, 1 s) the
// same path takes 15-45 s + 1 s + 5 s + 3 s.
func TestFailoverGatewayDiesSilently(t *testing.T) {
	foFamilies(t, func(t *testing.T, v6 bool) {
		a := foAddrsFor(v6)
		fam := "ipv4"
		if v6 {
			fam = "ipv6"
		}
		// Set before the gateway is resolved: a REACHABLE entry keeps
		// the timer it was armed with (reachable_time when it was
		// confirmed), whatever the sysctl says later.
		sysctls := map[string]string{}
		for k, v := range map[string]string{"base_reachable_time_ms": "500", "delay_first_probe_time": "1", "retrans_time_ms": "200"} {
			sysctls["net."+fam+".neigh.la0."+k] = v
		}
		f := newFoTopo(t, v6, sysctls, []string{a.peer.String() + "/" + a.host, "via", a.gwA.String(), "dev", "la0"})
		drop := xdpDropProgram(t)
		ev := &foEvent{name: "gateway dies", fn: func() error { return f.pass["pa0"].Update(drop) }}
		// Worst case with these timers: reachable_time up to 750 ms,
		// keepalive up to 1 s, 1 s delay, 3 x 200 ms probes: 3.4 s.
		const bound = 5 * time.Second
		var failedAt time.Duration = -1
		r := f.run(300*time.Millisecond, 0, ev, &foEvent{name: "wait for FAILED", fn: func() error {
			deadline := time.Now().Add(bound)
			for time.Now().Before(deadline) {
				if e, ok := f.egress(); ok && e.Reason == PassNoNeigh {
					failedAt = f.now()
					time.Sleep(300 * time.Millisecond) // some passed packets
					return nil
				}
				time.Sleep(5 * time.Millisecond)
			}
			return nil
		}})
		dead := ev.t0
		e, _ := f.egress()
		firstPass := r.firstRiseAfter(PassNoNeigh, dead)
		t.Logf("gateway died silently: slot passed (pass_no_neigh) %s after, first pass_no_neigh packet %s after, fwd_to_peer last rose %s after; slot %s",
			r.ms(failedAt-dead), r.ms(firstPass-dead), r.ms(r.lastRise(FwdToPeerPackets)-dead), e.Detail)
		if failedAt < 0 {
			t.Fatalf("egress slot still %+v %v after the gateway died; want pass_no_neigh", e, bound)
		}
		if firstPass < 0 {
			t.Errorf("pass_no_neigh never rose after the slot passed")
		}
		if fs := r.lastRise(FwdToPeerPackets); fs > failedAt+50*time.Millisecond {
			t.Errorf("program still forwarded %s after the slot passed", r.ms(fs-failedAt))
		}
		if r.counterAt(FwdToPeerPackets, dead) == 0 {
			t.Errorf("program forwarded nothing before the gateway died")
		}
	})
}

// TestFailoverRouteChangeUnderChurn: the route change of
// TestFailoverRouteChange while unrelated routes come and go every few
// milliseconds, as on a host whose routing daemon is busy. The resolver
// gathers route events into one refresh; a steady stream of them must not
// postpone that refresh indefinitely.
func TestFailoverRouteChangeUnderChurn(t *testing.T) {
	a := foAddrsFor(false)
	dst := a.peer.String() + "/" + a.host
	f := newFoTopo(t, false, nil, []string{dst, "via", a.gwA.String(), "dev", "la0"})
	nsh, err := vnetns.GetFromPath("/run/netns/" + f.relay.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	stop := make(chan struct{})
	done := make(chan struct{})
	var churned int
	go func() {
		defer close(done)
		_, unrelated, _ := net.ParseCIDR("198.19.77.0/24")
		rt := &netlink.Route{Dst: unrelated, Type: unix.RTN_BLACKHOLE}
		tk := time.NewTicker(5 * time.Millisecond)
		defer tk.Stop()
		for i := 0; ; i++ {
			if i%2 == 0 {
				_ = h.RouteReplace(rt)
			} else {
				_ = h.RouteDel(rt)
			}
			churned++
			select {
			case <-stop:
				return
			case <-tk.C:
			}
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-done
	}()
	ev := &foEvent{name: "route via B", after: 200 * time.Millisecond, fn: func() error {
		_, err := f.relay.IP("-4", "route", "replace", dst, "via", a.gwB.String(), "dev", "lb0")
		return err
	}}
	r := f.run(300*time.Millisecond, foBound+time.Second, ev)
	close(stop)
	<-done
	firstB, lastA := r.firstOn('B', ev.t0), r.lastOn('A')
	t.Logf("route change under churn (%d unrelated route changes): first arrival via B %s after, last via A %s after",
		churned, r.ms(firstB-ev.t0), r.ms(lastA-ev.t0))
	if firstB < 0 || firstB-ev.t0 > foBound {
		t.Errorf("first arrival via link B %s after the route change; want within %v", r.ms(firstB-ev.t0), foBound)
	}
	if lastA-ev.t0 > foBound {
		t.Errorf("link A still received %s after the route change", r.ms(lastA-ev.t0))
	}
	r.requireSteady(t, ev.t0+foBound, 'B')
}

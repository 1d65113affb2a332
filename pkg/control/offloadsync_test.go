package control

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/internal/testutil"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// recordingOffload stands in for the kernel channel table (a real
// pkg/loader table is driven through the same interface in
// offload_xdp_test.go). It records every call, naming a Bind of a channel
// it does not hold "install" and one it holds "refresh", can be made full,
// and reports per-channel usage the test sets.
type recordingOffload struct {
	mu       sync.Mutex
	calls    []offloadCall
	entries  map[uint16]ChannelBinding // by channel; tests use distinct channels
	capacity int                       // 0: unlimited
	delay    time.Duration             // an install sleeps this long
	usage    ChannelUsage
	failWith error
}

type offloadCall struct {
	op   string // install, refresh, remove
	c    ChannelBinding
	done time.Time // when the call returned
}

var _ KernelChannels = (*recordingOffload)(nil)

func newRecordingOffload() *recordingOffload {
	return &recordingOffload{entries: map[uint16]ChannelBinding{}}
}

func (o *recordingOffload) Bind(c ChannelBinding) error {
	o.mu.Lock()
	_, held := o.entries[c.Number]
	o.mu.Unlock()
	if !held {
		time.Sleep(o.delay)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.failWith != nil {
		return o.failWith
	}
	if !held && o.capacity > 0 && len(o.entries) >= o.capacity {
		return fmt.Errorf("channel %#x: %w", c.Number, ErrOffloadFull)
	}
	o.entries[c.Number] = c
	op := "install"
	if held {
		op = "refresh"
	}
	o.calls = append(o.calls, offloadCall{op, c, time.Now()})
	return nil
}

func (o *recordingOffload) Unbind(c ChannelBinding) (ChannelUsage, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, held := o.entries[c.Number]
	delete(o.entries, c.Number)
	o.calls = append(o.calls, offloadCall{"remove", c, time.Now()})
	if !held {
		return ChannelUsage{}, nil
	}
	return o.usage, nil
}

func (o *recordingOffload) Usage() (UsageSnapshot, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	snap := UsageSnapshot{}
	for _, c := range o.entries {
		snap[c.Key()] = o.usage
	}
	return snap, nil
}

func (o *recordingOffload) ops() []offloadCall {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]offloadCall(nil), o.calls...)
}

func (o *recordingOffload) count(op string) int {
	n := 0
	for _, c := range o.ops() {
		if c.op == op {
			n++
		}
	}
	return n
}

func (o *recordingOffload) last(op string) (ChannelBinding, bool) {
	calls := o.ops()
	for i := len(calls) - 1; i >= 0; i-- {
		if calls[i].op == op {
			return calls[i].c, true
		}
	}
	return ChannelBinding{}, false
}

func withOffload(o KernelChannels) serverOpt {
	return func(_ *Config, opts *Options) { opts.Offload = o }
}

func near(t *testing.T, what string, got, want time.Time) {
	t.Helper()
	if d := got.Sub(want); d < -2*time.Second || d > 2*time.Second {
		t.Errorf("%s = %v, want about %v", what, got, want)
	}
}

func TestOffloadInstallBeforeResponse(t *testing.T) {
	off := newRecordingOffload()
	off.delay = 150 * time.Millisecond
	s := startServer(t, withOffload(off))
	c := dialRaw(t, "udp", s.addr("udp"))
	relay := c.allocate(attr{stun.AttrDontFragment, nil})
	peer := netip.MustParseAddrPort("127.0.0.2:7100")
	c.nonce = s.nonces.issue(c.localAddr().Addr(), time.Now())
	m := c.build(methodChannelBind, stun.ClassRequest, true, channelAttr(0x4321), peerAttr(peer))
	start := time.Now()
	c.write(m.Raw)
	resp := c.readSTUN(m.TransactionID, 2*time.Second)
	arrived := time.Now()
	if code(resp) != 0 {
		t.Fatalf("ChannelBind: code %d", code(resp))
	}
	calls := off.ops()
	if len(calls) != 1 || calls[0].op != "install" {
		t.Fatalf("offload calls %+v, want one install", calls)
	}
	if !calls[0].done.Before(arrived) || calls[0].done.Sub(start) < off.delay {
		t.Fatalf("install finished at +%v, response arrived at +%v: response left first",
			calls[0].done.Sub(start), arrived.Sub(start))
	}
	got := calls[0].c
	want := ChannelBinding{
		Client: c.localAddr(), Listener: s.addr("udp"), Relay: relay, Peer: peer,
		Number: 0x4321, DontFragment: true, Expires: got.Expires,
	}
	if got != want {
		t.Errorf("installed %+v\nwant      %+v", got, want)
	}
	// Expires is the earliest of channel (600 s), permission (300 s) and
	// allocation (600 s).
	near(t, "Expires", got.Expires, time.Now().Add(300*time.Second))
	ai := s.Allocations()
	if len(ai) != 1 || len(ai[0].Channels) != 1 || !ai[0].Channels[0].Offloaded {
		t.Errorf("channel not reported offloaded: %+v", ai)
	}
}

func TestOffloadRefreshAndRemove(t *testing.T) {
	off := newRecordingOffload()
	s := startServer(t, withOffload(off), func(c *Config, _ *Options) {
		c.ChannelLifetime = 1000 * time.Second
		c.PermissionLifetime = 2000 * time.Second
	})
	c := dialRaw(t, "udp", s.addr("udp"))
	c.allocate()
	peer := netip.MustParseAddrPort("127.0.0.2:7101")
	if r := c.do(methodChannelBind, channelAttr(0x4001), peerAttr(peer)); code(r) != 0 {
		t.Fatal(code(r))
	}
	inst, _ := off.last("install")
	near(t, "install Expires (allocation is earliest)", inst.Expires, time.Now().Add(600*time.Second))

	// Allocation refresh moves the expiry.
	if r := c.do(methodRefresh, lifetimeAttr(900)); code(r) != 0 {
		t.Fatal(code(r))
	}
	ref, ok := off.last("refresh")
	if !ok {
		t.Fatal("allocation refresh did not refresh the offload entry")
	}
	near(t, "refresh Expires", ref.Expires, time.Now().Add(900*time.Second))
	// A permission refresh that does not move the minimum: no call.
	n := off.count("refresh")
	if r := c.do(methodCreatePermission, peerAttr(peer)); code(r) != 0 {
		t.Fatal(code(r))
	}
	if off.count("refresh") != n {
		t.Errorf("refresh without a change of expiry")
	}
	// Channel refresh (rebinding the same pair) with the channel as the
	// minimum.
	if r := c.do(methodRefresh, lifetimeAttr(3600)); code(r) != 0 {
		t.Fatal(code(r))
	}
	ref, _ = off.last("refresh")
	near(t, "refresh Expires (channel is earliest)", ref.Expires, time.Now().Add(1000*time.Second))
	if off.count("install") != 1 {
		t.Errorf("%d installs, want 1", off.count("install"))
	}

	// Usage shows up in the stats.
	off.mu.Lock()
	off.usage = ChannelUsage{ToPeerPackets: 7, ToPeerBytes: 700, ToClientPackets: 3, ToClientBytes: 300}
	off.mu.Unlock()
	if ai := s.Allocations(); !ai[0].Channels[0].LastActivity.IsZero() {
		t.Errorf("activity before any traffic: %v", ai[0].Channels[0].LastActivity)
	}
	// Kernel traffic makes the channel and the allocation active.
	polled := time.Now()
	s.pollKernel(polled)
	if ai := s.Allocations(); !ai[0].Channels[0].LastActivity.Equal(polled) || !ai[0].LastActivity.Equal(polled) {
		t.Errorf("kernel traffic not seen as activity: %+v", ai[0])
	}
	// Unchanged counters: no new activity.
	s.pollKernel(polled.Add(time.Minute))
	if ai := s.Allocations(); !ai[0].Channels[0].LastActivity.Equal(polled) {
		t.Errorf("activity moved without traffic")
	}
	st := s.Stats()
	if st.KernelToPeer.Packets != 7 || st.KernelToClient.Bytes != 300 || st.OffloadedChannels != 1 {
		t.Errorf("kernel usage not in stats: %+v %+v %d", st.KernelToPeer, st.KernelToClient, st.OffloadedChannels)
	}

	// Refresh(0) removes the entry; the counted usage is kept.
	if r := c.do(methodRefresh, lifetimeAttr(0)); code(r) != 0 {
		t.Fatal(code(r))
	}
	rem, ok := off.last("remove")
	if !ok || rem.Number != 0x4001 || rem.Peer != peer {
		t.Fatalf("Refresh(0) did not remove the entry: %+v", off.ops())
	}
	if st := s.Stats(); st.KernelToPeer.Packets != 7 {
		t.Errorf("kernel usage lost on removal: %+v", st.KernelToPeer)
	}
	if len(off.entries) != 0 {
		t.Errorf("entries left: %v", off.entries)
	}
}

func TestOffloadExpiryRemoves(t *testing.T) {
	off := newRecordingOffload()
	s := startServer(t, withOffload(off), func(c *Config, _ *Options) {
		c.ChannelLifetime = 800 * time.Millisecond
	})
	c := dialRaw(t, "udp", s.addr("udp"))
	c.allocate()
	if r := c.do(methodChannelBind, channelAttr(0x4002), peerAttr(netip.MustParseAddrPort("127.0.0.2:7102"))); code(r) != 0 {
		t.Fatal(code(r))
	}
	testutil.WaitFor(t, 3*time.Second, "remove after channel expiry", func() bool { return off.count("remove") == 1 })
	if len(s.Allocations()[0].Channels) != 0 {
		t.Error("expired channel still listed")
	}
}

func TestOffloadNotUsed(t *testing.T) {
	t.Run("tcp client", func(t *testing.T) {
		off := newRecordingOffload()
		s := startServer(t, withOffload(off))
		c := dialRaw(t, "tcp", s.addr("tcp"))
		c.allocate()
		if r := c.do(methodChannelBind, channelAttr(0x4003), peerAttr(netip.MustParseAddrPort("127.0.0.2:7103"))); code(r) != 0 {
			t.Fatal(code(r))
		}
		if len(off.ops()) != 0 {
			t.Errorf("TCP client offloaded: %+v", off.ops())
		}
	})
	t.Run("hairpin peer", func(t *testing.T) {
		off := newRecordingOffload()
		s := startServer(t, withOffload(off))
		other := dialRaw(t, "udp", s.addr("udp"))
		otherRelay := other.allocate()
		c := dialRaw(t, "udp", s.addr("udp"))
		c.allocate()
		if r := c.do(methodChannelBind, channelAttr(0x4004), peerAttr(otherRelay)); code(r) != 0 {
			t.Fatal(code(r))
		}
		// Offered to the kernel like any channel: the loader forwards it
		// relay to relay when the other side has a channel back, and
		// passes it (userspace relays) otherwise.
		ops := off.ops()
		if len(ops) != 1 || ops[0].op != "install" || ops[0].c.Peer != otherRelay {
			t.Errorf("relay-to-relay channel: offload ops %+v, want one install with peer %v", ops, otherRelay)
		}
	})
	t.Run("bandwidth-limited allocation", func(t *testing.T) {
		// The kernel path does not meter; with a limit every datagram
		// must pass through the userspace token bucket.
		off := newRecordingOffload()
		s := startServer(t, withOffload(off), func(cfg *Config, _ *Options) { cfg.BandwidthLimit = 1 << 20 })
		c := dialRaw(t, "udp", s.addr("udp"))
		c.allocate()
		if r := c.do(methodChannelBind, channelAttr(0x4005), peerAttr(netip.MustParseAddrPort("127.0.0.2:7105"))); code(r) != 0 {
			t.Fatal(code(r))
		}
		if len(off.ops()) != 0 {
			t.Errorf("bandwidth-limited channel offloaded: %+v", off.ops())
		}
	})
}

func TestOffloadFullStaysInUserspace(t *testing.T) {
	off := newRecordingOffload()
	off.capacity = 1
	s := startServer(t, withOffload(off))
	peer := newPeer(t, "127.0.0.2:0")
	c := dialRaw(t, "udp", s.addr("udp"))
	relay := c.allocate()
	if r := c.do(methodChannelBind, channelAttr(0x4005), peerAttr(netip.MustParseAddrPort("127.0.0.2:7105"))); code(r) != 0 {
		t.Fatal(code(r))
	}
	// The table is full now: the next bind succeeds for the client.
	if r := c.do(methodChannelBind, channelAttr(0x4006), peerAttr(peer.addr())); code(r) != 0 {
		t.Fatalf("full offload table surfaced to the client: code %d", code(r))
	}
	st := s.Stats()
	if st.OffloadFull != 1 || st.OffloadedChannels != 1 || st.Channels != 2 {
		t.Errorf("stats %+v", st)
	}
	// The channel works through userspace.
	c.write(appendChannelData(nil, 0x4006, []byte("via userspace"), false))
	got, from, err := peer.recv(2 * time.Second)
	if err != nil || !bytes.Equal(got, []byte("via userspace")) || from != relay {
		t.Fatalf("userspace fallback: %q %v %v", got, from, err)
	}
	// Other errors behave the same.
	off.mu.Lock()
	off.failWith = errors.New("bpf map update: EPERM")
	off.mu.Unlock()
	if r := c.do(methodChannelBind, channelAttr(0x4007), peerAttr(netip.MustParseAddrPort("127.0.0.2:7107"))); code(r) != 0 {
		t.Fatalf("offload error surfaced to the client: code %d", code(r))
	}
	// Three failed installs: 0x4006 when the table was full, then 0x4006
	// again (every change of the allocation retries channels left in
	// userspace, since room may have freed up) and 0x4007.
	if st := s.Stats(); st.OffloadInstallErrors != 3 || st.OffloadFull != 1 {
		t.Errorf("install errors %d (full %d), want 3 (1)", st.OffloadInstallErrors, st.OffloadFull)
	}
}

func TestOffloadCloseRemovesAll(t *testing.T) {
	off := newRecordingOffload()
	cfg := testConfig()
	s, err := NewServer(cfg, Options{Datapath: dataplane.NewPlain(), Offload: off, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		c := dialRaw(t, "udp", s.addr("udp"))
		c.allocate()
		if r := c.do(methodChannelBind, channelAttr(uint16(0x4010+i)), peerAttr(netip.MustParseAddrPort(fmt.Sprintf("127.0.0.2:%d", 7200+i)))); code(r) != 0 {
			t.Fatal(code(r))
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if off.count("remove") != 3 || len(off.entries) != 0 {
		t.Errorf("Close left entries: %d removes, %v", off.count("remove"), off.entries)
	}
}

// TestRestartKeepsAllocations is the control-plane half of a restart that
// keeps media flowing (docs/design.md, Kernel-path invariants, 8): Shutdown(true) leaves the kernel
// entries, the state file carries the allocations to a new Server, which
// re-opens the relay ports, reinstalls the entries and keeps relaying on
// the same addresses.
func TestRestartKeepsAllocations(t *testing.T) {
	dir := t.TempDir()
	stateFile := filepath.Join(dir, "state.json")
	off := newRecordingOffload()
	cfg := testConfig()
	dp1 := dataplane.NewPlain()
	s1, err := NewServer(cfg, Options{Datapath: dp1, Offload: off, StateFile: stateFile, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s1.Start(); err != nil {
		t.Fatal(err)
	}
	peer := newPeer(t, "127.0.0.2:0")
	c := dialRaw(t, "udp", s1.addr("udp"))
	relay := c.allocate(attr{stun.AttrDontFragment, nil})
	if r := c.do(methodChannelBind, channelAttr(0x4444), peerAttr(peer.addr())); code(r) != 0 {
		t.Fatal(code(r))
	}
	if r := c.do(methodCreatePermission, peerAttr(netip.MustParseAddrPort("127.0.0.77:1"))); code(r) != 0 {
		t.Fatal(code(r))
	}
	before := s1.Allocations()
	if err := s1.Shutdown(true); err != nil {
		t.Fatal(err)
	}
	dp1.Close()
	if off.count("remove") != 0 {
		t.Fatalf("Shutdown(true) removed kernel entries: %+v", off.ops())
	}
	fi, err := os.Stat(stateFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v %v", fi, err)
	}

	// The new process binds the same listener ports.
	cfg2 := testConfig()
	cfg2.Listeners = s1.Addrs()
	off2 := newRecordingOffload()
	dp2 := dataplane.NewPlain()
	s2, err := NewServer(cfg2, Options{Datapath: dp2, Offload: off2, StateFile: stateFile, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s2.Close(); dp2.Close() })
	after := s2.Allocations()
	if len(after) != 1 {
		t.Fatalf("%d allocations restored", len(after))
	}
	b, a := before[0], after[0]
	if a.Client != b.Client || a.Username != b.Username || len(a.Relays) != 1 || a.Relays[0] != relay ||
		!a.Expires.Equal(b.Expires) || !a.DontFragment || len(a.Permissions) != 2 || len(a.Channels) != 1 ||
		!a.Channels[0].Offloaded || a.Channels[0].Peer != peer.addr() {
		t.Fatalf("restored %+v\nbefore   %+v", a, b)
	}
	inst, ok := off2.last("install")
	if !ok || inst.Number != 0x4444 || inst.Relay != relay || !inst.DontFragment {
		t.Fatalf("entry not reinstalled: %+v", off2.ops())
	}
	// Media continues on the same relay address, both ways, and the client
	// keeps using its credentials and 5-tuple.
	c.write(appendChannelData(nil, 0x4444, []byte("after restart"), false))
	got, from, err := peer.recv(2 * time.Second)
	if err != nil || string(got) != "after restart" || from != relay {
		t.Fatalf("after restart: %q from %v (%v)", got, from, err)
	}
	peer.send([]byte("back"), relay)
	if f := c.read(2 * time.Second); !bytes.Equal(f, appendChannelData(nil, 0x4444, []byte("back"), false)) {
		t.Fatalf("to client after restart: %x", f)
	}
	c.nonce = "" // nonces of the old process are unknown to the new one
	if r := c.do(methodRefresh, lifetimeAttr(700)); code(r) != 0 {
		t.Fatalf("refresh after restart: %d", code(r))
	}
}

func TestRestoreSkipsExpiredAndBadState(t *testing.T) {
	dir := t.TempDir()
	stateFile := filepath.Join(dir, "state.json")
	past := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339Nano)
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339Nano)
	for _, tt := range []struct {
		name, content string
		want          int
	}{
		{"expired", `{"version":1,"allocations":[{"client":"127.0.0.1:5000","server":"127.0.0.1:1","username":"alice",
			"relays":["127.0.0.1:41000"],"expires":"` + past + `"}]}`, 0},
		{"listener gone", `{"version":1,"allocations":[{"client":"127.0.0.1:5000","server":"127.0.0.1:1","username":"alice",
			"relays":["127.0.0.1:41000"],"expires":"` + future + `"}]}`, 0},
		{"wrong version", `{"version":99,"allocations":[]}`, 0},
		{"garbage", `{{{`, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.WriteFile(stateFile, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			s := startServer(t, func(_ *Config, o *Options) { o.StateFile = stateFile })
			if n := len(s.Allocations()); n != tt.want {
				t.Errorf("%d allocations restored, want %d", n, tt.want)
			}
		})
	}
}

// TestStateWrittenOnChange: the state file follows changes without a
// shutdown (a crashed daemon's successor still finds recent state).
func TestStateWrittenOnChange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	s := startServer(t, func(_ *Config, o *Options) { o.StateFile = path })
	c := dialRaw(t, "udp", s.addr("udp"))
	c.allocate()
	if r := c.do(methodChannelBind, channelAttr(0x4567), peerAttr(netip.MustParseAddrPort("127.0.0.2:9"))); code(r) != 0 {
		t.Fatal(code(r))
	}
	read := func() stateFile {
		var st stateFile
		b, err := os.ReadFile(path)
		if err == nil {
			json.Unmarshal(b, &st)
		}
		return st
	}
	testutil.WaitFor(t, 5*time.Second, "state with the channel", func() bool {
		st := read()
		return len(st.Allocations) == 1 && len(st.Allocations[0].Channels) == 1 && st.Allocations[0].Channels[0].Number == 0x4567
	})
	if r := c.do(methodRefresh, lifetimeAttr(0)); code(r) != 0 {
		t.Fatal(code(r))
	}
	testutil.WaitFor(t, 5*time.Second, "state without the allocation", func() bool { return len(read().Allocations) == 0 })
}

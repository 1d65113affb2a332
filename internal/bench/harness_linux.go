//go:build linux

package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/internal/turnclient"
	"github.com/hybridrelay/hybridrelay/pkg/loader"
)

const (
	benchSecret = "hybridrelay-bench-secret"
	sinkPort    = 9000
	turnPort    = 3478
)

// errUnavailable marks a variant that cannot run at all (the binary does
// not support it, the host lacks a feature): reported, not fatal.
var errUnavailable = errors.New("variant unavailable")

// errForwardingStuck: the relay namespace could not be set back to not
// forwarding after a routed run; every later relay run would be measured
// on a router, so the comparison stops.
var errForwardingStuck = errors.New("relay namespace forwarding not restored")

type harness struct {
	opts  Options
	topo  *netns.Topology
	bin   string
	bpffs string
	// passIDs are the XDP_PASS program on the client and peer veth ends
	// (one program, attached to every end), for its in-place cost.
	passIDs []ebpf.ProgramID
}

// Compare runs every case through direct, routed and each datapath,
// alternating the variants within each repeat, in a private
// three-namespace topology with a direct client-peer link. The relay
// namespace keeps a server's default sysctls (forwarding off) for every
// variant but routed, which turns forwarding on for its runs only.
// The namespaces, the relay processes and their BPF pins are removed on
// every exit path; when ctx is cancelled (Ctrl-C) the runs finished so far
// are returned with ctx's error.
func Compare(ctx context.Context, opts Options) (rep *Report, err error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	h := &harness{opts: opts, bin: opts.RelayBinary}
	if h.bin == "" {
		dir, err := os.MkdirTemp("", "hybridrelay-bench-")
		if err != nil {
			return nil, fmt.Errorf("harness: %w", err)
		}
		defer os.RemoveAll(dir)
		if h.bin, err = buildRelay(ctx, opts.ModuleDir, dir); err != nil {
			return nil, err
		}
	}
	// A private bpf filesystem for the relays' pins: nothing is left on
	// the host's /sys/fs/bpf (which may not even be mounted), and the
	// unmount at the end drops whatever a relay left pinned.
	removeStaleBPFFS()
	bpfDir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", bpffsPrefix, os.Getpid()))
	if err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	defer os.RemoveAll(bpfDir)
	if err := unix.Mount("bpf", bpfDir, "bpf", 0, "mode=0700"); err != nil {
		return nil, fmt.Errorf("harness: mount a bpf filesystem on %s: %w", bpfDir, err)
	}
	defer unix.Unmount(bpfDir, unix.MNT_DETACH)
	h.bpffs = filepath.Join(bpfDir, "hybridrelay")

	// Default sysctls: the relay datapaths run on a host that does not
	// route, as servers come (docs/design.md, "Invariants for the kernel
	// path" 6).
	if h.topo, err = netns.NewTopologyWith(netns.TopologyOptions{DirectLink: true}); err != nil {
		return nil, fmt.Errorf("harness: topology: %w", err)
	}
	defer h.topo.Close()

	var uname unix.Utsname
	_ = unix.Uname(&uname)
	variants := append([]string{VariantDirect, VariantRouted}, opts.Datapaths...)
	rep = &Report{
		Started: time.Now().UTC(), Kernel: unix.ByteSliceToString(uname.Release[:]), CPUs: runtime.NumCPU(),
		Duration: opts.Duration.Seconds(), Warmup: opts.Warmup.Seconds(), Repeats: opts.Repeats,
		Variants: variants, Unavailable: map[string]string{},
	}
	// XDP_TX or a redirect into a veth delivers nothing unless the other
	// end runs an XDP program (docs/design.md, veth facts): attach XDP_PASS to
	// the outer ends for every variant, so all run on the same veth mode.
	links, err := h.topo.AttachXDPPass()
	if err != nil {
		rep.Notes = append(rep.Notes, "XDP_PASS on the client and peer veths failed, the xdp variant cannot deliver: "+err.Error())
	} else {
		rep.Notes = append(rep.Notes, "an XDP_PASS program is attached to the client and peer veth ends (direct link too) in every variant (needed for XDP_TX into a veth)")
		defer func() {
			for _, l := range links {
				l.Close()
			}
		}()
		if h.passIDs, err = h.topo.Client.XDPProgramIDs(h.topo.ClientIf); err != nil {
			rep.Notes = append(rep.Notes, "the XDP_PASS program's id is unknown, no pass ns/pkt: "+err.Error())
		}
	}
	rep.Notes = append(rep.Notes,
		"direct: client to peer over their own veth (198.19.0.0/24, 2001:2:0:9::/64), no relay hop; routed: through the relay namespace as an IP router, forwarding on for those runs only; every relay datapath runs with the relay namespace not forwarding (fwd column)",
		"in-place program cost: kernel BPF run-time stats (BPF_ENABLE_STATS) held on only during each window, in every variant; they add a little to every BPF program run")

	for _, c := range opts.Cases {
		cr := CaseResult{Case: c}
		for r := 0; r < opts.Repeats; r++ {
			for _, v := range variants {
				if _, bad := rep.Unavailable[v]; bad {
					continue
				}
				if err := ctx.Err(); err != nil {
					cr.Summarize(variants, rep.Unavailable)
					rep.Cases = append(rep.Cases, cr)
					return rep, err
				}
				run, err := h.runOne(ctx, c, v, r)
				if errors.Is(err, errForwardingStuck) {
					run.Error = err.Error()
					cr.Runs = append(cr.Runs, run)
					cr.Summarize(variants, rep.Unavailable)
					rep.Cases = append(rep.Cases, cr)
					return rep, fmt.Errorf("harness: %w", err)
				}
				if errors.Is(err, errUnavailable) {
					rep.Unavailable[v] = strings.TrimPrefix(err.Error(), errUnavailable.Error()+": ")
					h.progress("%s %-6s unavailable: %s", c.Name, v, oneLine(rep.Unavailable[v], 200))
					continue
				}
				if err != nil {
					if ctx.Err() != nil {
						continue // reported at the top of the loop
					}
					run.Error = err.Error()
					h.progress("%s %-6s repeat %d: error: %v", c.Name, v, r+1, err)
				} else {
					h.progress("%s %-6s repeat %d: fwd %s, offered %8.0f pps, delivered %8.0f pps, relay CPU %5.1f%%, %6.0f CPU-ns/pkt, xdp %4.0f ns/pkt, pass %4.0f ns/pkt, p50 %6.0f us, p99 %6.0f us, background CPU %3.0f%%",
						c.Name, v, r+1, run.Forwarding(), run.OfferedPPS, run.DeliveredPPS, run.RelayCPUPct, run.SysCPUNsPerPkt, run.XDPNsPerPkt, run.PassNsPerPkt, run.P50us, run.P99us, run.BackgroundCPUPct)
				}
				cr.Runs = append(cr.Runs, run)
			}
		}
		cr.Summarize(variants, rep.Unavailable)
		rep.Cases = append(rep.Cases, cr)
	}
	return rep, nil
}

func (h *harness) progress(format string, args ...any) {
	if h.opts.Progress != nil {
		fmt.Fprintf(h.opts.Progress, format+"\n", args...)
	}
}

// bpffsPrefix names the private bpffs mount points: <tmp>/<prefix><pid>-*.
const bpffsPrefix = "hybridrelay-bench-bpffs-"

// removeStaleBPFFS unmounts and removes the bpffs mounts of harnesses that
// died without cleaning up (SIGKILL); their relays died with them
// (Pdeathsig), and netns.NewTopology removes their namespaces.
func removeStaleBPFFS() {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[2] != "bpf" {
			continue
		}
		base := filepath.Base(f[1])
		if !strings.HasPrefix(base, bpffsPrefix) {
			continue
		}
		pid, _, ok := strings.Cut(strings.TrimPrefix(base, bpffsPrefix), "-")
		if !ok || pid == fmt.Sprint(os.Getpid()) {
			continue
		}
		if _, err := os.Stat("/proc/" + pid); err == nil {
			continue // still running
		}
		if unix.Unmount(f[1], unix.MNT_DETACH) == nil {
			_ = os.Remove(f[1])
		}
	}
}

// buildRelay builds cmd/hybridrelay once into dir.
func buildRelay(ctx context.Context, moduleDir, dir string) (string, error) {
	if moduleDir == "" {
		out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
		if err != nil || strings.TrimSpace(string(out)) == "" || strings.TrimSpace(string(out)) == os.DevNull {
			return "", fmt.Errorf("harness: find the module to build hybridrelay (set a relay binary): %v", err)
		}
		moduleDir = filepath.Dir(strings.TrimSpace(string(out)))
	}
	bin := filepath.Join(dir, "hybridrelay")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/hybridrelay")
	cmd.Dir = moduleDir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("harness: go build ./cmd/hybridrelay: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return bin, nil
}

type family struct {
	network                        string
	client, relayListen, relayPeer netip.Addr
	peer                           netip.Addr
	// The ends of the direct client-peer link.
	directClient, directPeer netip.Addr
}

func (h *harness) family(v6 bool) family {
	t := h.topo
	if v6 {
		return family{"udp6", t.ClientV6, t.RelayClientV6, t.RelayPeerV6, t.PeerV6, t.DirectClientV6, t.DirectPeerV6}
	}
	return family{"udp4", t.ClientV4, t.RelayClientV4, t.RelayPeerV4, t.PeerV4, t.DirectClientV4, t.DirectPeerV4}
}

// relayXDPIDs are the XDP programs attached to the relay namespace's
// interfaces (the relay's, on the xdp datapath), each once.
func (h *harness) relayXDPIDs() ([]ebpf.ProgramID, error) {
	var ids []ebpf.ProgramID
	for _, ifc := range []string{h.topo.RelayClientIf, h.topo.RelayPeerIf} {
		got, err := h.topo.Relay.XDPProgramIDs(ifc)
		if err != nil {
			return nil, err
		}
		for _, id := range got {
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
	}
	return ids, nil
}

func listenIn(ns *netns.NS, network string, addr netip.AddrPort) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := ns.Do(func() (err error) {
		c, err = net.ListenUDP(network, net.UDPAddrFromAddrPort(addr))
		return err
	})
	return c, err
}

type snapshot struct {
	at        time.Time
	sent      uint64
	delivered uint64
	sys       SystemCPU
	relay     time.Duration
	kernelFwd uint64 // the relay program's forwarded packets, all kinds
	// kernelPass: what the program passed to the stack, by reason.
	kernelPass map[string]uint64
}

func (h *harness) runOne(ctx context.Context, c Case, variant string, repeat int) (run Run, err error) {
	run = Run{Variant: variant, Repeat: repeat}
	fam := h.family(c.IPv6)
	baseline := variant == VariantDirect || variant == VariantRouted
	clientIP, peerIP := fam.client, fam.peer
	if variant == VariantDirect {
		clientIP, peerIP = fam.directClient, fam.directPeer
	}
	if variant == VariantRouted {
		// The relay host as an IP router, for this run only: set back
		// off on every way out, or stop the comparison.
		if err := h.topo.SetForwarding(true); err != nil {
			return run, fmt.Errorf("routed: %w", err)
		}
		defer func() {
			if rerr := h.topo.SetForwarding(false); rerr != nil {
				err = errors.Join(err, fmt.Errorf("%w: %v", errForwardingStuck, rerr))
			}
		}()
	} else if v4, v6, ferr := h.topo.Forwarding(); ferr != nil {
		return run, ferr
	} else if v4 || v6 {
		return run, fmt.Errorf("%w: %s would run with the relay namespace forwarding (%s)", errForwardingStuck, variant, forwardingWord(v4, v6))
	}
	sinkAddr := netip.AddrPortFrom(peerIP, sinkPort)
	sink, err := listenIn(h.topo.Peer, fam.network, sinkAddr)
	if err != nil {
		return run, fmt.Errorf("sink socket: %w", err)
	}
	defer sink.Close()

	var (
		flows []*Flow
		rconf = RecvConfig{Flows: c.Flows}
		relay *relayProc
	)
	if baseline {
		var clients []*net.UDPConn
		defer func() {
			for _, cc := range clients {
				cc.Close()
			}
		}()
		for i := 0; i < c.Flows; i++ {
			cc, err := listenIn(h.topo.Client, fam.network, netip.AddrPortFrom(clientIP, 0))
			if err != nil {
				return run, fmt.Errorf("client socket: %w", err)
			}
			clients = append(clients, cc)
			if c.Direction == ClientToPeer {
				flows = append(flows, &Flow{ID: uint32(i), Conn: cc, Dst: sinkAddr})
			} else {
				flows = append(flows, &Flow{ID: uint32(i), Conn: sink, Dst: addrOf(cc)})
			}
		}
		if c.Direction == ClientToPeer {
			rconf.Conns = []*net.UDPConn{sink}
		} else {
			rconf.Conns = clients
		}
	} else {
		relay, err = h.startRelay(ctx, variant)
		if err != nil {
			return run, err
		}
		defer relay.stop()
		server := netip.AddrPortFrom(fam.relayListen, turnPort)
		if err := relay.waitReady(ctx, h.topo.Client, fam, server); err != nil {
			return run, err
		}
		setupCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
		load, err := SetupTURN(setupCtx, TURNConfig{
			Server: server, Secret: benchSecret, UserPrefix: "bench", Allocations: c.Flows,
			Peer: sinkAddr, Local: fam.client, Lifetime: time.Hour, Do: h.topo.Client.Do,
		})
		cancel()
		if err != nil {
			return run, fmt.Errorf("turn setup: %w (relay log: %s)", err, oneLine(relay.log.String(), 300))
		}
		defer load.Close()
		if c.Direction == ClientToPeer {
			flows = load.ClientFlows()
			rconf.Conns = []*net.UDPConn{sink}
		} else {
			flows = load.PeerFlows(sink)
			rconf.Conns = load.Conns()
			rconf.Control = load.Control()
		}
	}

	recv := NewReceiver(rconf)
	if err := recv.Start(); err != nil {
		return run, err
	}
	defer recv.Stop()
	// The machine is shared: measure how busy it is without our load, just
	// before the run, so a reader can tell a noisy run from a slow path.
	b0, err := ReadSystemCPU()
	if err != nil {
		return run, err
	}
	if err := sleepCtx(ctx, 500*time.Millisecond); err != nil {
		return run, err
	}
	b1, err := ReadSystemCPU()
	if err != nil {
		return run, err
	}
	if total := b1.Total - b0.Total; total > 0 {
		run.BackgroundCPUPct = 100 * float64(b1.Busy-b0.Busy) / float64(total)
	}
	gen, err := NewGenerator(GenConfig{Flows: flows, PayloadSize: c.Size, Rate: c.Rate, Duration: h.opts.Warmup + h.opts.Duration + 5*time.Second})
	if err != nil {
		return run, err
	}
	genCtx, stopGen := context.WithCancel(ctx)
	defer stopGen()
	genErr := make(chan error, 1)
	go func() { genErr <- gen.Run(genCtx) }()

	var kernel *loader.XDP
	if variant == "xdp" {
		if kernel, err = openPinnedReadOnly(h.bpffs); err != nil {
			return run, err
		}
		defer kernel.Close()
	}
	take := func() (snapshot, error) {
		s := snapshot{at: time.Now(), sent: gen.Sent(), delivered: recv.Packets()}
		var err error
		if s.sys, err = ReadSystemCPU(); err != nil {
			return s, err
		}
		if relay != nil {
			if s.relay, err = ProcessCPU(relay.cmd.Process.Pid); err != nil {
				return s, err
			}
		}
		if kernel != nil {
			cnt, err := kernel.Counters()
			if err != nil {
				return s, fmt.Errorf("read the relay's kernel counters: %w", err)
			}
			s.kernelFwd = cnt.Get(loader.FwdToPeerPackets) + cnt.Get(loader.FwdToClientPackets) + cnt.Get(loader.FwdHairpinPackets)
			s.kernelPass = map[string]uint64{}
			for c := range loader.NumCounters {
				// Every XDP_PASS counts one pass_* reason; pass_map_full
				// is userspace's (a channel that found no room).
				if name := loader.Counter(c).String(); strings.HasPrefix(name, "pass_") && loader.Counter(c) != loader.PassMapFull {
					s.kernelPass[name] = cnt.Get(loader.Counter(c))
				}
			}
		}
		return s, nil
	}

	if err := sleepCtx(ctx, h.opts.Warmup); err != nil {
		return run, err
	}
	// In-place program cost: bpf stats on for the window only.
	relayIDs, err := h.relayXDPIDs()
	if err != nil {
		return run, err
	}
	if variant == "xdp" && len(relayIDs) == 0 {
		run.ProgStatsError = "no XDP program attached in the relay namespace"
	}
	meter, merr := StartProgCost(relayIDs, h.passIDs)
	if merr != nil {
		run.ProgStatsError = merr.Error()
	}
	defer func() {
		if meter != nil {
			_, _ = meter.Stop()
		}
	}()
	s0, err := take()
	if err != nil {
		return run, err
	}
	recv.Measure(true)
	if run.RelayForwardingV4, run.RelayForwardingV6, err = h.topo.Forwarding(); err != nil {
		return run, err
	}
	if err := sleepCtx(ctx, h.opts.Duration); err != nil {
		return run, err
	}
	s1, err := take()
	recv.Measure(false)
	if err != nil {
		return run, err
	}
	if meter != nil {
		costs, err := meter.Stop()
		meter = nil
		if err != nil {
			run.ProgStatsError = err.Error()
		} else {
			run.XDPRuns, run.XDPNsPerPkt = costs[0].Runs, costs[0].NsPerRun()
			run.PassRuns, run.PassNsPerPkt = costs[1].Runs, costs[1].NsPerRun()
			if x, ok := ratio(run.XDPNsPerPkt, run.PassNsPerPkt); ok && run.XDPRuns > 0 {
				run.XDPToPassRatio = x
			}
		}
	}
	stopGen()
	if err := <-genErr; err != nil {
		return run, fmt.Errorf("generator: %w", err)
	}
	if relay != nil && relay.exitedEarly() {
		return run, fmt.Errorf("relay exited during the run: %s", oneLine(relay.log.String(), 300))
	}

	if kernel != nil {
		fwd, passed := s1.kernelFwd-s0.kernelFwd, uint64(0)
		for name, v := range s1.kernelPass {
			if d := v - s0.kernelPass[name]; d > 0 {
				if run.KernelPassed == nil {
					run.KernelPassed = map[string]uint64{}
				}
				run.KernelPassed[name] = d
				passed += d
			}
		}
		if fwd+passed > 0 {
			run.KernelForwarded = float64(fwd) / float64(fwd+passed)
		}
	}
	secs := s1.at.Sub(s0.at).Seconds()
	delivered := float64(s1.delivered - s0.delivered)
	offered := float64(s1.sent - s0.sent)
	run.Seconds = secs
	run.OfferedPPS = offered / secs
	run.DeliveredPPS = delivered / secs
	if offered > 0 {
		run.Loss = max(0, 1-delivered/offered)
	}
	busy := s1.sys.Busy - s0.sys.Busy
	if delivered > 0 {
		run.SysCPUNsPerPkt = float64(busy.Nanoseconds()) / delivered
	}
	if total := s1.sys.Total - s0.sys.Total; total > 0 {
		run.SysCPUPct = 100 * float64(busy) / float64(total)
	}
	if relay != nil {
		run.RelayCPUPct = 100 * float64(s1.relay-s0.relay) / float64(s1.at.Sub(s0.at))
		if delivered > 0 {
			run.RelayNsPerPkt = float64((s1.relay - s0.relay).Nanoseconds()) / delivered
		}
	}
	run.P50us = float64(recv.Latency.Quantile(0.50)) / 1e3
	run.P99us = float64(recv.Latency.Quantile(0.99)) / 1e3
	run.GSOSends = gen.IOStats().GSOSends
	if delivered == 0 {
		return run, fmt.Errorf("nothing delivered (offered %.0f pps)", run.OfferedPPS)
	}
	return run, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// relayProc is one `hybridrelay serve` running in the relay namespace.
type relayProc struct {
	cmd    *exec.Cmd
	log    *tail
	done   chan struct{}
	once   sync.Once
	bpffs  string
	waited error
}

// startRelay starts the real binary inside the relay namespace. The child
// is forked from a thread that has entered the namespace (the same as
// nsenter --net): unlike `ip netns exec` this keeps the host's /sys, so
// the relay's bpffs pins stay visible and removable from here.
func (h *harness) startRelay(ctx context.Context, datapath string) (*relayProc, error) {
	t := h.topo
	args := []string{"serve",
		"--datapath", datapath,
		"--listen", netip.AddrPortFrom(t.RelayClientV4, turnPort).String(),
		"--listen", netip.AddrPortFrom(t.RelayClientV6, turnPort).String(),
		"--relay-ip", t.RelayPeerV4.String(), "--relay-ip", t.RelayPeerV6.String(),
		"--auth-secret", benchSecret, "--realm", "bench",
		// 198.18.0.0/15 and 2001:2::/48 are not in the default deny list;
		// the allow-list makes the intent explicit.
		"--allow-peer", netip.PrefixFrom(t.PeerV4, 32).String(),
		"--allow-peer", netip.PrefixFrom(t.PeerV6, 128).String(),
		"--admin-socket", "off", "--metrics-listen", "off",
		"--bpffs", h.bpffs,
		"--max-allocations-per-user", "0", "--max-allocations", "0",
		"--unauth-rate", "100000", "--unauth-burst", "100000",
		"--log-level", "warn",
	}
	args = append(args, h.opts.ExtraServeArgs...)
	r := &relayProc{log: &tail{n: 4096, w: h.opts.RelayLog}, done: make(chan struct{}), bpffs: h.bpffs}
	cmd := exec.Command(h.bin, args...)
	cmd.Stdout = r.log
	cmd.Stderr = r.log
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "HYBRIDRELAY_") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	// The relay dies with the harness even if the harness is SIGKILLed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	r.cmd = cmd
	if err := t.Relay.Do(cmd.Start); err != nil {
		return nil, fmt.Errorf("%w: start %s: %v", errUnavailable, h.bin, err)
	}
	go func() {
		r.waited = cmd.Wait()
		close(r.done)
	}()
	return r, nil
}

func (r *relayProc) exitedEarly() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// waitReady polls the listener with STUN Binding requests from the client
// namespace until one is answered; a relay that exits first is
// unavailable (its log says why).
func (r *relayProc) waitReady(ctx context.Context, ns *netns.NS, fam family, server netip.AddrPort) error {
	conn, err := listenIn(ns, fam.network, netip.AddrPortFrom(fam.client, 0))
	if err != nil {
		return err
	}
	c, err := turnclient.New(turnclient.Config{Server: server, Conn: conn, RTO: 100 * time.Millisecond, Timeout: 200 * time.Millisecond})
	if err != nil {
		conn.Close()
		return err
	}
	defer c.Close()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if r.exitedEarly() {
			return fmt.Errorf("%w: relay exited at start-up (%v): %s", errUnavailable, r.waited, oneLine(r.log.String(), 400))
		}
		if _, err := c.Binding(ctx); err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: relay not answering on %v after 15s: %s", errUnavailable, server, oneLine(r.log.String(), 400))
		}
	}
}

// stop ends the relay: SIGTERM, then SIGKILL after 5 s; then removes its
// bpffs pins, so a pinned XDP link does not outlive the variant.
func (r *relayProc) stop() {
	r.once.Do(func() {
		_ = r.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.done:
		case <-time.After(5 * time.Second):
			_ = r.cmd.Process.Kill()
			<-r.done
		}
		_ = os.RemoveAll(r.bpffs)
	})
}

// openPinnedReadOnly opens the maps a relay pinned in dir for reading its
// counters (the relay is their one writer).
func openPinnedReadOnly(dir string) (*loader.XDP, error) {
	x, err := loader.OpenPinned(dir)
	if err != nil {
		return nil, fmt.Errorf("harness: the xdp relay's pinned maps: %w", err)
	}
	return x, nil
}

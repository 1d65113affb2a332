package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"

	"github.com/hybridrelay/hybridrelay/internal/config"
	"github.com/hybridrelay/hybridrelay/pkg/control"
	"github.com/hybridrelay/hybridrelay/pkg/loader"
)

// xdpPath is the loaded and attached kernel fast path.
type xdpPath struct {
	log *slog.Logger
	x   *loader.XDP
	// offload is x as the control plane's kernel channel table.
	offload control.KernelChannels
	ifaces  []string
	// prefilter is the xdp-prefilter setting.
	prefilter bool
	// keepPinned: on Close leave maps and links pinned (a restart with a
	// state file re-adopts them); otherwise unpin, which detaches.
	keepPinned bool
}

// openXDP loads the relay program (re-adopting maps pinned by a previous
// run), attaches it to the XDP interfaces and lets it redirect between
// them.
func openXDP(log *slog.Logger, s *config.Settings, facts hostFacts) (*xdpPath, error) {
	mode, err := loader.ParseMode(s.XDPMode)
	if err != nil {
		return nil, err
	}
	var names []string
	var idx []int
	for _, f := range facts.XDP {
		ifc, err := net.InterfaceByName(f.Iface)
		if err != nil {
			return nil, fmt.Errorf("xdp interface %s: %w", f.Iface, err)
		}
		names = append(names, f.Iface)
		idx = append(idx, ifc.Index)
	}
	if len(idx) == 0 {
		return nil, errors.New("no interface to attach to; set --xdp-iface")
	}
	_, statErr := os.Stat(s.BPFFS)
	fresh := errors.Is(statErr, os.ErrNotExist)
	x, err := loader.Load(loader.Options{MaxChannels: s.XDPMaxChannels, PinDir: s.BPFFS, Logger: log, Prefilter: s.XDPPrefilter})
	if err != nil {
		return nil, err
	}
	p := &xdpPath{log: log, x: x, ifaces: names, prefilter: s.XDPPrefilter}
	fail := func(err error) (*xdpPath, error) {
		// Pins this run created go; pins a previous run left (re-adopted
		// state) stay for the next attempt.
		p.keepPinned = !fresh
		p.Close()
		return nil, err
	}
	if err := x.Attach(idx, mode); err != nil {
		return fail(err)
	}
	if err := x.SetRedirectIfaces(idx); err != nil {
		return fail(err)
	}
	p.offload = x
	log.Info("xdp attached", "ifaces", names, "mode", string(mode), "pin_dir", x.PinDir(), "max_channels", x.MaxChannels(),
		"readopted_channels", x.Len())
	return p, nil
}

// kernelEgress is the egress (next-hop) table the kernel path forwards
// by, for serve's misconfiguration warnings.
func (p *xdpPath) kernelEgress() egressSource { return loaderEgress{p.x} }

// loaderEgress lists loader.XDP.Egress as egressInfo: Reason is the pass
// counter's name, "" for a usable entry.
type loaderEgress struct{ x *loader.XDP }

func (l loaderEgress) Egress() []egressInfo {
	entries := l.x.Egress()
	out := make([]egressInfo, 0, len(entries))
	for _, e := range entries {
		info := egressInfo{Dst: e.Dst, Src: e.Src, Ifindex: e.Ifindex, Ifname: e.Ifname, Gateway: e.Gateway,
			DstMAC: e.DstMAC, SrcMAC: e.SrcMAC, VLAN: e.VLAN, MTU: e.MTU, Refs: e.Refs}
		if !e.Usable() {
			info.Reason = e.Reason.String()
		}
		out = append(out, info)
	}
	return out
}

// kernelCounters reads the program's counters by name.
func (p *xdpPath) kernelCounters() (map[string]uint64, error) {
	c, err := p.x.Counters()
	if err != nil {
		return nil, err
	}
	return c.Map(), nil
}

// setListeners tells the program the server's UDP listener addresses, which
// the pre-filter guards when xdp-prefilter is on. A wildcard listener
// stands for the host's addresses of its family as they are now (udp4 for
// 0.0.0.0, udp6 only for [::]): an address added later is simply not
// pre-filtered. A failure leaves the pre-filter off, which is safe.
func (p *xdpPath) setListeners(ls []control.ListenerSpec, host []ifaceAddr) {
	addrs := listenerAddrs(ls, host)
	if err := p.x.SetListeners(addrs); err != nil {
		// Entries re-adopted from the previous process may name
		// addresses that are no longer listeners: none is better.
		if cerr := p.x.SetListeners(nil); cerr != nil {
			err = errors.Join(err, cerr)
		}
		p.log.Warn("xdp: listener pre-filter not installed; junk to the listeners reaches userspace", "err", err)
		return
	}
	p.log.Info("xdp listeners", "addrs", addrs, "prefilter", p.prefilter)
}

// listenerAddrs lists the destination addresses of the UDP listeners ls,
// a wildcard listener expanded to the host addresses of its family.
func listenerAddrs(ls []control.ListenerSpec, host []ifaceAddr) []netip.AddrPort {
	var addrs []netip.AddrPort
	seen := map[netip.AddrPort]bool{}
	add := func(a netip.AddrPort) {
		if !seen[a] {
			seen[a] = true
			addrs = append(addrs, a)
		}
	}
	for _, l := range ls {
		if l.Network != "udp" {
			continue
		}
		a := l.Addr.Addr().Unmap()
		if !a.IsUnspecified() {
			add(netip.AddrPortFrom(a, l.Addr.Port()))
			continue
		}
		for _, h := range host {
			if h.Addr.Is4() == a.Is4() {
				add(netip.AddrPortFrom(h.Addr, l.Addr.Port()))
			}
		}
	}
	return addrs
}

// afterStart deletes kernel entries re-adopted from a previous process that
// the restored control plane did not install again.
func (p *xdpPath) afterStart() {
	n, err := p.x.Reconcile()
	if err != nil {
		p.log.Warn("xdp: reconcile re-adopted channels", "err", err)
		return
	}
	if n > 0 {
		p.log.Info("xdp: removed stale re-adopted channels", "removed", n)
	}
}

// Close detaches and unpins (shutdown) or only closes this process's
// handles (restart with a state file: the kernel keeps forwarding bound
// channels until their expiry or the next process takes over).
func (p *xdpPath) Close() error {
	var errs []error
	if !p.keepPinned {
		if err := p.x.Unpin(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := p.x.Close(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("close xdp: %w", errors.Join(errs...))
	}
	return nil
}

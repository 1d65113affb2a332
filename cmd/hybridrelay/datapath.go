package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"

	"github.com/hybridrelay/hybridrelay/internal/config"
	"github.com/hybridrelay/hybridrelay/pkg/control"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// hostFacts is what the host offers the datapaths. probeHost fills it;
// decideDatapath turns it into a choice. `serve --datapath auto` and
// `probe` share both, so probe says exactly what serve would do.
type hostFacts struct {
	Kernel string `json:"kernel"`
	// Root: loading BPF programs and attaching XDP need CAP_BPF and
	// CAP_NET_ADMIN; we require euid 0.
	Root bool `json:"root"`
	// BPF is "" when an XDP program can be loaded, else why not.
	BPF string `json:"bpf,omitempty"`
	// BTF: /sys/kernel/btf/vmlinux exists (CO-RE; not required by our
	// program, reported for operators).
	BTF bool `json:"btf"`
	// BPFFS is "" when the pin directory is on a mounted bpf filesystem (or
	// can be created on one), else why not.
	BPFFS     string `json:"bpffs,omitempty"`
	BPFFSNote string `json:"bpffs_note,omitempty"`
	BPFFSDir  string `json:"bpffs_dir"`
	// XDP is the attach test per interface, in the requested mode.
	XDP []ifaceXDP `json:"xdp"`
	// IfaceReason is set when no interface could be chosen for XDP.
	IfaceReason string `json:"iface_reason,omitempty"`

	UDP dataplane.Features `json:"udp"`

	// The next-hop design: the control plane resolves each destination's
	// egress (interface, MACs, MTU) over rtnetlink and the program
	// rewrites Ethernet headers itself, with no help from IP forwarding.

	// Netlink is "" when rtnetlink link, route and neighbour queries work,
	// else why not.
	Netlink string `json:"netlink,omitempty"`
	// Families are the address families the relay serves (ipv4, ipv6):
	// those of its UDP listener and relay addresses.
	Families []string `json:"families"`
	// Routes has the default route of each family and a real route lookup.
	Routes []routeFact `json:"routes,omitempty"`
	// Addrs places the listener and relay addresses on interfaces.
	Addrs []addrFact `json:"addrs,omitempty"`
	// Forwarding is the IP forwarding sysctls, for information only: the
	// kernel path neither needs nor changes them.
	Forwarding forwardingFact `json:"forwarding"`
}

// routeFact is the default route of one family and what the kernel
// answers to a route lookup (RTM_GETROUTE) in it.
type routeFact struct {
	Family string `json:"family"`
	// Default is the default route in `ip route` words ("" when there is
	// none); DefaultIfaces are its egress interfaces.
	Default       string   `json:"default,omitempty"`
	DefaultIfaces []string `json:"default_ifaces,omitempty"`
	// ViaXDP: the default route leaves through an XDP interface.
	ViaXDP bool `json:"via_xdp"`
	// XDPRoutes are the routes out of XDP interfaces (the only
	// destinations the kernel path can forward to when the default route
	// is not via one).
	XDPRoutes []string `json:"xdp_routes,omitempty"`
	// Lookup is the answer to RTM_GETROUTE for LookupDst (the default
	// gateway, else a relay or listener address); LookupErr when it failed.
	LookupDst string `json:"lookup_dst,omitempty"`
	Lookup    string `json:"lookup,omitempty"`
	LookupErr string `json:"lookup_err,omitempty"`
	// Gateway of the default route, and its neighbour entry.
	Gateway   string `json:"gateway,omitempty"`
	Neighbour string `json:"neighbour,omitempty"`
}

// addrFact is one listener or relay address and the interface holding it.
type addrFact struct {
	Role  string `json:"role"` // listener or relay
	Addr  string `json:"addr"`
	Iface string `json:"iface,omitempty"` // "" when unspecified or on no interface
	OnXDP bool   `json:"on_xdp"`
}

// forwardingFact is net.ipv4.ip_forward and net.ipv6.conf.all.forwarding.
type forwardingFact struct {
	IPv4 string `json:"ipv4"`
	IPv6 string `json:"ipv6"`
	Note string `json:"note"`
}

const forwardingNote = "information only: the kernel path does not need IP forwarding and hybridrelay never changes it"

// probeRequest is what probeHost looks at.
type probeRequest struct {
	Ifaces      []string
	Mode, BPFFS string
	// Addrs are the UDP listener and relay addresses.
	Addrs []roleAddr
}

type roleAddr struct {
	Role string
	Addr netip.Addr
}

// probeRequestFor is the probe serve runs for its settings.
func probeRequestFor(s *config.Settings, cfg control.Config) probeRequest {
	r := probeRequest{Ifaces: xdpIfaces(s, cfg), Mode: s.XDPMode, BPFFS: s.BPFFS}
	for _, l := range cfg.Listeners {
		if l.Network == "udp" {
			r.Addrs = append(r.Addrs, roleAddr{"listener", l.Addr.Addr().Unmap()})
		}
	}
	for _, a := range cfg.RelayIPs {
		r.Addrs = append(r.Addrs, roleAddr{"relay", a.Unmap()})
	}
	return r
}

// families are the address families of the addresses, ipv4 before ipv6.
func (r probeRequest) families() []string {
	var v4, v6 bool
	for _, a := range r.Addrs {
		v4 = v4 || a.Addr.Is4()
		v6 = v6 || a.Addr.Is6()
	}
	var out []string
	if v4 {
		out = append(out, "ipv4")
	}
	if v6 {
		out = append(out, "ipv6")
	}
	return out
}

func familyName(a netip.Addr) string {
	if a.Unmap().Is4() {
		return "ipv4"
	}
	return "ipv6"
}

// ifaceXDP is the result of attaching a trivial XDP_PASS program.
type ifaceXDP struct {
	Iface   string `json:"iface"`
	Native  bool   `json:"native"`
	Generic bool   `json:"generic"`
	// NativeErr / GenericErr say why an attach mode failed ("" when it
	// worked or was not tried).
	NativeErr  string `json:"native_err,omitempty"`
	GenericErr string `json:"generic_err,omitempty"`

	// What forwarding on the interface needs: the program transmits
	// Ethernet frames it rewrote, on a link that is up, towards routes the
	// interface carries.
	Found     bool   `json:"found"`
	OperState string `json:"oper_state,omitempty"`
	Up        bool   `json:"up"`
	LinkType  string `json:"link_type,omitempty"`
	Ethernet  bool   `json:"ethernet"`
	MAC       string `json:"mac,omitempty"`
	MTU       int    `json:"mtu,omitempty"`
	// RouteFamilies are the families (ipv4, ipv6) with a main-table route
	// out of the interface (link-local prefixes aside).
	RouteFamilies []string `json:"route_families,omitempty"`
}

// forwardProblems says why the kernel path cannot forward through x for
// the given families; empty means it can.
func (x ifaceXDP) forwardProblems(families []string) []string {
	if !x.Found {
		return []string{"no such interface"}
	}
	var p []string
	if !x.Up {
		p = append(p, "down (oper state "+x.OperState+")")
	}
	if !x.Ethernet {
		if x.LinkType == "ethernet" {
			p = append(p, "has no MAC address")
		} else {
			p = append(p, "not Ethernet (link type "+x.LinkType+"; the program rewrites Ethernet headers)")
		}
	}
	routed := false
	for _, f := range families {
		routed = routed || slices.Contains(x.RouteFamilies, f)
	}
	if len(families) == 0 {
		routed = len(x.RouteFamilies) > 0
	}
	if !routed {
		p = append(p, "carries no "+familiesText(families)+" route")
	}
	return p
}

func familiesText(families []string) string {
	var parts []string
	for _, f := range families {
		parts = append(parts, map[string]string{"ipv4": "IPv4", "ipv6": "IPv6"}[f])
	}
	if len(parts) == 0 {
		return "IPv4 or IPv6"
	}
	return strings.Join(parts, " or ")
}

// xdpForwardsNothing says why the kernel path, though it would load and
// attach, could forward nothing: no rtnetlink to resolve next hops with, or
// no XDP interface that is up, Ethernet and carries a route of the relay's
// families. "" when some interface can forward.
func (f hostFacts) xdpForwardsNothing() string {
	if f.Netlink != "" {
		return "rtnetlink queries fail, so no next hop can be resolved (" + f.Netlink + ")"
	}
	if len(f.XDP) == 0 {
		return ""
	}
	var why []string
	for _, x := range f.XDP {
		p := x.forwardProblems(f.Families)
		if len(p) == 0 {
			return ""
		}
		why = append(why, x.Iface+" "+strings.Join(p, ", "))
	}
	return "no XDP interface is up, Ethernet and carries an " + familiesText(f.Families) + " route: " + strings.Join(why, "; ")
}

// xdpMissing lists what keeps the xdp datapath from running, for the given
// attach mode (native, generic or auto); empty means it can run.
func (f hostFacts) xdpMissing(mode string) []string {
	var missing []string
	if !f.Root {
		missing = append(missing, "root privileges (CAP_BPF and CAP_NET_ADMIN)")
	}
	if f.BPF != "" {
		missing = append(missing, "BPF program loading ("+f.BPF+")")
	}
	if f.BPFFS != "" {
		missing = append(missing, "a bpf filesystem for pinning ("+f.BPFFS+")")
	}
	if f.IfaceReason != "" {
		missing = append(missing, "an interface to attach to ("+f.IfaceReason+")")
	}
	for _, x := range f.XDP {
		ok := false
		switch mode {
		case "native":
			ok = x.Native
		case "generic":
			ok = x.Generic
		default:
			ok = x.Native || x.Generic
		}
		if !ok {
			why := x.NativeErr
			if mode == "generic" || why == "" {
				why = x.GenericErr
			}
			missing = append(missing, fmt.Sprintf("XDP %s attach on %s (%s)", modeName(mode), x.Iface, why))
		}
	}
	return missing
}

func modeName(mode string) string {
	if mode == "auto" || mode == "" {
		return "native or generic"
	}
	return mode
}

// decideDatapath picks the datapath for the requested name and says why.
// An explicit xdp on a host that lacks something is an error naming what
// is missing.
func decideDatapath(requested, xdpMode string, f hostFacts) (name, reason string, err error) {
	udp := "kernel has UDP_SEGMENT"
	if !f.UDP.UDPSegment {
		udp = "kernel lacks UDP_SEGMENT (" + f.UDP.Reason + "), batching without GSO"
	}
	switch requested {
	case "plain":
		return "plain", "requested with --datapath plain", nil
	case "gso":
		return "gso", "requested with --datapath gso; " + udp, nil
	case "xdp":
		if m := f.xdpMissing(xdpMode); len(m) > 0 {
			return "", "", fmt.Errorf("datapath xdp: this host lacks %s; --datapath gso works without them", strings.Join(m, ", "))
		}
		reason := "requested with --datapath xdp; " + xdpSummary(f, xdpMode)
		if why := f.xdpForwardsNothing(); why != "" {
			// Asked for explicitly: run it (userspace serves everything
			// the kernel passes up), and say so.
			reason += "; the kernel path forwards nothing until this is fixed: " + why
		}
		return "xdp", reason, nil
	case "auto", "":
		m := f.xdpMissing(xdpMode)
		if len(m) == 0 {
			why := f.xdpForwardsNothing()
			if why == "" {
				return "xdp", "auto: " + xdpSummary(f, xdpMode), nil
			}
			if f.UDP.UDPSegment {
				return "gso", "auto: xdp would forward nothing (" + why + "); " + udp, nil
			}
			return "plain", "auto: xdp would forward nothing (" + why + "); kernel lacks UDP_SEGMENT (" + f.UDP.Reason + ")", nil
		}
		if f.UDP.UDPSegment {
			return "gso", "auto: xdp unavailable (missing " + strings.Join(m, ", ") + "); " + udp, nil
		}
		return "plain", "auto: xdp unavailable (missing " + strings.Join(m, ", ") + "); kernel lacks UDP_SEGMENT (" + f.UDP.Reason + ")", nil
	}
	return "", "", fmt.Errorf("datapath %q is not auto, xdp, gso or plain", requested)
}

func xdpSummary(f hostFacts, mode string) string {
	var parts []string
	for _, x := range f.XDP {
		m := "generic"
		if x.Native && mode != "generic" {
			m = "native"
		}
		parts = append(parts, x.Iface+" "+m)
	}
	s := "XDP attaches (" + strings.Join(parts, ", ") + "), BPF and bpffs available"
	for _, x := range f.XDP {
		if p := x.forwardProblems(f.Families); len(p) > 0 {
			s += "; " + x.Iface + " cannot forward (" + strings.Join(p, ", ") + ")"
		}
	}
	return s
}

// datapathSet is what serve runs: the userspace datapath, the kernel
// offload when xdp was chosen, and how to tear them down.
type datapathSet struct {
	name, reason string
	dp           dataplane.Datapath
	offload      control.KernelChannels
	kernel       *xdpPath // nil unless xdp
}

func (d *datapathSet) Close() error {
	var errs []error
	if d.dp != nil {
		if err := d.dp.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close datapath: %w", err))
		}
	}
	if d.kernel != nil {
		if err := d.kernel.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func gsoOptions(log *slog.Logger, s *config.Settings) dataplane.GSOOptions {
	return dataplane.GSOOptions{BatchSize: s.BatchSize, Loops: s.Loops, SocketBuffer: s.SocketBuffer,
		MaxQueueDelay: s.MaxQueueDelay, Logger: log}
}

// openDatapath probes the host (only as far as the request needs), decides,
// logs the choice with its reason, and opens the datapath.
func openDatapath(log *slog.Logger, s *config.Settings, cfg control.Config) (*datapathSet, error) {
	var facts hostFacts
	switch s.Datapath {
	case "plain":
	case "gso":
		facts.UDP = dataplane.DetectFeatures()
	default:
		facts = probeHost(probeRequestFor(s, cfg))
	}
	name, reason, err := decideDatapath(s.Datapath, s.XDPMode, facts)
	if err != nil {
		return nil, err
	}
	if name == "xdp" {
		if why := facts.xdpForwardsNothing(); why != "" {
			log.Warn("the kernel path forwards nothing on this host until fixed; userspace relays everything", "why", why)
		}
	} else if strings.HasPrefix(reason, "auto: xdp would forward nothing") {
		log.Warn("xdp would forward nothing on this host: using the userspace datapath", "datapath", name, "reason", reason)
	}
	set := &datapathSet{name: name, reason: reason}
	switch name {
	case "plain":
		set.dp = dataplane.NewPlain()
	case "gso":
		set.dp, err = dataplane.NewGSO(gsoOptions(log, s))
	case "xdp":
		set.dp, err = dataplane.NewGSO(gsoOptions(log, s))
		if err == nil {
			set.kernel, err = openXDP(log, s, facts)
			if err != nil && s.Datapath == "auto" {
				// The probe passed but the real program did not load or
				// attach: auto still serves, on the userspace path.
				log.Warn("xdp datapath failed to start; falling back to gso", "err", err)
				name, reason, err = "gso", "auto: xdp failed to start ("+err.Error()+"); kernel has UDP_SEGMENT", nil
				set.name, set.reason = name, reason
			} else if err == nil {
				set.offload = set.kernel.offload
			}
		}
	}
	if err != nil {
		set.Close()
		return nil, fmt.Errorf("datapath %s: %w", name, err)
	}
	log.Info("datapath selected", "datapath", name, "reason", reason)
	return set, nil
}

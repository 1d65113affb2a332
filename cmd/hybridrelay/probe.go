package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"
)

func init() {
	register(&cli.Command{
		Name:  "probe",
		Usage: "show what this host supports and which datapath `serve --datapath auto` would pick",
		Description: `Checks BPF program loading, BTF (/sys/kernel/btf/vmlinux), the bpf filesystem
for pins, native and generic XDP attach on each interface (a two-instruction
XDP_PASS program, attached and detached at once), UDP_SEGMENT and UDP_GRO, and
the kernel version; and what the kernel path's next-hop table needs: working
rtnetlink route, neighbour and link queries (a real RTM_GETROUTE per family),
each XDP interface up, Ethernet (the program rewrites Ethernet headers), with
a MAC, its MTU and routes, whether each family's default route leaves through
an XDP interface, and which interfaces hold the listener and relay addresses.
The IP forwarding sysctls are shown for information only: the kernel path
does not need forwarding and hybridrelay never changes it. Then it runs
serve's own datapath decision on the result: auto picks xdp only where the
kernel path can forward (some XDP interface up, Ethernet and carrying a route
of the relay's address families).

Without --iface the interfaces are the ones serve would attach to: those
holding the UDP listener and relay addresses of the configuration (--config,
HYBRIDRELAY_* variables, or the embedded default).`,
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "iface", Usage: "interface `IF` to test XDP on (repeatable)"},
			&cli.StringFlag{Name: "xdp-mode", Value: "auto", Usage: "attach mode to test: native, generic or auto"},
			&cli.StringFlag{Name: "config", Usage: "configuration `FILE` serve would run", EnvVars: []string{"HYBRIDRELAY_CONFIG"}},
			bpffsFlag(),
			jsonFlag(),
		},
		Action: probeAction,
	})
}

// probeReport is probe's --json output.
type probeReport struct {
	hostFacts
	Auto struct {
		Datapath string `json:"datapath"`
		Reason   string `json:"reason"`
	} `json:"auto"`
}

func probeAction(c *cli.Context) error {
	if c.Args().Len() > 0 {
		return usageErrorf("probe takes no arguments (did you mean --iface %s?)", c.Args().First())
	}
	mode := c.String("xdp-mode")
	if mode != "auto" && mode != "native" && mode != "generic" {
		return usageErrorf("--xdp-mode %q: want native, generic or auto", mode)
	}
	req, err := configuredProbe(c.String("config"))
	if err != nil {
		return err
	}
	if ifaces := c.StringSlice("iface"); len(ifaces) > 0 {
		req.Ifaces = ifaces
	}
	req.Mode, req.BPFFS = mode, c.String("bpffs")
	facts := probeHost(req)
	var r probeReport
	r.hostFacts = facts
	name, reason, err := decideDatapath("auto", mode, facts)
	if err != nil {
		return err
	}
	r.Auto.Datapath, r.Auto.Reason = name, reason
	if c.Bool("json") {
		return writeJSON(c.App.Writer, r)
	}
	renderProbe(c.App.Writer, r)
	return nil
}

// configuredProbe is the probe serve would run with the given
// configuration file ("" = the embedded default) and environment: its XDP
// interfaces, listener and relay addresses.
func configuredProbe(path string) (probeRequest, error) {
	src := settingsSource{configPath: path}
	s, _, err := src.load()
	if err != nil {
		return probeRequest{}, err
	}
	cfg := s.Control()
	if len(cfg.RelayIPs) == 0 && anyUnspecified(cfg.Listeners) {
		cfg.RelayIPs, _ = pickRelayIPs(cfg.Listeners, hostAddrs())
	}
	return probeRequestFor(s, cfg), nil
}

func yesNo(ok bool, yes, no string) string {
	if ok {
		if yes == "" {
			return "yes"
		}
		return "yes (" + yes + ")"
	}
	if no == "" {
		return "no"
	}
	return "no: " + no
}

// renderProbe writes the report; a pure function of r (golden-tested).
func renderProbe(w io.Writer, r probeReport) {
	f := r.hostFacts
	line := func(k, v string) { fmt.Fprintf(w, "%-16s %s\n", k, v) }
	line("kernel", f.Kernel)
	line("root", yesNo(f.Root, "", "BPF and XDP need CAP_BPF and CAP_NET_ADMIN"))
	line("BPF", yesNo(f.BPF == "", "an XDP program loads", f.BPF))
	line("BTF", yesNo(f.BTF, "/sys/kernel/btf/vmlinux", "/sys/kernel/btf/vmlinux missing (not needed by hybridrelay's program)"))
	bpffs := yesNo(f.BPFFS == "", f.BPFFSDir, f.BPFFS)
	if f.BPFFSNote != "" {
		bpffs += "; " + f.BPFFSNote
	}
	line("bpffs", bpffs)
	if f.IfaceReason != "" {
		line("XDP", "no interface: "+f.IfaceReason)
	}
	for _, x := range f.XDP {
		var parts []string
		if x.Native || x.NativeErr != "" {
			parts = append(parts, "native "+yesNo(x.Native, "", x.NativeErr))
		}
		if x.Generic || x.GenericErr != "" {
			parts = append(parts, "generic "+yesNo(x.Generic, "", x.GenericErr))
		}
		line("XDP "+x.Iface, strings.Join(parts, ", "))
	}
	for _, x := range f.XDP {
		if !x.Found && f.Netlink == "" {
			continue
		}
		var parts []string
		if x.Up {
			parts = append(parts, "up")
		} else {
			parts = append(parts, "DOWN (oper state "+x.OperState+")")
		}
		if x.Ethernet {
			parts = append(parts, "ethernet "+x.MAC)
		} else {
			parts = append(parts, "link type "+x.LinkType)
		}
		parts = append(parts, fmt.Sprintf("MTU %d", x.MTU))
		if len(x.RouteFamilies) > 0 {
			parts = append(parts, "routes "+strings.Join(x.RouteFamilies, ", "))
		} else {
			parts = append(parts, "no routes")
		}
		v := strings.Join(parts, ", ")
		if p := x.forwardProblems(f.Families); len(p) > 0 {
			v += "; cannot forward: " + strings.Join(p, ", ")
		}
		line("link "+x.Iface, v)
	}
	line("netlink", yesNo(f.Netlink == "", "link, route and neighbour queries", f.Netlink))
	for _, rf := range f.Routes {
		var v string
		switch {
		case rf.Default == "":
			v = "no default route"
		case rf.ViaXDP:
			v = rf.Default + " (an XDP interface)"
		default:
			v = rf.Default + " (not an XDP interface)"
		}
		if !rf.ViaXDP {
			if len(rf.XDPRoutes) > 0 {
				v += "; the kernel path forwards only to destinations routed via XDP interfaces: " + strings.Join(rf.XDPRoutes, ", ")
			} else {
				v += "; no route leaves through an XDP interface, the kernel path forwards nothing of this family"
			}
		}
		line("route "+rf.Family, v)
		if rf.LookupDst != "" {
			res := rf.Lookup
			if rf.LookupErr != "" {
				res = "failed: " + rf.LookupErr
			}
			line("", "route get "+rf.LookupDst+": "+res)
		}
		if rf.Neighbour != "" {
			v := "neighbour " + rf.Gateway + ": " + rf.Neighbour
			if st := strings.Fields(rf.Neighbour)[0]; rf.ViaXDP && (st == "FAILED" || st == "INCOMPLETE") {
				v += " (the gateway does not answer ARP/ND: the kernel path passes its traffic up as no_neigh)"
			}
			line("", v)
		}
	}
	if len(f.Addrs) > 0 {
		var parts []string
		for _, a := range f.Addrs {
			where := "on no interface"
			switch {
			case a.Addr == "0.0.0.0" || a.Addr == "::":
				where = "all interfaces"
			case a.OnXDP:
				where = "on " + a.Iface + " (XDP)"
			case a.Iface != "":
				where = "on " + a.Iface + " (not an XDP interface)"
			}
			parts = append(parts, a.Role+" "+a.Addr+" "+where)
		}
		line("addresses", strings.Join(parts, "; "))
	}
	line("forwarding", fmt.Sprintf("ipv4 %s, ipv6 %s (%s)", f.Forwarding.IPv4, f.Forwarding.IPv6, f.Forwarding.Note))
	line("UDP_SEGMENT", yesNo(f.UDP.UDPSegment, "GSO sends", reasonFor(f.UDP.Reason, "UDP_SEGMENT")))
	line("UDP_GRO", yesNo(f.UDP.UDPGRO, "coalesced receives", reasonFor(f.UDP.Reason, "UDP_GRO")))
	fmt.Fprintln(w)
	fmt.Fprintf(w, "datapath auto would pick: %s\n  because %s\n", r.Auto.Datapath, strings.TrimPrefix(r.Auto.Reason, "auto: "))
}

// reasonFor picks the part of DetectFeatures' reason about one option.
func reasonFor(reason, opt string) string {
	for _, p := range strings.Split(reason, "; ") {
		if strings.HasPrefix(p, opt) {
			return p
		}
	}
	return reason
}

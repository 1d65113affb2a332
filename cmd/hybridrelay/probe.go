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
the kernel version; then runs serve's own datapath decision on the result.

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
	ifaces := c.StringSlice("iface")
	if len(ifaces) == 0 {
		var err error
		if ifaces, err = configuredIfaces(c.String("config")); err != nil {
			return err
		}
	}
	facts := probeHost(ifaces, mode, c.String("bpffs"))
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

// configuredIfaces returns the XDP interfaces serve would use with the
// given configuration file ("" = the embedded default) and environment.
func configuredIfaces(path string) ([]string, error) {
	src := settingsSource{configPath: path}
	s, _, err := src.load()
	if err != nil {
		return nil, err
	}
	cfg := s.Control()
	if len(cfg.RelayIPs) == 0 && anyUnspecified(cfg.Listeners) {
		cfg.RelayIPs, _ = pickRelayIPs(cfg.Listeners, hostAddrs())
	}
	return xdpIfaces(s, cfg), nil
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

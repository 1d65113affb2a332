package main

import (
	"errors"
	"fmt"
	"log/slog"
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
		return "xdp", "requested with --datapath xdp; " + xdpSummary(f, xdpMode), nil
	case "auto", "":
		if m := f.xdpMissing(xdpMode); len(m) == 0 {
			return "xdp", "auto: " + xdpSummary(f, xdpMode), nil
		} else if f.UDP.UDPSegment {
			return "gso", "auto: xdp unavailable (missing " + strings.Join(m, ", ") + "); " + udp, nil
		} else {
			return "plain", "auto: xdp unavailable (missing " + strings.Join(m, ", ") + "); kernel lacks UDP_SEGMENT (" + f.UDP.Reason + ")", nil
		}
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
	return "XDP attaches (" + strings.Join(parts, ", ") + "), BPF and bpffs available"
}

// datapathSet is what serve runs: the userspace datapath, the kernel
// offload when xdp was chosen, and how to tear them down.
type datapathSet struct {
	name, reason string
	dp           dataplane.Datapath
	offload      control.Offload
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
	return dataplane.GSOOptions{BatchSize: s.BatchSize, Loops: s.Loops, SocketBuffer: s.SocketBuffer, Logger: log}
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
		facts = probeHost(xdpIfaces(s, cfg), s.XDPMode, s.BPFFS)
	}
	name, reason, err := decideDatapath(s.Datapath, s.XDPMode, facts)
	if err != nil {
		return nil, err
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

//go:build !linux

package main

import "github.com/hybridrelay/hybridrelay/pkg/dataplane"

// probeHost reports no kernel fast path off Linux: XDP and bpffs are Linux
// features. The UDP offloads are probed (and absent) the same way.
func probeHost(req probeRequest) hostFacts {
	f := hostFacts{UDP: dataplane.DetectFeatures(), BPFFSDir: req.BPFFS, Families: req.families()}
	f.Kernel = f.UDP.Kernel
	f.BPF = "XDP needs Linux"
	f.BPFFS = "bpffs needs Linux"
	f.Netlink = "rtnetlink needs Linux"
	f.Forwarding = forwardingFact{IPv4: "unknown", IPv6: "unknown", Note: forwardingNote}
	for _, name := range req.Ifaces {
		f.XDP = append(f.XDP, ifaceXDP{Iface: name, NativeErr: "XDP needs Linux", GenericErr: "XDP needs Linux"})
	}
	if len(req.Ifaces) == 0 {
		f.IfaceReason = "XDP needs Linux"
	}
	return f
}

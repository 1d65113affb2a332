//go:build !linux

package main

import "github.com/hybridrelay/hybridrelay/pkg/dataplane"

// probeHost reports no kernel fast path off Linux: XDP and bpffs are Linux
// features. The UDP offloads are probed (and absent) the same way.
func probeHost(ifaces []string, mode, bpffs string) hostFacts {
	f := hostFacts{UDP: dataplane.DetectFeatures(), BPFFSDir: bpffs}
	f.Kernel = f.UDP.Kernel
	f.BPF = "XDP needs Linux"
	f.BPFFS = "bpffs needs Linux"
	for _, name := range ifaces {
		f.XDP = append(f.XDP, ifaceXDP{Iface: name, NativeErr: "XDP needs Linux", GenericErr: "XDP needs Linux"})
	}
	if len(ifaces) == 0 {
		f.IfaceReason = "XDP needs Linux"
	}
	return f
}

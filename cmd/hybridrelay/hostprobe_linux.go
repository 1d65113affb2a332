//go:build linux

package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/hybridrelay/hybridrelay/internal/xdppass"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// probeHost finds out what the host offers: it loads a two-instruction
// XDP_PASS program and attaches it to each interface in the requested mode
// (then detaches it at once), checks the pin directory's filesystem, BTF,
// the UDP offloads, and what the next-hop table needs: rtnetlink link,
// route and neighbour queries, each XDP interface's link, the default
// routes, and where the listener and relay addresses are. Nothing is left
// behind and nothing is changed (the forwarding sysctls are only read).
func probeHost(req probeRequest) hostFacts {
	f := hostFacts{UDP: dataplane.DetectFeatures(), BPFFSDir: req.BPFFS, Families: req.families()}
	f.Kernel = f.UDP.Kernel
	f.Root = os.Geteuid() == 0
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err == nil {
		f.BTF = true
	}
	f.BPFFS, f.BPFFSNote = checkBPFFS(req.BPFFS)

	prog, err := passProgram()
	if err != nil {
		f.BPF = err.Error()
	} else {
		defer prog.Close()
	}
	if len(req.Ifaces) == 0 {
		f.IfaceReason = "no up, non-loopback interface holds a UDP listener or relay address; name one with --xdp-iface"
	}
	for _, name := range req.Ifaces {
		f.XDP = append(f.XDP, probeXDP(prog, name, req.Mode, req.BPFFS))
	}
	probeEgress(&f, req)
	f.Forwarding = forwardingFact{
		IPv4: readSysctl("/proc/sys/net/ipv4/ip_forward"),
		IPv6: readSysctl("/proc/sys/net/ipv6/conf/all/forwarding"),
		Note: forwardingNote,
	}
	return f
}

// probeEgress fills in the links of the XDP interfaces, the routes and
// the address placement from rtnetlink.
func probeEgress(f *hostFacts, req probeRequest) {
	links, err := nlLinks()
	if err != nil {
		f.Netlink = err.Error()
		return
	}
	byIndex := map[int]nlLink{}
	byName := map[string]nlLink{}
	for _, l := range links {
		byIndex[l.Index], byName[l.Name] = l, l
	}
	xdpIdx := map[int]bool{}
	for i := range f.XDP {
		x := &f.XDP[i]
		l, ok := byName[x.Iface]
		if !ok {
			continue
		}
		xdpIdx[l.Index] = true
		x.Found, x.Up, x.Ethernet = true, l.Up(), l.Ethernet()
		x.OperState, x.LinkType, x.MTU = l.OperStateName(), linkTypeName(l.Encap), l.MTU
		if len(l.MAC) > 0 && l.Encap == "ether" {
			x.MAC = l.MAC.String()
		}
	}
	ifname := func(i int) string {
		if l, ok := byIndex[i]; ok {
			return l.Name
		}
		return fmt.Sprintf("ifindex %d", i)
	}
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		famName := map[int]string{unix.AF_INET: "ipv4", unix.AF_INET6: "ipv6"}[fam]
		routes, err := nlRoutes(fam)
		if err != nil {
			f.Netlink = err.Error()
			return
		}
		neighs, err := nlNeighs(fam)
		if err != nil {
			f.Netlink = err.Error()
			return
		}
		rf := routeFact{Family: famName}
		var gw netip.Addr
		gwIf := 0
		for _, r := range routes {
			if r.Table != unix.RT_TABLE_MAIN || r.Type != unix.RTN_UNICAST {
				continue
			}
			if r.Dst.Bits() == 0 && rf.Default == "" {
				rf.Default = describeRoute(r, ifname)
				for _, o := range r.Oifs {
					rf.DefaultIfaces = append(rf.DefaultIfaces, ifname(o))
					rf.ViaXDP = rf.ViaXDP || xdpIdx[o]
				}
				if r.Gateway.IsValid() {
					gw = r.Gateway
					if len(r.Oifs) > 0 {
						gwIf = r.Oifs[0]
					}
				}
			}
			if a := r.Dst.Addr(); a.IsLinkLocalUnicast() || a.IsMulticast() {
				continue
			}
			for _, o := range r.Oifs {
				if !xdpIdx[o] {
					continue
				}
				rf.XDPRoutes = append(rf.XDPRoutes, r.Dst.String()+" dev "+ifname(o))
				for i := range f.XDP {
					if f.XDP[i].Found && byName[f.XDP[i].Iface].Index == o && !slices.Contains(f.XDP[i].RouteFamilies, famName) {
						f.XDP[i].RouteFamilies = append(f.XDP[i].RouteFamilies, famName)
					}
				}
			}
		}
		// A real lookup, as the control plane does for every destination:
		// the default gateway, else an address the relay serves.
		dst := gw
		if !dst.IsValid() {
			for _, a := range req.Addrs {
				if familyName(a.Addr) == famName && !a.Addr.IsUnspecified() {
					dst = a.Addr
					break
				}
			}
		}
		if dst.IsValid() {
			rf.LookupDst = dst.String()
			r, err := nlRouteGet(dst)
			switch {
			case err == nil:
				rf.Lookup = describeRoute(r, ifname)
			case errors.Is(err, errNoRoute):
				rf.Lookup = err.Error()
			default:
				rf.LookupErr = err.Error()
				f.Netlink = err.Error()
			}
		}
		if gw.IsValid() {
			rf.Gateway = gw.String()
			rf.Neighbour = "not in the neighbour table yet (resolved on first use)"
			for _, n := range neighs {
				if n.Dst == gw && (gwIf == 0 || n.Ifindex == gwIf) {
					rf.Neighbour = neighStateName(n.State)
					if len(n.MAC) > 0 {
						rf.Neighbour += " " + n.MAC.String()
					}
					break
				}
			}
		}
		f.Routes = append(f.Routes, rf)
	}
	host := hostAddrs()
	for _, a := range req.Addrs {
		af := addrFact{Role: a.Role, Addr: a.Addr.String()}
		for _, h := range host {
			if h.Addr == a.Addr {
				af.Iface = h.Iface
				af.OnXDP = xdpIdx[h.Index]
				break
			}
		}
		f.Addrs = append(f.Addrs, af)
	}
}

// describeRoute renders a route as `ip route` does, roughly.
func describeRoute(r nlRoute, ifname func(int) string) string {
	s := r.Dst.String()
	if r.Dst.Bits() == 0 {
		s = "default"
	}
	switch r.Type {
	case unix.RTN_LOCAL:
		s = "local " + s
	case unix.RTN_UNICAST:
	default:
		s = fmt.Sprintf("type %d %s", r.Type, s)
	}
	if r.Gateway.IsValid() {
		s += " via " + r.Gateway.String()
	}
	for _, o := range r.Oifs {
		s += " dev " + ifname(o)
	}
	if r.PrefSrc.IsValid() {
		s += " src " + r.PrefSrc.String()
	}
	return s
}

// passProgram loads `r0 = XDP_PASS; exit`.
func passProgram() (*ebpf.Program, error) {
	return xdppass.Load("hr_probe")
}

func probeXDP(prog *ebpf.Program, name, mode, bpffs string) ifaceXDP {
	r := ifaceXDP{Iface: name}
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		r.NativeErr, r.GenericErr = "no such interface", "no such interface"
		return r
	}
	if prog == nil {
		r.NativeErr, r.GenericErr = "BPF unavailable", "BPF unavailable"
		return r
	}
	try := func(flags link.XDPAttachFlags) (bool, string) {
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifc.Index, Flags: flags})
		if err != nil {
			if errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST) {
				// pkg/loader pins each interface's link as link_<ifindex>;
				// a previous hybridrelay's link is replaced atomically at
				// start, so it counts as working.
				if _, err := os.Stat(filepath.Join(bpffs, fmt.Sprintf("link_%d", ifc.Index))); err == nil {
					return true, ""
				}
				return false, "another XDP program is attached to " + name
			}
			if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
				return false, "driver does not support this mode"
			}
			return false, err.Error()
		}
		l.Close()
		return true, ""
	}
	if mode != "generic" {
		r.Native, r.NativeErr = try(link.XDPDriverMode)
	}
	if mode != "native" {
		r.Generic, r.GenericErr = try(link.XDPGenericMode)
	}
	return r
}

// checkBPFFS returns "" when dir is, or can be created, on a bpf
// filesystem: the nearest existing ancestor must be one. The conventional
// mount point /sys/fs/bpf with nothing mounted on it also passes, with a
// note: the loader mounts a bpffs there, as bpftool does.
func checkBPFFS(dir string) (problem, note string) {
	d := filepath.Clean(dir)
	for {
		var st unix.Statfs_t
		err := unix.Statfs(d, &st)
		if err == nil {
			if st.Type == unix.BPF_FS_MAGIC {
				return "", ""
			}
			if d == "/sys/fs/bpf" {
				return "", "no bpffs mounted on /sys/fs/bpf yet; serve mounts one there"
			}
			return fmt.Sprintf("%s is not on a bpf filesystem; mount one with `mount -t bpf bpf %s`", d, d), ""
		}
		if !errors.Is(err, syscall.ENOENT) {
			return fmt.Sprintf("statfs %s: %v", d, err), ""
		}
		parent := filepath.Dir(d)
		if parent == d {
			return fmt.Sprintf("%s does not exist", dir), ""
		}
		d = parent
	}
}

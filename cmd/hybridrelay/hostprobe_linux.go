//go:build linux

package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// probeHost finds out what the host offers: it loads a two-instruction
// XDP_PASS program and attaches it to each interface in the requested mode
// (then detaches it at once), checks the pin directory's filesystem, BTF,
// and the UDP offloads. Nothing is left behind.
func probeHost(ifaces []string, mode, bpffs string) hostFacts {
	f := hostFacts{UDP: dataplane.DetectFeatures(), BPFFSDir: bpffs}
	f.Kernel = f.UDP.Kernel
	f.Root = os.Geteuid() == 0
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err == nil {
		f.BTF = true
	}
	f.BPFFS, f.BPFFSNote = checkBPFFS(bpffs)

	prog, err := passProgram()
	if err != nil {
		f.BPF = err.Error()
	} else {
		defer prog.Close()
	}
	if len(ifaces) == 0 {
		f.IfaceReason = "no up, non-loopback interface holds a UDP listener or relay address; name one with --xdp-iface"
	}
	for _, name := range ifaces {
		f.XDP = append(f.XDP, probeXDP(prog, name, mode, bpffs))
	}
	return f
}

// passProgram loads `r0 = XDP_PASS; exit`.
func passProgram() (*ebpf.Program, error) {
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
	_ = rlimit.RemoveMemlock()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "hr_probe",
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()},
	})
	if err != nil {
		return nil, fmt.Errorf("load XDP program: %w", err)
	}
	return prog, nil
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

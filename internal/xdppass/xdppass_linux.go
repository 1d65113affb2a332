package xdppass

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/rlimit"
)

// xdpPass is XDP_PASS of enum xdp_action (include/uapi/linux/bpf.h).
const xdpPass = 2

// Load loads the program under name (the kernel keeps the first 15
// bytes; "" leaves it unnamed). The caller closes it; links made from it
// hold their own reference.
func Load(name string) (*ebpf.Program, error) {
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
	_ = rlimit.RemoveMemlock()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         name,
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, xdpPass), asm.Return()},
	})
	if err != nil {
		return nil, fmt.Errorf("load xdp_pass program: %w", err)
	}
	return prog, nil
}

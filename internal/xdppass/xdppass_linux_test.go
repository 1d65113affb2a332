package xdppass

import (
	"testing"

	"github.com/cilium/ebpf"

	"github.com/hybridrelay/hybridrelay/internal/privtest"
)

// TestLoadPasses runs the program on a frame with BPF_PROG_RUN: it must
// return XDP_PASS and leave the frame as it was.
func TestLoadPasses(t *testing.T) {
	privtest.Need(t)
	prog, err := Load("hr_test_pass")
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	in := make([]byte, 64)
	for i := range in {
		in[i] = byte(i)
	}
	out := make([]byte, len(in))
	ret, err := prog.Run(&ebpf.RunOptions{Data: in, DataOut: out})
	if err != nil {
		t.Fatal(err)
	}
	if ret != xdpPass {
		t.Errorf("returned %d, want XDP_PASS (%d)", ret, xdpPass)
	}
	for i := range in {
		if out[i] != in[i] {
			t.Fatalf("frame changed at byte %d", i)
		}
	}
}

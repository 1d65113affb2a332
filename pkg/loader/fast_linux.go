package loader

import (
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// mapFastTable maps one fast table (BPF_F_MMAPABLE) read-write.
func mapFastTable(m *ebpf.Map, stride, valOff int, sets uint32, seed uint64) (*fastTable, error) {
	n := int(m.MaxEntries())
	if n != int(sets)*fastWays || int(m.ValueSize()) != stride {
		return nil, fmt.Errorf("map fast table %s: %d ways of %d bytes, want %d of %d", m.String(), n, m.ValueSize(),
			int(sets)*fastWays, stride)
	}
	page := os.Getpagesize()
	size := (n*stride + page - 1) / page * page
	mem, err := unix.Mmap(m.FD(), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map fast table: %w", err)
	}
	return &fastTable{mem: mem, stride: stride, valOff: valOff, sets: sets, seed: seed,
		ways: map[[fastKeyLen]byte]uint32{}, state: make([]fastWayState, n), pending: map[[fastKeyLen]byte][]byte{}}, nil
}

func (t *fastTable) unmap() {
	if t != nil && t.mem != nil {
		_ = unix.Munmap(t.mem)
		t.mem = nil
	}
}

package loader

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// mapMeters maps the meters array (BPF_F_MMAPABLE) read-write, so that
// Meter.Allow and the program update the same words.
func (x *XDP) mapMeters() error {
	size := int(x.objs.Meters.MaxEntries()) * meterSize
	page := os.Getpagesize()
	size = (size + page - 1) / page * page
	mem, err := unix.Mmap(x.objs.Meters.FD(), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map bandwidth meters: %w", err)
	}
	x.meters.mem = mem
	x.meters.init(int(x.objs.Meters.MaxEntries()))
	return nil
}

func (x *XDP) unmapMeters() {
	if x.meters.mem != nil {
		_ = unix.Munmap(x.meters.mem)
		x.meters.mem = nil
	}
}

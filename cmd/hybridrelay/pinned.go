package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/hybridrelay/hybridrelay/pkg/loader"
)

// errNoPins means the pin directory holds no hybridrelay maps.
var errNoPins = errors.New("no pinned hybridrelay maps")

// openPinned re-adopts the maps a daemon pinned in dir, for reading, while
// that daemon may be running or gone. It loads the program without
// attaching it (that is how pkg/loader opens pinned maps: the sizes must
// match, so they are read from the pinned channel map first) and never
// writes an entry. The caller Closes it; Close keeps the pins.
func openPinned(dir string) (*loader.XDP, error) {
	// "c2p_channels" is the client->peer channel map's name in
	// bpf/maps.h; pkg/loader pins every map by name.
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "c2p_channels"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w in %s", errNoPins, dir)
		}
		return nil, fmt.Errorf("open pinned maps in %s: %w", dir, err)
	}
	size := int(m.MaxEntries())
	m.Close()
	x, err := loader.Load(loader.Options{MaxChannels: size, PinDir: dir, ReadOnly: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return nil, fmt.Errorf("open pinned maps in %s: %w", dir, err)
	}
	return x, nil
}

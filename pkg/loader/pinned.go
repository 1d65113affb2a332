package loader

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// ErrNoPins means a pin directory holds no hybridrelay maps.
var ErrNoPins = errors.New("no pinned hybridrelay maps")

// OpenPinned opens the maps a daemon pinned in dir, read-only, while that
// daemon may be running or gone (the CLI's `stats` and `maps dump`): the
// map sizes are taken from the pinned channel map, nothing is written
// (docs/design.md, Kernel-path invariants, 2: one writer per map), and
// Close keeps the pins. A directory without the maps is ErrNoPins.
func OpenPinned(dir string) (*XDP, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, relayMapC2pChannels), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w in %s", ErrNoPins, dir)
		}
		return nil, fmt.Errorf("open pinned maps in %s: %w", dir, err)
	}
	size := int(m.MaxEntries())
	m.Close()
	x, err := Load(Options{MaxChannels: size, PinDir: dir, ReadOnly: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return nil, fmt.Errorf("open pinned maps in %s: %w", dir, err)
	}
	return x, nil
}

package main

import (
	"errors"
	"log/slog"

	"github.com/hybridrelay/hybridrelay/internal/config"
	"github.com/hybridrelay/hybridrelay/pkg/control"
)

// xdpPath is the loaded and attached kernel fast path.
type xdpPath struct {
	offload control.Offload
}

func (x *xdpPath) Close() error { return nil }

// openXDP is replaced when pkg/loader lands (helper D).
func openXDP(log *slog.Logger, s *config.Settings, cfg control.Config, f hostFacts) (*xdpPath, error) {
	return nil, errors.New("kernel fast path not wired yet")
}

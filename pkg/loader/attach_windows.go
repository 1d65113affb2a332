//go:build windows

package loader

import (
	"errors"
	"fmt"
)

// Mode is how the program is attached.
type Mode string

const (
	ModeNative  Mode = "native"
	ModeGeneric Mode = "generic"
	ModeAuto    Mode = "auto"
)

var errNoXDP = errors.New("xdp is not available on this system")

// ParseMode accepts native, generic, auto ("" is auto).
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case ModeNative, ModeGeneric, ModeAuto:
		return Mode(s), nil
	case "":
		return ModeAuto, nil
	}
	return "", fmt.Errorf("xdp mode %q: want native, generic or auto", s)
}

type xdpLink interface {
	Close() error
	Unpin() error
}

func (x *XDP) Attach([]int, Mode) error { return fmt.Errorf("attach xdp: %w", errNoXDP) }
func (x *XDP) Detach(int) error         { return fmt.Errorf("detach xdp: %w", errNoXDP) }
func (x *XDP) Attached() []int          { return nil }
func (x *XDP) AttachPass(int, Mode) (interface{ Close() error }, error) {
	return nil, fmt.Errorf("attach xdp: %w", errNoXDP)
}

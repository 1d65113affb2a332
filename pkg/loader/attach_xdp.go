//go:build !windows

package loader

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Mode is how the program is attached.
type Mode string

const (
	// ModeNative attaches in the driver (XDP_FLAGS_DRV_MODE).
	ModeNative Mode = "native"
	// ModeGeneric attaches after the stack allocated the skb (slow, works
	// on every device).
	ModeGeneric Mode = "generic"
	// ModeAuto tries native and falls back to generic with a warning.
	ModeAuto Mode = "auto"
)

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

type xdpLink = link.Link

// Attach attaches the relay program to each interface (ifindexes resolved
// in the calling thread's network namespace) with a bpf_link pinned under
// the pin directory. An interface whose link is already pinned there (a
// previous process) gets its program replaced atomically instead, so the
// kernel path never stops during a restart.
func (x *XDP) Attach(ifindexes []int, mode Mode) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed {
		return fmt.Errorf("attach xdp: %w", os.ErrClosed)
	}
	for _, idx := range ifindexes {
		if _, ok := x.links[idx]; ok {
			continue
		}
		if x.pinDir != "" {
			if l, err := link.LoadPinnedLink(x.linkPin(idx), nil); err == nil {
				if err := l.Update(x.objs.Hybridrelay); err != nil {
					l.Close()
					return fmt.Errorf("attach xdp on ifindex %d: replace program of pinned link: %w", idx, err)
				}
				x.links[idx] = l
				continue
			} else if !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("attach xdp on ifindex %d: load pinned link: %w", idx, err)
			}
		}
		l, err := attach(x.objs.Hybridrelay, idx, mode, x)
		if err != nil {
			return err
		}
		if x.pinDir != "" {
			if err := l.Pin(x.linkPin(idx)); err != nil {
				l.Close()
				return fmt.Errorf("attach xdp on ifindex %d: pin link: %w", idx, err)
			}
		}
		x.links[idx] = l
	}
	return nil
}

func attach(prog *ebpf.Program, idx int, mode Mode, x *XDP) (link.Link, error) {
	switch mode {
	case ModeNative, ModeGeneric:
		flags := link.XDPDriverMode
		if mode == ModeGeneric {
			flags = link.XDPGenericMode
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: idx, Flags: flags})
		if err != nil {
			return nil, fmt.Errorf("attach xdp (%s) on ifindex %d: %w", mode, idx, err)
		}
		return l, nil
	case ModeAuto, "":
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: idx, Flags: link.XDPDriverMode})
		if err == nil {
			return l, nil
		}
		l, gerr := link.AttachXDP(link.XDPOptions{Program: prog, Interface: idx, Flags: link.XDPGenericMode})
		if gerr != nil {
			return nil, fmt.Errorf("attach xdp on ifindex %d: native: %v; generic: %w", idx, err, gerr)
		}
		x.log.Warn("xdp: native mode unavailable, attached in generic mode (slower)", "ifindex", idx, "err", err)
		return l, nil
	}
	return nil, fmt.Errorf("attach xdp on ifindex %d: unknown mode %q", idx, mode)
}

// Detach removes the relay program from an interface (and its pin).
func (x *XDP) Detach(ifindex int) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	l, ok := x.links[ifindex]
	if !ok {
		if x.pinDir == "" {
			return nil
		}
		pl, err := link.LoadPinnedLink(x.linkPin(ifindex), nil)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("detach xdp from ifindex %d: %w", ifindex, err)
		}
		l = pl
	}
	delete(x.links, ifindex)
	if x.pinDir != "" {
		_ = l.Unpin()
	}
	if err := l.Close(); err != nil {
		return fmt.Errorf("detach xdp from ifindex %d: %w", ifindex, err)
	}
	return nil
}

// Attached lists the ifindexes this process holds links for.
func (x *XDP) Attached() []int {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make([]int, 0, len(x.links))
	for i := range x.links {
		out = append(out, i)
	}
	return out
}

// AttachPass attaches the XDP_PASS-only program to ifindex (in the calling
// thread's namespace), unpinned: it stays until the returned closer is
// closed or the process exits. Use it on the far end of veth pairs the
// relay program transmits into.
func (x *XDP) AttachPass(ifindex int, mode Mode) (interface{ Close() error }, error) {
	return attach(x.objs.PassAll, ifindex, mode, x)
}

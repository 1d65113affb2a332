package xdpe2e

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/pkg/loader"
	"golang.org/x/sys/unix"
)

// Options configure Attach.
type Options struct {
	// MaxChannels sizes the maps (0: loader default).
	MaxChannels int
	// Mode is the attach mode of the relay program (default native).
	Mode loader.Mode
	// PinDir pins there; "" makes a private bpffs mount in a temporary
	// directory, removed by Close.
	PinDir string
}

// Path is the XDP program attached to a topology.
type Path struct {
	// X is the loaded program; Restart replaces it.
	X *loader.XDP

	topo                *netns.Topology
	opts                Options
	pinDir, mnt         string
	relayCli, relayPeer int
	passes              []interface{ Close() error }
}

var mountSeq atomic.Uint32

// Attach loads the program and attaches it to topo (see the package doc).
// On error everything made so far is undone.
func Attach(topo *netns.Topology, opts Options) (p *Path, err error) {
	if opts.Mode == "" {
		opts.Mode = loader.ModeNative
	}
	p = &Path{topo: topo, opts: opts, pinDir: opts.PinDir}
	defer func() {
		if err != nil {
			p.Close()
			p = nil
		}
	}()
	if p.pinDir == "" {
		p.mnt = filepath.Join(os.TempDir(), fmt.Sprintf("hrxdp-%d-%d", os.Getpid(), mountSeq.Add(1)))
		if err := os.MkdirAll(p.mnt, 0o700); err != nil {
			return p, fmt.Errorf("xdp path: %w", err)
		}
		if err := unix.Mount("bpf", p.mnt, "bpf", 0, "mode=0700"); err != nil {
			os.Remove(p.mnt)
			p.mnt = ""
			return p, fmt.Errorf("xdp path: mount bpffs: %w", err)
		}
		p.pinDir = filepath.Join(p.mnt, "hybridrelay")
	}
	if p.relayCli, err = ifindex(topo.Relay, topo.RelayClientIf); err != nil {
		return p, fmt.Errorf("xdp path: %w", err)
	}
	if p.relayPeer, err = ifindex(topo.Relay, topo.RelayPeerIf); err != nil {
		return p, fmt.Errorf("xdp path: %w", err)
	}
	if err := p.load(); err != nil {
		return p, err
	}
	for _, end := range []struct {
		ns *netns.NS
		If string
	}{{topo.Client, topo.ClientIf}, {topo.Peer, topo.PeerIf}} {
		idx, err := ifindex(end.ns, end.If)
		if err != nil {
			return p, fmt.Errorf("xdp path: %w", err)
		}
		err = end.ns.Do(func() error {
			c, err := p.X.AttachPass(idx, loader.ModeNative)
			if err == nil {
				p.passes = append(p.passes, c)
			}
			return err
		})
		if err != nil {
			return p, fmt.Errorf("xdp path: pass program on %s/%s: %w", end.ns.Name, end.If, err)
		}
	}
	return p, nil
}

// load loads (re-adopting pins), attaches in the relay namespace and sets
// the devmap.
func (p *Path) load() error {
	x, err := loader.Load(loader.Options{MaxChannels: p.opts.MaxChannels, PinDir: p.pinDir, NetNS: "/run/netns/" + p.topo.Relay.Name})
	if err != nil {
		return fmt.Errorf("xdp path: %w", err)
	}
	err = p.topo.Relay.Do(func() error {
		if err := x.Attach([]int{p.relayCli, p.relayPeer}, p.opts.Mode); err != nil {
			return err
		}
		// The devmap resolves ifindexes in the caller's namespace.
		return x.SetRedirectIfaces([]int{p.relayCli, p.relayPeer})
	})
	if err != nil {
		x.Unpin()
		x.Close()
		return fmt.Errorf("xdp path: %w", err)
	}
	p.X = x
	return nil
}

// Offload is the kernel channel table of the current program, for
// control.Options.Offload (it implements control.KernelChannels).
func (p *Path) Offload() *loader.XDP { return p.X }

// Restart does what a restarting daemon does: close this process's
// handles without unpinning (the program keeps forwarding), then load
// again, re-adopting the pinned maps and link. Offload() afterwards is the
// new one.
func (p *Path) Restart() error {
	if err := p.X.Close(); err != nil {
		return fmt.Errorf("xdp path restart: %w", err)
	}
	return p.load()
}

// Close detaches everything, removes the pins and the private mount.
func (p *Path) Close() error {
	var errs []error
	for _, c := range p.passes {
		if err := c.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	p.passes = nil
	if p.X != nil {
		if err := p.X.Unpin(); err != nil {
			errs = append(errs, err)
		}
		if err := p.X.Close(); err != nil {
			errs = append(errs, err)
		}
		p.X = nil
	}
	if p.mnt != "" {
		if err := unix.Unmount(p.mnt, unix.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p.mnt, err))
		}
		os.Remove(p.mnt)
		p.mnt = ""
	}
	return errors.Join(errs...)
}

// ifindex asks the namespace's own kernel view (netlink) for name.
// netns.(*NS).Ifindex reads /sys first, which is the root namespace's
// sysfs: for a name that also exists there (eth0) it answers with the root
// namespace's index.
func ifindex(ns *netns.NS, name string) (int, error) {
	var idx int
	err := ns.Do(func() error {
		ifc, err := net.InterfaceByName(name)
		if err != nil {
			return err
		}
		idx = ifc.Index
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("interface %s in %s: %w", name, ns.Name, err)
	}
	return idx, nil
}

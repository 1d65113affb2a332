package turntest

import (
	"net/netip"

	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// nsDatapath opens every socket of a datapath inside a namespace: the
// server's goroutines run on threads of the root namespace, but a socket
// keeps the namespace it was made in.
type nsDatapath struct {
	dataplane.Datapath
	ns *netns.NS
}

// InNamespace wraps dp so that Listen and OpenRelay make their sockets in
// ns.
func InNamespace(dp dataplane.Datapath, ns *netns.NS) dataplane.Datapath {
	return &nsDatapath{Datapath: dp, ns: ns}
}

func (d *nsDatapath) Listen(addr netip.AddrPort, h dataplane.Handler) (c dataplane.Conn, err error) {
	if derr := d.ns.Do(func() error { c, err = d.Datapath.Listen(addr, h); return nil }); derr != nil {
		return nil, derr
	}
	return c, err
}

func (d *nsDatapath) OpenRelay(addr netip.AddrPort, h dataplane.Handler) (c dataplane.Conn, err error) {
	if derr := d.ns.Do(func() error { c, err = d.Datapath.OpenRelay(addr, h); return nil }); derr != nil {
		return nil, derr
	}
	return c, err
}

//go:build !linux

package loader

import (
	"errors"
	"log/slog"
	"net/netip"
)

// noResolver stands in where there is no rtnetlink: every destination
// passes (the kernel path needs Linux anyway).
type noResolver struct{}

func newHostResolver(string, *slog.Logger, func(int) bool) (hostResolver, error) {
	return noResolver{}, nil
}

var errNoNetlink = errors.New("egress resolution needs Linux rtnetlink")

func (noResolver) route(netip.Addr, netip.Addr) route {
	return route{reason: PassNoNextHop, detail: errNoNetlink.Error()}
}
func (noResolver) neighbour(route, netip.Addr) neighbour      { return neighbour{} }
func (noResolver) watch(_ *egressTable, done <-chan struct{}) { <-done }
func (noResolver) setVLAN(int, int, uint16)                   {}
func (noResolver) isVLAN(int) bool                            { return false }
func (noResolver) close()                                     {}

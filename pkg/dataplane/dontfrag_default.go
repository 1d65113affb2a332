//go:build !linux

package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
)

// setDontFragment off Linux: the IPv4 DF policy needs Linux's
// IP_MTU_DISCOVER. Off leaves the system's default (best effort); on fails
// with errors.ErrUnsupported for IPv4, so the control plane treats
// DONT-FRAGMENT as unsupported (RFC 8656 section 7.2, step 4). IPv6 has no
// DF: always nil.
func setDontFragment(_ syscall.RawConn, local netip.AddrPort, on bool) error {
	if !on || !local.Addr().Unmap().Is4() {
		return nil
	}
	return fmt.Errorf("set dont-fragment: %w", errors.ErrUnsupported)
}

package dataplane

import (
	"fmt"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// setDontFragment applies the DF policy of Conn.SetDontFragment to the
// socket behind rc (the family comes from getsockname; local, the bound
// address, only when the socket is already closed). IPv4: IP_PMTUDISC_DO sets DF on every datagram and refuses
// (EMSGSIZE) one above the path MTU (ip_sk_ignore_df is false, so
// __ip_append_data caps the datagram at the MTU); IP_PMTUDISC_DONT never
// sets DF and lets the kernel fragment (ip_dont_fragment is false). Both
// hold for a UDP_SEGMENT super-packet as a whole, so every segment gets the
// same DF bit, unlike IP_PMTUDISC_WANT, which decides on the super-packet's
// length (__ip_make_skb). On an AF_INET6 socket the option only governs
// IPv4-mapped destinations of a dual-stack socket: it is set best effort
// and never fails (IPv6 has no DF).
func setDontFragment(rc syscall.RawConn, local netip.AddrPort, on bool) error {
	v := unix.IP_PMTUDISC_DONT
	if on {
		v = unix.IP_PMTUDISC_DO
	}
	v4 := local.Addr().Is4()
	var serr error
	err := rc.Control(func(fd uintptr) {
		if sa, err := unix.Getsockname(int(fd)); err == nil {
			_, v4 = sa.(*unix.SockaddrInet4)
		}
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, v)
	})
	if !v4 {
		return nil
	}
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("set IP_MTU_DISCOVER %d: %w", v, err)
	}
	return nil
}

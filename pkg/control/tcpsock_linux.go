package control

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// tcpReuseControl sets SO_REUSEADDR and SO_REUSEPORT on a TCP relay socket
// (listener and outgoing connections alike): Linux lets a socket bind the
// address of a listening socket only when both have SO_REUSEPORT, and an
// outgoing connection of a TCP allocation must leave from its relayed
// transport address (RFC 6062 section 5.2).
func tcpReuseControl(_, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr != nil {
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

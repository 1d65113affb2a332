//go:build linux

package admin

import (
	"io/fs"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// allowed checks the connecting process's credentials (SO_PEERCRED, taken
// by the kernel at connect time): root or the daemon's own user.
func (s *Server) allowed(c *net.UnixConn) bool {
	raw, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		s.log.Warn("admin socket: cannot read peer credentials; refusing", "err", err, "cred_err", cerr)
		return false
	}
	if cred.Uid == 0 || int(cred.Uid) == s.uid {
		return true
	}
	s.log.Warn("admin socket: refusing connection from another user", "uid", cred.Uid, "pid", cred.Pid)
	return false
}

func fileOwner(st fs.FileInfo) (int, bool) {
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return int(sys.Uid), true
	}
	return 0, false
}

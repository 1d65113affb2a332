//go:build !linux

package control

import (
	"fmt"
	"runtime"
	"syscall"
)

// tcpReuseControl: TCP relay allocations need SO_REUSEPORT semantics that
// this package only implements on Linux; elsewhere opening a TCP relay
// fails and Allocate for TCP answers 508.
func tcpReuseControl(_, _ string, _ syscall.RawConn) error {
	return fmt.Errorf("tcp relay allocations are not supported on %s", runtime.GOOS)
}

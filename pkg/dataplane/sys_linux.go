package dataplane

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// DetectFeatures probes the running kernel by setting UDP_SEGMENT and
// UDP_GRO on a throwaway UDP socket; nothing is sent.
func DetectFeatures() Features {
	var f Features
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		f.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	}
	if err != nil {
		f.Reason = fmt.Sprintf("probe socket: %v", err)
		return f
	}
	defer unix.Close(fd)
	var why []string
	if err := unix.SetsockoptInt(fd, unix.SOL_UDP, unix.UDP_SEGMENT, 1200); err != nil {
		why = append(why, fmt.Sprintf("UDP_SEGMENT: %v (needs Linux 4.18)", err))
	} else {
		f.UDPSegment = true
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_UDP, unix.UDP_GRO, 1); err != nil {
		why = append(why, fmt.Sprintf("UDP_GRO: %v (needs Linux 5.0)", err))
	} else {
		f.UDPGRO = true
	}
	f.Reason = strings.Join(why, "; ")
	return f
}

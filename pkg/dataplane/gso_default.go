//go:build !linux

package dataplane

import (
	"errors"
	"runtime"
)

// NewGSO fails off Linux: the gso datapath is built on recvmmsg, sendmmsg,
// UDP_SEGMENT and UDP_GRO. The plain datapath works everywhere.
func NewGSO(GSOOptions) (Datapath, error) {
	return nil, errors.New("gso datapath: needs Linux (recvmmsg, sendmmsg, UDP_SEGMENT); use the plain datapath")
}

// DetectFeatures reports no UDP offloads off Linux.
func DetectFeatures() Features {
	return Features{Kernel: runtime.GOOS, Reason: "UDP_SEGMENT and UDP_GRO are Linux socket options"}
}

//go:build !linux

package loader

import "errors"

func ensureBPFFS(string) error { return errors.New("bpffs pinning needs Linux") }

//go:build !linux

package loader

import (
	"errors"

	"github.com/cilium/ebpf"
)

func mapFastTable(*ebpf.Map, int, int, uint32, uint64) (*fastTable, error) {
	return nil, errors.New("map fast table: needs Linux")
}

func (t *fastTable) unmap() {}

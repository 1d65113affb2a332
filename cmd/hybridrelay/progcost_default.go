//go:build !linux

package main

import (
	"errors"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/bench"
)

func measureProgCost(uint32, time.Duration) (bench.ProgCost, error) {
	return bench.ProgCost{}, errors.New("program cost: needs Linux BPF statistics")
}

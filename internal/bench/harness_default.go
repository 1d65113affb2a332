//go:build !linux

package bench

import (
	"context"
	"errors"
)

// Compare needs Linux network namespaces.
func Compare(ctx context.Context, opts Options) (*Report, error) {
	return nil, errors.New("compare needs Linux (network namespaces, veth, /proc)")
}

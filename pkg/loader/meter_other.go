//go:build !linux

package loader

import "errors"

func (x *XDP) mapMeters() error { return errors.New("map bandwidth meters: needs Linux") }

func (x *XDP) unmapMeters() {}

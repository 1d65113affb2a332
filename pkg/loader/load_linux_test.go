package loader

import (
	"testing"

	"github.com/hybridrelay/hybridrelay/internal/privtest"
)

func TestLoadVerifies(t *testing.T) {
	privtest.Need(t)
	x, err := Load(Options{DisablePin: true, MaxChannels: 16})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	defer x.Close()
}

package bench

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// Options configure the netns harness.
type Options struct {
	// RelayBinary is the hybridrelay executable to run as the relay. Empty:
	// `go build ./cmd/hybridrelay` into a temporary directory (needs the
	// module source; compare passes its own executable instead).
	RelayBinary string
	// ModuleDir is where to build from when RelayBinary is empty (default:
	// found with `go env GOMOD`).
	ModuleDir string
	// Datapaths to compare against direct and routed (which always run
	// first in each repeat), in alternation order.
	Datapaths []string
	Cases     []Case
	Duration  time.Duration // measurement window per run
	Warmup    time.Duration // load before the window opens
	Repeats   int
	// ExtraServeArgs are appended to every `serve` command line.
	ExtraServeArgs []string
	// Progress receives a line per run (nil: discarded).
	Progress io.Writer
	// RelayLog receives the relays' stderr (nil: kept only for errors).
	RelayLog io.Writer
}

func (o *Options) defaults() error {
	if o.Duration <= 0 {
		o.Duration = 5 * time.Second
	}
	if o.Warmup < 0 {
		o.Warmup = 0
	} else if o.Warmup == 0 {
		o.Warmup = time.Second
	}
	if o.Repeats <= 0 {
		o.Repeats = 3
	}
	if len(o.Datapaths) == 0 {
		o.Datapaths = []string{"xdp", "gso", "plain"}
	}
	for _, d := range o.Datapaths {
		switch d {
		case "xdp", "gso", "plain", "auto":
		case VariantDirect, VariantRouted:
			return fmt.Errorf("harness: %q always runs; list only datapaths", d)
		default:
			return fmt.Errorf("harness: unknown datapath %q (xdp, gso, plain, auto)", d)
		}
	}
	if len(o.Cases) == 0 {
		return fmt.Errorf("harness: no cases")
	}
	for i, c := range o.Cases {
		if c.Flows < 1 || c.Size < PayloadHeaderSize || c.Size > 1400 {
			return fmt.Errorf("harness: case %q: flows %d, size %d (flows >= 1, size %d-1400)", c.Name, c.Flows, c.Size, PayloadHeaderSize)
		}
		if c.Direction != ClientToPeer && c.Direction != PeerToClient {
			return fmt.Errorf("harness: case %q: direction %q", c.Name, c.Direction)
		}
		if c.Name == "" {
			o.Cases[i].Name = fmt.Sprintf("case%d", i+1)
		}
	}
	return nil
}

// StandardCases are the cases of docs/design.md's benchmark method: one-flow
// floods of 120 and 1200 bytes in both directions and both families, and
// the many-flow WebRTC-like case (flows allocations at 50 pps, 1000 B) in
// both directions.
func StandardCases(manyFlows int) []Case {
	var cs []Case
	for _, v6 := range []bool{false, true} {
		for _, size := range []int{120, 1200} {
			for _, dir := range []string{ClientToPeer, PeerToClient} {
				fam := "v4"
				if v6 {
					fam = "v6"
				}
				cs = append(cs, Case{Name: fmt.Sprintf("flood-%d-%s-%s", size, shortDir(dir), fam), Flows: 1, Size: size, Direction: dir, IPv6: v6})
			}
		}
	}
	for _, dir := range []string{ClientToPeer, PeerToClient} {
		cs = append(cs, Case{Name: fmt.Sprintf("flows%d-50pps-1000-%s-v4", manyFlows, shortDir(dir)), Flows: manyFlows, Size: 1000, Rate: 50, Direction: dir})
	}
	return cs
}

func shortDir(d string) string {
	if d == PeerToClient {
		return "p2c"
	}
	return "c2p"
}

// tail keeps the last n bytes written to it (the end of a relay's log, for
// the reason a variant is unavailable).
type tail struct {
	n   int
	buf []byte
	w   io.Writer
}

func (t *tail) Write(p []byte) (int, error) {
	if t.w != nil {
		_, _ = t.w.Write(p)
	}
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.n {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.n:]...)
	}
	return len(p), nil
}

func (t *tail) String() string { return strings.TrimSpace(string(t.buf)) }

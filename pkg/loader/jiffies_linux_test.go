package loader

import (
	"testing"
	"time"
)

// TestJiffiesExpiryNeverLate: an expiry converted to jiffies is reached by
// the kernel's jiffies (read by the same probe the program's clock is) no
// later than the expiry on CLOCK_MONOTONIC, and not absurdly early.
func TestJiffiesExpiryNeverLate(t *testing.T) {
	e := newProgEnv(t, 16)
	c := e.x.clock
	t.Logf("tick %v", time.Duration(c.tick))
	for i := 0; i < 20; i++ {
		k0, _, err := c.sample()
		if err != nil {
			t.Fatal(err)
		}
		T := k0 + uint64(i)*uint64(3*time.Millisecond)
		E, err := c.expiry(T)
		if err != nil {
			t.Fatal(err)
		}
		for {
			k, j, err := c.sample()
			if err != nil {
				t.Fatal(err)
			}
			if k < T {
				continue
			}
			if j < E {
				t.Fatalf("at %d ns (expiry %d) jiffies are %d, the stored expiry %d is not reached", k, T, j, E)
			}
			// Early by the lag bound, one tick, the drift allowance
			// and the floors, not more.
			if early := int64(j) - int64(E); E != 0 && early > int64((coarseLag+2*c.tick)/c.tick)+3 {
				t.Fatalf("stored expiry %d is %d jiffies early", E, early)
			}
			break
		}
	}
	k, _, _ := c.sample()
	E, err := c.expiry(k - uint64(time.Second))
	_, j, _ := c.sample()
	if err != nil || E > j {
		t.Fatalf("a past expiry converts to %d (%v), after the jiffies %d", E, err, j)
	}
	if E, _ := c.expiry(0); E != 0 {
		t.Fatal("no expiry must be 0")
	}
}

// TestProgramStopsAtExpiry: a channel installed to expire shortly is
// forwarded by the program only by runs that started before its expiry,
// and passed (expired) soon after it.
func TestProgramStopsAtExpiry(t *testing.T) {
	e := newProgEnv(t, 16)
	ch := chV4
	ch.Expires = time.Now().Add(150 * time.Millisecond)
	if err := e.x.PutChannel(ch); err != nil {
		t.Fatal(err)
	}
	in := c2pIn(ch, seq(20), nil, nil)
	forwards := 0
	for {
		start := time.Now()
		ret, _, err := e.run(e.x.Program(), append([]byte(nil), in...), e.rc0)
		if err != nil {
			t.Fatal(err)
		}
		if ret == xdpRedirect {
			if !start.Before(ch.Expires) {
				t.Fatalf("forwarded by a run started %v after the expiry", start.Sub(ch.Expires))
			}
			forwards++
		} else if ret == xdpPass {
			if late := start.Sub(ch.Expires); late > 0 {
				t.Logf("first pass %v after the expiry", late)
			} else {
				t.Logf("stopped %v before the expiry", -late)
				if -late > 100*time.Millisecond {
					t.Fatalf("stopped %v early", -late)
				}
			}
			break
		} else {
			t.Fatalf("return %d", ret)
		}
		if time.Since(ch.Expires) > time.Second {
			t.Fatal("still forwarding a second after the expiry")
		}
		time.Sleep(time.Millisecond)
	}
	if forwards == 0 {
		t.Fatal("never forwarded before the expiry")
	}
}

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hybridrelay/hybridrelay/internal/admin"
)

func init() {
	register(&cli.Command{
		Name:  "drain",
		Usage: "stop taking new allocations (send them to alternate servers); --undo resumes",
		Description: `Tells the running daemon, over its admin socket, to drain: new Allocate
requests are answered 300 Try Alternate with an ALTERNATE-SERVER from the
alternate-server setting (or 486 without one), while existing allocations keep
being refreshed and relayed until they end. /readyz turns false. SIGUSR1 to
serve does the same. --undo ends draining.

--wait DURATION then waits until no allocation is left or DURATION has
passed, printing the allocations left; either way it exits 0, so a preStop
hook or a rolling-update script can go on to stop the daemon (with
state-file, the allocations still left survive the restart).`,
		Flags: []cli.Flag{
			adminSocketFlag(),
			&cli.BoolFlag{Name: "undo", Usage: "end draining: accept new allocations again"},
			&cli.DurationFlag{Name: "wait", Usage: "after draining, wait up to DURATION for the allocations to end (0: do not wait)"},
			&cli.BoolFlag{Name: "json", Usage: "print the daemon's answer as JSON"},
		},
		Action: drainAction,
	})
}

// drainPoll is how often --wait asks for the allocations left.
const drainPoll = time.Second

func drainAction(c *cli.Context) error {
	if c.Args().Len() > 0 {
		return usageErrorf("drain takes no arguments, got %q", c.Args().First())
	}
	undo, wait := c.Bool("undo"), c.Duration("wait")
	if undo && wait > 0 {
		return usageErrorf("--wait applies to draining, not to --undo")
	}
	if wait < 0 {
		return usageErrorf("--wait %s is negative", wait)
	}
	cl, err := admin.Dial(c.String("admin-socket"))
	if err != nil {
		return err
	}
	defer cl.Close()
	cmd := "drain"
	if undo {
		cmd = "undrain"
	}
	var ds admin.DrainStatus
	if err := cl.Call(cmd, &ds); err != nil {
		return err
	}
	if c.Bool("json") {
		if err := json.NewEncoder(c.App.Writer).Encode(ds); err != nil {
			return err
		}
	} else {
		renderDrain(c.App.Writer, ds, time.Now())
	}
	if wait == 0 {
		return nil
	}
	left, err := waitDrained(cl, wait, drainPoll, func(n int) {
		if !c.Bool("json") {
			fmt.Fprintf(c.App.Writer, "%d allocations left\n", n)
		}
	})
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return json.NewEncoder(c.App.Writer).Encode(map[string]int{"allocations_left": left})
	}
	if left == 0 {
		fmt.Fprintln(c.App.Writer, "drained: no allocation left")
	} else {
		fmt.Fprintf(c.App.Writer, "waited %s: %d allocations left (they keep running; with state-file a restart keeps them)\n", wait, left)
	}
	return nil
}

// waitDrained polls the daemon until it has no allocation or wait has
// passed, calling progress with each count, and returns the last count.
func waitDrained(cl *admin.Client, wait, poll time.Duration, progress func(int)) (int, error) {
	deadline := time.Now().Add(wait)
	last := -1
	for {
		var s admin.Snapshot
		if err := cl.Call("stats", &s); err != nil {
			return 0, err
		}
		if s.Server == nil {
			return 0, fmt.Errorf("drain: the daemon sent no server stats")
		}
		n := s.Server.Allocations
		if n != last {
			progress(n)
			last = n
		}
		if n == 0 || !time.Now().Before(deadline) {
			return n, nil
		}
		time.Sleep(min(poll, time.Until(deadline)))
	}
}

func renderDrain(w io.Writer, ds admin.DrainStatus, now time.Time) {
	if !ds.Draining {
		if ds.Changed {
			fmt.Fprintf(w, "drain ended: accepting new allocations (%d live)\n", ds.Allocations)
		} else {
			fmt.Fprintf(w, "not draining: accepting new allocations (%d live)\n", ds.Allocations)
		}
		return
	}
	verb := "draining"
	if !ds.Changed {
		verb = "already draining"
	}
	since := ""
	if ds.Since != nil {
		since = fmt.Sprintf(" since %s", ds.Since.UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(w, "%s%s: %d allocations left; new clients %s\n", verb, since, ds.Allocations, drainTarget(ds.AlternateServers))
}

// drainTarget says where new clients go while draining.
func drainTarget[T fmt.Stringer](alts []T) string {
	if len(alts) == 0 {
		return "get 486 (no alternate-server configured)"
	}
	s := make([]string, len(alts))
	for i, a := range alts {
		s[i] = a.String()
	}
	return "are sent to " + strings.Join(s, ", ") + " (300 Try Alternate)"
}

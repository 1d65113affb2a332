package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

func TestCommandsUnique(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range commands {
		for _, n := range append([]string{c.Name}, c.Aliases...) {
			if seen[n] {
				t.Errorf("command name %q registered twice", n)
			}
			seen[n] = true
		}
	}
}

// TestRunExitCodes runs the application in-process with test commands to
// check the mapping of errors and panics to exit codes.
func TestRunExitCodes(t *testing.T) {
	register(&cli.Command{Name: "test-panic", Hidden: true, Action: func(*cli.Context) error { panic("boom") }})
	register(&cli.Command{Name: "test-runtime", Hidden: true, Action: func(*cli.Context) error { return errors.New("disk on fire") }})
	register(&cli.Command{Name: "test-usage", Hidden: true, Action: func(*cli.Context) error { return usageErrorf("bad %s", "input") }})
	register(&cli.Command{Name: "test-exit", Hidden: true, Action: func(*cli.Context) error { return cli.Exit("custom", 7) }})
	register(&cli.Command{Name: "test-ok", Hidden: true, Action: func(*cli.Context) error { return nil }})
	t.Cleanup(func() {
		commandsMu.Lock()
		defer commandsMu.Unlock()
		var keep []*cli.Command
		for _, c := range commands {
			if !strings.HasPrefix(c.Name, "test-") {
				keep = append(keep, c)
			}
		}
		commands = keep
	})
	tests := []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"test-ok"}, 0, ""},
		{[]string{"test-panic"}, 1, "hybridrelay: internal error: boom"},
		{[]string{"test-runtime"}, 1, "hybridrelay: disk on fire"},
		{[]string{"test-usage"}, 2, "hybridrelay: bad input"},
		{[]string{"test-exit"}, 7, "hybridrelay: custom"},
		{[]string{"test-ok", "--nope"}, 2, "flag provided but not defined: -nope"},
		{[]string{"no-such-command"}, 2, "No help topic for 'no-such-command'"},
	}
	for _, tt := range tests {
		var out, errb bytes.Buffer
		code := run(append([]string{"hybridrelay"}, tt.args...), &out, &errb)
		if code != tt.code || !strings.Contains(errb.String(), tt.msg) {
			t.Errorf("%v: exit %d stderr %q; want %d and %q", tt.args, code, errb.String(), tt.code, tt.msg)
		}
		if strings.Contains(errb.String(), "goroutine ") {
			t.Errorf("%v: stack trace printed", tt.args)
		}
	}
}

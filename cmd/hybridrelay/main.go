package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sort"
	"strings"
	"sync"

	"github.com/urfave/cli/v2"
)

// Exit codes. A runtime failure exits 1; a usage or configuration error
// (bad flag, bad config file, invalid value) exits 2 so scripts can tell
// "you asked for something wrong" from "it broke".
const (
	exitRuntime = 1
	exitUsage   = 2
)

var (
	commandsMu sync.Mutex
	commands   []*cli.Command
)

// register adds a subcommand to the hybridrelay application. Subcommand files
// call it from init(); a duplicate name is a programming error caught by
// TestCommandsUnique.
func register(c *cli.Command) {
	commandsMu.Lock()
	defer commandsMu.Unlock()
	commands = append(commands, c)
}

// usageError marks an error as the operator's (exit code 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// usageErrorf returns a usage/config error (exit code 2).
func usageErrorf(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// asUsage marks err as a usage/config error; nil stays nil.
func asUsage(err error) error {
	if err == nil {
		return nil
	}
	var u usageError
	if errors.As(err, &u) {
		return err
	}
	return usageError{err}
}

func init() {
	// Configuration flags get their own help format; every other flag keeps
	// urfave/cli's.
	base := cli.FlagStringer
	cli.FlagStringer = func(f cli.Flag) string {
		if s, ok := settingFlagString(f); ok {
			return s
		}
		return base(f)
	}
}

// newApp builds the application with every registered command. It is a
// function (not a global) so tests can run several apps in one process.
func newApp(stdout, stderr io.Writer) *cli.App {
	commandsMu.Lock()
	cmds := make([]*cli.Command, len(commands))
	copy(cmds, commands)
	commandsMu.Unlock()
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].Name < cmds[j].Name })
	for _, c := range cmds {
		setUsageHandler(c)
	}
	app := &cli.App{
		Name:     "hybridrelay",
		Usage:    "eBPF-assisted TURN relay (RFC 8656) and its operator tools",
		Version:  version(),
		Commands: cmds,
		// The commands decide; the app itself only prints help.
		Writer:    stdout,
		ErrWriter: stderr,
		// Do not let urfave/cli call os.Exit: run() maps errors to codes.
		ExitErrHandler:         func(*cli.Context, error) {},
		OnUsageError:           onUsageError,
		UseShortOptionHandling: false,
		HideVersion:            false,
		Suggest:                true,
	}
	return app
}

func setUsageHandler(c *cli.Command) {
	if c.OnUsageError == nil {
		c.OnUsageError = onUsageError
	}
	for _, sub := range c.Subcommands {
		setUsageHandler(sub)
	}
}

func onUsageError(_ *cli.Context, err error, _ bool) error {
	return usageError{err}
}

// run executes the application and returns the process exit code. Every
// error is printed once, as "hybridrelay: <error>"; a panic in a command is
// turned into an internal error with exit code 1 instead of a stack trace.
func run(args []string, stdout, stderr io.Writer) (code int) {
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(stderr, "hybridrelay: internal error: %v\n", r)
			if os.Getenv("HYBRIDRELAY_DEBUG") != "" {
				fmt.Fprintf(stderr, "%s\n", debug.Stack())
			}
			code = exitRuntime
		}
	}()
	err := newApp(stdout, stderr).Run(args)
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "hybridrelay: %v\n", err)
	var u usageError
	if errors.As(err, &u) {
		return exitUsage
	}
	if isCLIUsage(err) {
		return exitUsage
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) && ec.ExitCode() != 0 {
		return ec.ExitCode()
	}
	return exitRuntime
}

// isCLIUsage recognises the errors urfave/cli returns for an unknown command
// or a missing required flag, which do not go through OnUsageError.
func isCLIUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"Required flag", "flag provided but not defined", "No help topic for"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/urfave/cli/v2"

	"github.com/hybridrelay/hybridrelay/pkg/loader"
)

// Set at link time by builds that know better than the module system (the
// Dockerfile, release scripts):
//
//	go build -ldflags "-X main.buildVersion=v1.2.3 -X main.buildCommit=abc123"
//
// Empty: taken from the build information the Go toolchain embeds (the
// module version, and the VCS revision when built inside a git checkout).
var (
	buildVersion string
	buildCommit  string
)

// versionInfo is what `hybridrelay version` reports.
type versionInfo struct {
	Version string `json:"version"`
	Commit  string `json:"commit"`
	// CommitTime is the commit's date (vcs.time), when known.
	CommitTime string `json:"commit_time,omitempty"`
	// Modified: built from a work tree with uncommitted changes.
	Modified  bool   `json:"modified,omitempty"`
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"`
	// BPFObjectSHA256 identifies the embedded XDP program.
	BPFObjectSHA256 string `json:"bpf_object_sha256"`
	BPFObjectSize   int    `json:"bpf_object_size"`
}

func init() {
	register(&cli.Command{
		Name:  "version",
		Usage: "print version, commit, Go version and the embedded BPF object's hash",
		Description: `Prints what this binary is: its version, the commit it was built from, the
Go toolchain, and the SHA-256 of the embedded XDP object (two binaries with
the same hash load the same kernel program). --version prints the same.`,
		Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print a JSON object"}},
		Action: func(c *cli.Context) error {
			if c.Args().Len() > 0 {
				return usageErrorf("version takes no arguments")
			}
			v := currentVersion()
			if c.Bool("json") {
				enc := json.NewEncoder(c.App.Writer)
				enc.SetIndent("", "  ")
				return enc.Encode(v)
			}
			v.render(c.App.Writer)
			return nil
		},
	})
	cli.VersionPrinter = func(c *cli.Context) { currentVersion().render(c.App.Writer) }
}

// version is the short version string (the app's Version).
func version() string { return currentVersion().Version }

func currentVersion() versionInfo {
	v := versionInfo{Version: "(devel)", Commit: "unknown", GoVersion: runtime.Version(),
		Platform: runtime.GOOS + "/" + runtime.GOARCH, BPFObjectSHA256: loader.ObjectSHA256(), BPFObjectSize: loader.ObjectSize()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			v.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				v.Commit = s.Value
			case "vcs.time":
				v.CommitTime = s.Value
			case "vcs.modified":
				v.Modified = s.Value == "true"
			}
		}
	}
	if buildVersion != "" {
		v.Version = buildVersion
	}
	if buildCommit != "" {
		v.Commit = buildCommit
	}
	return v
}

func (v versionInfo) render(w io.Writer) {
	commit := v.Commit
	if v.Modified {
		commit += " (modified)"
	}
	if v.CommitTime != "" {
		commit += " " + v.CommitTime
	}
	fmt.Fprintf(w, "hybridrelay %s\n", v.Version)
	fmt.Fprintf(w, "commit      %s\n", commit)
	fmt.Fprintf(w, "go          %s %s\n", v.GoVersion, v.Platform)
	fmt.Fprintf(w, "bpf object  sha256:%s (%d bytes)\n", v.BPFObjectSHA256, v.BPFObjectSize)
}

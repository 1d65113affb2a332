package main

import (
	"encoding/json"
	"runtime"
	"strings"
	"testing"

	"github.com/hybridrelay/hybridrelay/pkg/loader"
)

// TestVersion: `version --json` and `--version` report the same build, the
// Go toolchain that built it and the hash of the BPF object it embeds.
func TestVersion(t *testing.T) {
	out, stderr, code := runBinary(t, nil, "version", "--json")
	var v versionInfo
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil {
		t.Fatalf("version --json: exit %d %s\n%s", code, stderr, out)
	}
	if v.GoVersion != runtime.Version() || v.BPFObjectSHA256 != loader.ObjectSHA256() || v.BPFObjectSize != loader.ObjectSize() ||
		v.Version == "" || v.Commit == "" || v.Platform != runtime.GOOS+"/"+runtime.GOARCH {
		t.Errorf("version --json: %+v", v)
	}
	text, _, code := runBinary(t, nil, "--version")
	if code != 0 {
		t.Fatalf("--version: exit %d", code)
	}
	for _, want := range []string{"hybridrelay " + v.Version + "\n", "go          " + v.GoVersion, "bpf object  sha256:" + v.BPFObjectSHA256} {
		if !strings.Contains(text, want) {
			t.Errorf("--version lacks %q:\n%s", want, text)
		}
	}
	if same, _, _ := runBinary(t, nil, "version"); same != text {
		t.Errorf("version and --version differ:\n%s\n%s", same, text)
	}
	if _, _, code := runBinary(t, nil, "version", "extra"); code != 2 {
		t.Errorf("version extra: exit %d, want 2", code)
	}
}

package privtest

import (
	"os"
	"os/exec"
	"testing"
)

// Required reports whether privileged tests must run (HYBRIDRELAY_REQUIRE_PRIV=1).
func Required() bool { return os.Getenv("HYBRIDRELAY_REQUIRE_PRIV") == "1" }

// Need skips (or fails, see Required) t unless the process runs as root and
// every named binary is on PATH.
func Need(t testing.TB, binaries ...string) {
	t.Helper()
	missing := func(why string) {
		t.Helper()
		if Required() {
			t.Fatalf("privileged test cannot run: %s (HYBRIDRELAY_REQUIRE_PRIV=1)", why)
		}
		t.Skipf("skipping privileged test: %s", why)
	}
	if os.Geteuid() != 0 {
		missing("not running as root")
	}
	for _, b := range binaries {
		if _, err := exec.LookPath(b); err != nil {
			missing(b + " not found on PATH")
		}
	}
}

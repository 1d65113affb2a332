package interop

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"

	"github.com/hybridrelay/hybridrelay/pkg/control"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// serverHelperEnv, when set, turns the test binary into a relay server
// process instead of running tests. The netns tests start it inside the
// relay namespace (`ip netns exec`): an in-process server cannot live in
// another namespace, because its relay sockets are opened by whichever
// goroutine handles an Allocate. The value is a JSON control.Config.
const serverHelperEnv = "HYBRIDRELAY_INTEROP_SERVER_CONFIG"

func TestMain(m *testing.M) {
	if cfg := os.Getenv(serverHelperEnv); cfg != "" {
		os.Exit(runServerHelper(cfg, os.Stdin, os.Stdout))
	}
	os.Exit(m.Run())
}

// helperReady is the first line the helper prints: the bound listeners.
type helperReady struct {
	Addrs []control.ListenerSpec `json:"addrs"`
}

// runServerHelper runs a server until stdin reaches EOF (the parent closed
// it or died), then prints the server's final ServerStats as one JSON
// line and exits. Logs go to stderr.
func runServerHelper(cfgJSON string, stdin io.Reader, stdout io.Writer) int {
	var cfg control.Config
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		fmt.Fprintf(os.Stderr, "server helper: config: %v\n", err)
		return 2
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := control.NewServer(cfg, control.Options{Datapath: dataplane.NewPlain(), Logger: logger})
	if err != nil {
		fmt.Fprintf(os.Stderr, "server helper: %v\n", err)
		return 1
	}
	if err := srv.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "server helper: %v\n", err)
		return 1
	}
	enc := json.NewEncoder(stdout)
	if err := enc.Encode(helperReady{Addrs: srv.Addrs()}); err != nil {
		_ = srv.Close()
		return 1
	}
	_, _ = io.Copy(io.Discard, bufio.NewReader(stdin))
	stats := srv.Stats()
	if err := srv.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "server helper: close: %v\n", err)
	}
	if err := enc.Encode(stats); err != nil {
		return 1
	}
	return 0
}

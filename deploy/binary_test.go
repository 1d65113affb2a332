package deploy

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// repoRoot is the module root, one directory up.
const repoRoot = ".."

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
	buildDir  string
)

// TestMain removes the binary built for the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// staticBinary builds the binary the Dockerfile ships, with the same
// command (`make static`, CGO_ENABLED=0), once per test run.
func staticBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "hybridrelay-static-")
		if buildErr != nil {
			return
		}
		// make static writes bin/hybridrelay-static in the repository;
		// build into the temporary directory instead with the same
		// recipe, taken from the Makefile by make -n.
		out, err := exec.Command("make", "-s", "-n", "-C", repoRoot, "static").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("make -n static: %v\n%s", err, out)
			return
		}
		recipe := strings.TrimSpace(string(out))
		if !strings.Contains(recipe, "CGO_ENABLED=0") || !strings.Contains(recipe, "-o bin/hybridrelay-static ./cmd/hybridrelay") {
			buildErr = fmt.Errorf("make static no longer builds a CGO_ENABLED=0 bin/hybridrelay-static: %s", recipe)
			return
		}
		builtBin = filepath.Join(buildDir, "hybridrelay")
		recipe = strings.Replace(recipe, "-o bin/hybridrelay-static", "-o "+builtBin, 1)
		cmd := exec.Command("sh", "-c", recipe)
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("%s: %v\n%s", recipe, err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

// TestStaticBinary is the image's build check: the Dockerfile builds with
// `make static`; the result is a statically linked ELF (no interpreter, no
// shared libraries, so it runs on distroless/static or scratch) and runs
// --version, reporting the embedded BPF object's hash.
func TestStaticBinary(t *testing.T) {
	df, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"RUN make static", "COPY --from=build /src/bin/hybridrelay-static " + binaryInImage, "FROM gcr.io/distroless/static"} {
		if !bytes.Contains(df, []byte(want)) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	bin := staticBinary(t)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("the binary has an ELF interpreter: it is dynamically linked")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %v", libs)
	}
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("--version: %v\n%s", err, out)
	}
	for _, want := range []string{"hybridrelay ", "\ncommit ", "\ngo          go1.", "\nbpf object  sha256:"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("--version lacks %q:\n%s", want, out)
		}
	}
}

// binaryInImage is where the Dockerfile puts the binary; the DaemonSet's
// preStop hook runs it from there.
const binaryInImage = "/usr/local/bin/hybridrelay"

// daemon is the static binary serving on loopback.
type daemon struct {
	cmd     *exec.Cmd
	stderr  *bytes.Buffer
	mu      sync.Mutex
	metrics string // host:port
	sock    string
	get     func(ctx context.Context, url string) (int, string)
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (d *daemon) log() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stderr.String()
}

// freePort is a TCP port free on 127.0.0.1 (also tried for UDP).
func freePort(t *testing.T) int {
	t.Helper()
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp4", fmt.Sprintf("127.0.0.1:%d", port))
		l.Close()
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// startServe runs `serve --config conf` with env (and no other HYBRIDRELAY_
// variables) until the metrics endpoint answers; it is stopped at cleanup.
func startServe(t *testing.T, conf string, env []string, metricsAddr, sock string, args ...string) *daemon {
	t.Helper()
	cmd := exec.Command(staticBinary(t), append([]string{"serve", "--config", conf}, args...)...)
	return runServe(t, cmd, env, metricsAddr, sock, func(ctx context.Context, url string) (int, string) { return httpGet(ctx, url) })
}

// runServe starts cmd (serve, directly or through `ip netns exec`) and
// waits until get answers on the metrics endpoint.
func runServe(t *testing.T, cmd *exec.Cmd, env []string, metricsAddr, sock string, get func(context.Context, string) (int, string)) *daemon {
	t.Helper()
	d := &daemon{cmd: cmd, stderr: &bytes.Buffer{}, metrics: metricsAddr, sock: sock, get: get}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HYBRIDRELAY_") {
			d.cmd.Env = append(d.cmd.Env, kv)
		}
	}
	d.cmd.Env = append(d.cmd.Env, env...)
	d.cmd.Stderr = lockedWriter{&d.mu, d.stderr}
	d.cmd.Stdout = io.Discard
	d.cmd.WaitDelay = 5 * time.Second
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { d.cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		d.cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			d.cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("serve stderr:\n%s", d.log())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if code, _ := get(context.Background(), "http://"+metricsAddr+"/"); code == 200 {
			return d
		}
		select {
		case <-done:
			t.Fatalf("serve exited: %s", d.log())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve's metrics endpoint did not answer within 30 s:\n%s", d.log())
		}
	}
}

func httpGet(ctx context.Context, url string) (int, string) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err.Error()
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

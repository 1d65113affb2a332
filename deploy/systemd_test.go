package deploy

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// unit is a parsed systemd unit file: section -> key -> values in order.
type unit map[string]map[string][]string

// parseUnit reads the unit file format (systemd.syntax(7)): [Section]
// headers, Key=Value lines, # and ; comments, backslash continuations.
func parseUnit(data []byte) (unit, error) {
	u := unit{}
	var sec string
	sc := bufio.NewScanner(bytes.NewReader(data))
	var cont string
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if cont != "" {
			line = cont + " " + line
			cont = ""
		}
		if strings.HasSuffix(line, "\\") {
			cont = strings.TrimSuffix(line, "\\")
			continue
		}
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			sec = line[1 : len(line)-1]
			if u[sec] == nil {
				u[sec] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || sec == "" {
				return nil, fmt.Errorf("line %d: %q is not Key=Value inside a [Section]", n, line)
			}
			u[sec][strings.TrimSpace(k)] = append(u[sec][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u, sc.Err()
}

func (u unit) one(t *testing.T, sec, key string) string {
	t.Helper()
	v := u[sec][key]
	if len(v) != 1 {
		t.Errorf("[%s] %s: %d values, want 1", sec, key, len(v))
		return ""
	}
	return v[0]
}

// TestSystemdUnit checks the shipped unit against the CLI and the
// configuration defaults: the commands it runs exist with those flags, it
// is hardened, the paths serve writes are writable, and docs/operations.md
// shows the same file.
func TestSystemdUnit(t *testing.T) {
	const file = "systemd/hybridrelay.service"
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	u, err := parseUnit(data)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(filepath.Join(repoRoot, "docs/operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(doc, append(append([]byte("```ini\n"), data...), []byte("```\n")...)) {
		t.Error("docs/operations.md does not show deploy/systemd/hybridrelay.service verbatim")
	}
	bin := staticBinary(t)

	// Every command line names a real subcommand and real flags.
	var config string
	for _, key := range []string{"ExecStartPre", "ExecStart"} {
		line := u.one(t, "Service", key)
		args := strings.Fields(strings.TrimLeft(line, "-@+!:"))
		if len(args) < 2 || args[0] != binaryInImage {
			t.Errorf("%s=%s: want %s SUBCOMMAND", key, line, binaryInImage)
			continue
		}
		help, err := exec.Command(bin, args[1], "--help").CombinedOutput()
		if err != nil {
			t.Errorf("%s: hybridrelay %s --help: %v\n%s", key, args[1], err, help)
			continue
		}
		for i := 2; i < len(args); i++ {
			if !strings.HasPrefix(args[i], "--") {
				continue
			}
			flag, _, _ := strings.Cut(args[i], "=")
			if !strings.Contains(string(help), "   "+flag+" ") {
				t.Errorf("%s: hybridrelay %s has no flag %s", key, args[1], flag)
			}
			if flag == "--config" && i+1 < len(args) {
				if config != "" && config != args[i+1] {
					t.Errorf("ExecStartPre and ExecStart read different files: %s, %s", config, args[i+1])
				}
				config = args[i+1]
			}
		}
	}
	if key := "ExecStartPre"; !strings.Contains(u.one(t, "Service", key), " probe ") {
		t.Errorf("%s does not run probe", key)
	}
	if !strings.HasPrefix(config, "/etc/hybridrelay/") || u.one(t, "Service", "ConfigurationDirectory") != "hybridrelay" {
		t.Errorf("--config %s is not in ConfigurationDirectory /etc/hybridrelay", config)
	}
	if got := u.one(t, "Service", "ExecReload"); got != "/bin/kill -HUP $MAINPID" {
		t.Errorf("ExecReload=%s: serve reloads on SIGHUP", got)
	}
	if got := u.one(t, "Service", "RestartPreventExitStatus"); got != "2" {
		t.Errorf("RestartPreventExitStatus=%s: exit 2 is a configuration error", got)
	}
	if d, err := time.ParseDuration(u.one(t, "Service", "TimeoutStopSec") + "s"); err != nil || d < serveShutdownTimeout(t) {
		t.Errorf("TimeoutStopSec %v is shorter than serve's shutdown bound %v", d, serveShutdownTimeout(t))
	}

	// Hardening.
	for k, want := range map[string]string{"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
		"PrivateTmp": "yes", "PrivateDevices": "yes", "RestrictSUIDSGID": "yes"} {
		if got := u.one(t, "Service", k); got != want {
			t.Errorf("%s=%s, want %s", k, got, want)
		}
	}
	caps := strings.Fields(u.one(t, "Service", "CapabilityBoundingSet"))
	for _, c := range []string{"CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON", "CAP_SYS_RESOURCE"} {
		if !slices.Contains(caps, c) {
			t.Errorf("CapabilityBoundingSet lacks %s", c)
		}
	}
	for _, c := range caps {
		if c == "CAP_SYS_ADMIN" {
			t.Error("CapabilityBoundingSet has CAP_SYS_ADMIN; the relay does not need it")
		}
	}
	if amb := strings.Fields(u.one(t, "Service", "AmbientCapabilities")); !slices.Equal(amb, caps) {
		t.Errorf("AmbientCapabilities %v differs from the bounding set %v", amb, caps)
	}
	// What serve writes, at its defaults and the documented state-file,
	// must be writable under ProtectSystem=strict.
	writable := append([]string(nil), u["Service"]["ReadWritePaths"]...)
	writable = append(writable, "/var/lib/"+u.one(t, "Service", "StateDirectory"), "/run/"+u.one(t, "Service", "RuntimeDirectory"))
	for _, p := range []struct{ what, path string }{
		{"bpffs (default)", "/sys/fs/bpf/hybridrelay"},
		{"admin-socket (default)", "/run/hybridrelay/admin.sock"},
		{"state-file (docs)", "/var/lib/hybridrelay/state.json"},
	} {
		ok := false
		for _, w := range writable {
			for _, f := range strings.Fields(w) {
				if strings.HasPrefix(p.path, strings.TrimLeft(f, "-")+"/") {
					ok = true
				}
			}
		}
		if !ok {
			t.Errorf("%s %s is not writable (ReadWritePaths, StateDirectory, RuntimeDirectory: %v)", p.what, p.path, writable)
		}
	}
	if !strings.Contains(string(doc), "state-file =\n/var/lib/hybridrelay/state.json") && !strings.Contains(string(doc), "state-file = /var/lib/hybridrelay/state.json") {
		t.Error("docs/operations.md no longer documents state-file under /var/lib/hybridrelay")
	}

	// systemd's own check, on a copy that runs the binary just built
	// (verify needs the executables to exist).
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Log("systemd-analyze not installed: the unit is checked by the parser above only")
		return
	}
	tmp := filepath.Join(t.TempDir(), "hybridrelay.service")
	if err := os.WriteFile(tmp, bytes.ReplaceAll(data, []byte(binaryInImage), []byte(bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("systemd-analyze", "verify", tmp).CombinedOutput()
	// verify warns about unknown keys without failing; any line about the
	// unit is a finding.
	var findings []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "hybridrelay.service") {
			findings = append(findings, l)
		}
	}
	if err != nil || len(findings) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

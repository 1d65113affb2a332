package deploy

import (
	"context"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net/netip"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/hybridrelay/hybridrelay/internal/config"
	"github.com/hybridrelay/hybridrelay/internal/metrics"
)

// manifests are the decoded files of deploy/kubernetes.
type manifests struct {
	namespace *corev1.Namespace
	configMap *corev1.ConfigMap
	secret    *corev1.Secret
	daemonSet *appsv1.DaemonSet
	files     []string
}

// kustomization is the part of kustomize's file format used here, decoded
// as strictly as the API objects.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace"`
	Resources  []string `json:"resources"`
}

// loadManifests decodes every YAML file strictly: an unknown or misspelt
// field anywhere is an error, as is a kind this test does not know.
func loadManifests(t *testing.T) manifests {
	t.Helper()
	paths, err := filepath.Glob("kubernetes/*.yaml")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	var m manifests
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(data), "\n---") {
			t.Fatalf("%s: one object per file", p)
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(data, &tm); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		strict := func(apiVersion string, into any) {
			t.Helper()
			if tm.APIVersion != apiVersion {
				t.Errorf("%s: %s has apiVersion %q, want %q", p, tm.Kind, tm.APIVersion, apiVersion)
			}
			if err := yaml.UnmarshalStrict(data, into); err != nil {
				t.Fatalf("%s: strict decode into %T: %v", p, into, err)
			}
		}
		switch tm.Kind {
		case "Namespace":
			m.namespace = &corev1.Namespace{}
			strict("v1", m.namespace)
		case "ConfigMap":
			m.configMap = &corev1.ConfigMap{}
			strict("v1", m.configMap)
		case "Secret":
			m.secret = &corev1.Secret{}
			strict("v1", m.secret)
		case "DaemonSet":
			m.daemonSet = &appsv1.DaemonSet{}
			strict("apps/v1", m.daemonSet)
		case "Kustomization":
			var k kustomization
			strict("kustomize.config.k8s.io/v1beta1", &k)
			for _, r := range k.Resources {
				if _, err := os.Stat(filepath.Join("kubernetes", r)); err != nil {
					t.Errorf("kustomization lists %s: %v", r, err)
				}
			}
			m.files = k.Resources
			if k.Namespace != "hybridrelay" {
				t.Errorf("kustomization namespace %q", k.Namespace)
			}
			continue
		default:
			t.Fatalf("%s: kind %q is not checked by this test", p, tm.Kind)
		}
		if !slices.Contains(m.files, filepath.Base(p)) {
			defer func(base string) {
				if !slices.Contains(m.files, base) {
					t.Errorf("%s is not listed in kustomization.yaml", base)
				}
			}(filepath.Base(p))
		}
	}
	if m.namespace == nil || m.configMap == nil || m.secret == nil || m.daemonSet == nil {
		t.Fatalf("missing a manifest: %+v", m)
	}
	return m
}

// TestStrictDecodeRejectsUnknownFields shows the decoding the manifests
// go through fails on a misspelt field, so passing means something.
func TestStrictDecodeRejectsUnknownFields(t *testing.T) {
	bad := []byte("apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec:\n  template:\n    spec:\n      hostNetwrok: true\n")
	if err := yaml.UnmarshalStrict(bad, &appsv1.DaemonSet{}); err == nil || !strings.Contains(err.Error(), "hostNetwrok") {
		t.Fatalf("misspelt field accepted: %v", err)
	}
}

// container returns the DaemonSet's relay container.
func (m manifests) container(t *testing.T) corev1.Container {
	t.Helper()
	cs := m.daemonSet.Spec.Template.Spec.Containers
	if len(cs) != 1 {
		t.Fatalf("%d containers, want the relay alone", len(cs))
	}
	return cs[0]
}

// expandEnv resolves the container's environment as the kubelet does for
// the values this test can know: $(VAR) references to earlier variables,
// fieldRef status.hostIP as hostIP, the Secret's keys.
func (m manifests) expandEnv(t *testing.T, c corev1.Container, hostIP string) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, e := range c.Env {
		v := e.Value
		switch {
		case e.ValueFrom == nil:
			for k, val := range env {
				v = strings.ReplaceAll(v, "$("+k+")", val)
			}
			if strings.Contains(v, "$(") {
				t.Errorf("env %s: unresolved reference in %q", e.Name, e.Value)
			}
		case e.ValueFrom.FieldRef != nil:
			if e.ValueFrom.FieldRef.FieldPath != "status.hostIP" {
				t.Errorf("env %s: field %s not known to this test", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
			v = hostIP
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			if ref.Name != m.secret.Name {
				t.Errorf("env %s: Secret %q, the manifest's is %q", e.Name, ref.Name, m.secret.Name)
			}
			var ok bool
			if v, ok = m.secret.StringData[ref.Key]; !ok {
				t.Errorf("env %s: Secret %s has no key %q", e.Name, ref.Name, ref.Key)
			}
		default:
			t.Errorf("env %s: valueFrom not known to this test", e.Name)
		}
		env[e.Name] = v
	}
	return env
}

// configPath is the --config argument of the container.
func configPath(t *testing.T, c corev1.Container) string {
	t.Helper()
	args := append(append([]string(nil), c.Command...), c.Args...)
	if len(args) == 0 || args[0] != "serve" {
		t.Fatalf("container args %v: want serve (the image's entrypoint is hybridrelay)", args)
	}
	for i, a := range args {
		if a == "--config" && i+1 < len(args) {
			return args[i+1]
		}
	}
	t.Fatalf("container args %v: no --config", args)
	return ""
}

// mountFor returns the volume mounted at the longest mountPath containing
// file, and that mount.
func (m manifests) mountFor(c corev1.Container, file string) (*corev1.Volume, *corev1.VolumeMount) {
	var best *corev1.VolumeMount
	for i, vm := range c.VolumeMounts {
		if (file == vm.MountPath || strings.HasPrefix(file, strings.TrimSuffix(vm.MountPath, "/")+"/")) &&
			(best == nil || len(vm.MountPath) > len(best.MountPath)) {
			best = &c.VolumeMounts[i]
		}
	}
	if best == nil {
		return nil, nil
	}
	for i, v := range m.daemonSet.Spec.Template.Spec.Volumes {
		if v.Name == best.Name {
			return &m.daemonSet.Spec.Template.Spec.Volumes[i], best
		}
	}
	return nil, best
}

// settings loads the ConfigMap's file with the container's environment
// through the relay's own configuration loader.
func (m manifests) settings(t *testing.T, c corev1.Container, hostIP string) (*config.Settings, map[string]string) {
	t.Helper()
	confPath := configPath(t, c)
	data, ok := m.configMap.Data[path.Base(confPath)]
	if !ok {
		t.Fatalf("ConfigMap %s has no key %q (the file --config names)", m.configMap.Name, path.Base(confPath))
	}
	env := m.expandEnv(t, c, hostIP)
	var kv []string
	for k, v := range env {
		kv = append(kv, k+"="+v)
	}
	s, warnings, err := config.Load(config.Sources{FileName: confPath, FileData: []byte(data), Env: kv})
	if err != nil {
		t.Fatalf("the ConfigMap's configuration with the DaemonSet's environment does not load: %v", err)
	}
	for _, w := range warnings {
		t.Errorf("configuration warning: %s", w)
	}
	return s, env
}

// TestKubernetesManifests checks what the relay needs from the DaemonSet.
func TestKubernetesManifests(t *testing.T) {
	m := loadManifests(t)
	ds := m.daemonSet
	pod := ds.Spec.Template.Spec
	c := m.container(t)
	for _, obj := range []metav1.ObjectMeta{m.configMap.ObjectMeta, m.secret.ObjectMeta, ds.ObjectMeta} {
		if obj.Namespace != m.namespace.Name {
			t.Errorf("%s is in namespace %q, not %q", obj.Name, obj.Namespace, m.namespace.Name)
		}
	}
	if !pod.HostNetwork {
		t.Error("hostNetwork is off: XDP and the relay ports must be the node's")
	}
	if pod.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("dnsPolicy %q with hostNetwork", pod.DNSPolicy)
	}
	sel, err := metav1.LabelSelectorAsMap(ds.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range sel {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod template", k, v)
		}
	}
	if u := ds.Spec.UpdateStrategy.RollingUpdate; u == nil || u.MaxSurge == nil || u.MaxSurge.IntValue() != 0 {
		t.Error("rolling update must not surge: two pods cannot hold one node's ports")
	}

	// Capabilities instead of privileged.
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("no securityContext.capabilities")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("privileged: true; the capabilities suffice")
	}
	if !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Error("capabilities: drop ALL first")
	}
	var add []string
	for _, cap := range sc.Capabilities.Add {
		add = append(add, string(cap))
	}
	slices.Sort(add)
	if want := []string{"BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE"}; !slices.Equal(add, want) {
		t.Errorf("capabilities add %v, want %v", add, want)
	}
	df, _ := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	for _, cap := range add {
		if !strings.Contains(string(df), "CAP_"+cap) {
			t.Errorf("the Dockerfile does not document CAP_%s", cap)
		}
	}

	// The configuration the pod runs, through the relay's own loader, and
	// the volumes its paths must be on.
	const hostIP = "203.0.113.10"
	s, env := m.settings(t, c, hostIP)
	confPath := configPath(t, c)
	if v, _ := m.mountFor(c, confPath); v == nil || v.ConfigMap == nil || v.ConfigMap.Name != m.configMap.Name {
		t.Errorf("--config %s is not on a mount of ConfigMap %s", confPath, m.configMap.Name)
	}
	for _, p := range []struct{ key, file string }{{"bpffs", s.BPFFS}, {"state-file", s.StateFile}} {
		if p.file == "" {
			t.Errorf("%s is not set: a restart would lose the kernel path's state", p.key)
			continue
		}
		v, vm := m.mountFor(c, p.file)
		if v == nil || v.HostPath == nil {
			t.Errorf("%s %s is not on a hostPath volume: a new pod would not find it", p.key, p.file)
			continue
		}
		if vm.ReadOnly {
			t.Errorf("%s %s is on a read-only mount", p.key, p.file)
		}
		// The host path the file ends up at is the same for every pod.
		if rel, _ := filepath.Rel(vm.MountPath, p.file); strings.HasPrefix(rel, "..") {
			t.Errorf("%s: %s outside %s", p.key, p.file, vm.MountPath)
		}
	}
	if v, vm := m.mountFor(c, s.BPFFS); v != nil && v.HostPath != nil && (v.HostPath.Path != "/sys/fs/bpf" || vm.MountPath != "/sys/fs/bpf") {
		t.Errorf("bpffs volume: host %s at %s, want the host's /sys/fs/bpf at /sys/fs/bpf", v.HostPath.Path, vm.MountPath)
	}
	if v, _ := m.mountFor(c, s.AdminSocket); s.AdminSocket == "" || v == nil {
		t.Errorf("admin-socket %q is not on a writable volume (the root filesystem is read-only)", s.AdminSocket)
	}
	if len(s.AuthSecrets) != 1 || s.AuthSecrets[0] != m.secret.StringData["auth-secret"] {
		t.Errorf("auth-secret does not come from the Secret: %d secrets", len(s.AuthSecrets))
	}
	if len(s.RelayIPs) != 1 || s.RelayIPs[0] != netip.MustParseAddr(hostIP) {
		t.Errorf("relay-ip %v, want the node's address %s", s.RelayIPs, hostIP)
	}

	// Probes: the endpoints the metrics listener serves, on its port.
	ml, err := netip.ParseAddrPort(s.MetricsListen)
	if err != nil {
		t.Fatalf("metrics-listen %q: the probes need it: %v", s.MetricsListen, err)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, metrics.PathHealthz}, {"readiness", c.ReadinessProbe, metrics.PathReadyz}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s probe: want httpGet %s", p.name, p.path)
			continue
		}
		g := p.probe.HTTPGet
		if g.Path != p.path || g.Port.IntValue() != int(ml.Port()) {
			t.Errorf("%s probe: %s on port %s, want %s on %d (metrics-listen)", p.name, g.Path, g.Port.String(), p.path, ml.Port())
		}
		if g.Host != "" && g.Host != ml.Addr().String() {
			t.Errorf("%s probe host %s, metrics listen on %s", p.name, g.Host, ml.Addr())
		}
	}
	if ml.Addr().String() != hostIP {
		t.Errorf("metrics-listen %s: the kubelet probes the pod's (the node's) address %s", ml, hostIP)
	}
	_ = env

	// preStop drains; the grace period covers the drain wait and serve's
	// own shutdown bound.
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Exec == nil {
		t.Fatal("no preStop exec hook")
	}
	hook := c.Lifecycle.PreStop.Exec.Command
	if len(hook) < 2 || hook[0] != binaryInImage || hook[1] != "drain" {
		t.Fatalf("preStop %v: want %s drain", hook, binaryInImage)
	}
	var wait time.Duration
	for i, a := range hook {
		if a == "--wait" && i+1 < len(hook) {
			if wait, err = time.ParseDuration(hook[i+1]); err != nil {
				t.Fatal(err)
			}
		}
	}
	grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
	if need := wait + serveShutdownTimeout(t); grace < need {
		t.Errorf("terminationGracePeriodSeconds %s < drain wait %s + serve's shutdown bound: the kubelet would SIGKILL mid-shutdown", grace, wait)
	} else if grace > need+30*time.Second {
		t.Errorf("terminationGracePeriodSeconds %s is far above what drain (%s) and shutdown need (%s)", grace, wait, need)
	}
}

// serveShutdownTimeout reads serve's shutdownTimeout constant from
// cmd/hybridrelay/serve.go ("N * time.Second").
func serveShutdownTimeout(t *testing.T) time.Duration {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(repoRoot, "cmd/hybridrelay/serve.go"), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var d time.Duration
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok || len(vs.Names) != 1 || vs.Names[0].Name != "shutdownTimeout" || len(vs.Values) != 1 {
			return true
		}
		if be, ok := vs.Values[0].(*ast.BinaryExpr); ok && be.Op == token.MUL {
			lit, ok1 := be.X.(*ast.BasicLit)
			sel, ok2 := be.Y.(*ast.SelectorExpr)
			if ok1 && ok2 && sel.Sel.Name == "Second" {
				n, _ := strconv.Atoi(lit.Value)
				d = time.Duration(n) * time.Second
			}
		}
		return false
	})
	if d == 0 {
		t.Fatal("cmd/hybridrelay/serve.go: shutdownTimeout is no longer N * time.Second; update this test")
	}
	return d
}

// TestKubernetesPodRuns runs the static binary with the ConfigMap's file and
// the DaemonSet's environment (the node's address as 127.0.0.1, paths the
// test owns for the hostPath and emptyDir volumes, gso instead of XDP so it
// runs unprivileged), then asks the probes' paths on the probes' port and
// runs the preStop command: the probes are endpoints the server really
// serves, and the hook really drains.
func TestKubernetesPodRuns(t *testing.T) {
	m := loadManifests(t)
	c := m.container(t)
	port := freePort(t)
	env := m.expandEnv(t, c, "127.0.0.1")
	dir := t.TempDir()
	conf := filepath.Join(dir, path.Base(configPath(t, c)))
	if err := os.WriteFile(conf, []byte(m.configMap.Data[path.Base(conf)]), 0o600); err != nil {
		t.Fatal(err)
	}
	probePort := c.LivenessProbe.HTTPGet.Port.IntValue()
	mport := freePort(t)
	var kv []string
	for k, v := range env {
		if k == "HYBRIDRELAY_METRICS_LISTEN" {
			// The manifest's port, moved so parallel runs do not clash;
			// the address is the (substituted) node's.
			if !strings.HasSuffix(v, fmt.Sprintf(":%d", probePort)) {
				t.Fatalf("metrics-listen %s is not on the probe port %d", v, probePort)
			}
			v = fmt.Sprintf("127.0.0.1:%d", mport)
		}
		kv = append(kv, k+"="+v)
	}
	sock := filepath.Join(dir, "admin.sock")
	d := startServe(t, conf, kv, fmt.Sprintf("127.0.0.1:%d", mport), sock,
		"--listen", fmt.Sprintf("udp://127.0.0.1:%d", port), "--datapath", "gso", "--bpffs", filepath.Join(dir, "bpf"),
		"--state-file", filepath.Join(dir, "state.json"), "--admin-socket", sock, "--log-format", "text")
	base := "http://" + d.metrics
	for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe} {
		if code, body := httpGet(context.Background(), base+p.HTTPGet.Path); code != 200 {
			t.Errorf("GET %s: %d %q", p.HTTPGet.Path, code, body)
		}
	}
	hook := c.Lifecycle.PreStop.Exec.Command
	args := append(append([]string(nil), hook[1:]...), "--admin-socket", sock)
	for i, a := range args {
		if a == "--wait" {
			args[i+1] = "2s" // no allocation here; keep the test short
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, staticBinary(t), args...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "drained: no allocation left") {
		t.Fatalf("preStop %v: %v\n%s", args, err, out)
	}
	if code, body := httpGet(context.Background(), base+c.ReadinessProbe.HTTPGet.Path); code != 503 || !strings.Contains(body, "draining") {
		t.Errorf("readiness after preStop: %d %q", code, body)
	}
	if code, _ := httpGet(context.Background(), base+c.LivenessProbe.HTTPGet.Path); code != 200 {
		t.Errorf("liveness after preStop: %d (a draining relay must not be restarted)", code)
	}
}

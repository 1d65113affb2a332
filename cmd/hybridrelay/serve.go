package main

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hybridrelay/hybridrelay/internal/config"
	"github.com/hybridrelay/hybridrelay/pkg/control"
)

// shutdownTimeout bounds a graceful shutdown; past it the process exits 1
// rather than hang under a service manager.
const shutdownTimeout = 15 * time.Second

func init() {
	register(&cli.Command{
		Name:  "serve",
		Usage: "run the TURN relay",
		Description: `Runs the STUN/TURN server (RFC 8489, RFC 8656). With no arguments it runs the
embedded default configuration: UDP and TCP on 0.0.0.0:3478 and, since no
credentials are configured there, a random demo user printed at start-up.

Settings come from, lowest precedence first: built-in defaults, the
configuration file (--config, "key = value" lines whose keys are the flag
names below), HYBRIDRELAY_<FLAG> environment variables (repeatable flags take
a comma-separated list there), and the command line. A repeatable flag given
on the command line replaces the file's list.

Signals: SIGTERM and SIGINT shut down gracefully; SIGHUP re-reads the
configuration file and applies users, auth secrets, alternate servers and TLS
certificates; SIGUSR1 starts draining (see hybridrelay drain).`,
		Flags:  settingFlags(),
		Action: serveAction,
	})
}

// listValue collects every occurrence of a repeatable flag. It does not
// split on commas: a password or secret may contain one.
type listValue struct{ values []string }

func (l *listValue) Set(v string) error { l.values = append(l.values, v); return nil }
func (l *listValue) String() string     { return "" }

// settingFlagKeys remembers which flags are configuration keys, so their
// help line can show the placeholder, default and environment variable
// (see settingFlagString).
var settingFlagKeys = map[cli.Flag]config.Key{}

// settingFlags makes one flag per configuration key, so the flag names, the
// file keys and the environment variables cannot drift apart. The flags do
// not read the environment themselves: config.Load layers it below the
// command line and above the file.
func settingFlags() []cli.Flag {
	var flags []cli.Flag
	for _, k := range config.Keys() {
		var f cli.Flag
		if k.Repeatable {
			f = &cli.GenericFlag{Name: k.Name, Usage: k.Usage, DefaultText: k.Default, Value: &listValue{}}
		} else {
			f = &cli.StringFlag{Name: k.Name, Usage: k.Usage, DefaultText: k.Default}
		}
		settingFlagKeys[f] = k
		flags = append(flags, f)
	}
	return flags
}

// settingFlagString formats a configuration flag for --help:
//
//	--min-port PORT  lowest relay port (default: 49152) [$HYBRIDRELAY_MIN_PORT]
func settingFlagString(f cli.Flag) (string, bool) {
	k, ok := settingFlagKeys[f]
	if !ok {
		return "", false
	}
	return fmt.Sprintf("--%s %s\t%s (default: %s) [$%s]", k.Name, k.Arg, k.Usage, k.Default, config.EnvName(k.Name)), true
}

// flagEntries returns the settings given on the command line, in key order.
func flagEntries(c *cli.Context) []config.Entry {
	var out []config.Entry
	for _, k := range config.Keys() {
		if k.Name == "config" || !c.IsSet(k.Name) {
			continue
		}
		origin := "flag --" + k.Name
		if k.Repeatable {
			if lv, ok := c.Generic(k.Name).(*listValue); ok {
				for _, v := range lv.values {
					out = append(out, config.Entry{Key: k.Name, Value: v, Origin: origin})
				}
			}
			continue
		}
		out = append(out, config.Entry{Key: k.Name, Value: c.String(k.Name), Origin: origin})
	}
	return out
}

// settingsSource remembers where settings come from, so SIGHUP can load
// them again the same way.
type settingsSource struct {
	configPath string // "" = the embedded default
	flags      []config.Entry
}

func newSettingsSource(c *cli.Context) settingsSource {
	path := c.String("config")
	if path == "" {
		path = os.Getenv(config.EnvName("config"))
	}
	return settingsSource{configPath: path, flags: flagEntries(c)}
}

func (src settingsSource) fileName() string {
	if src.configPath == "" {
		return config.DefaultFileName
	}
	return src.configPath
}

// load reads the file and layers environment and flags over it. Errors are
// usage errors (exit code 2).
func (src settingsSource) load() (*config.Settings, []string, error) {
	name, data := config.DefaultFileName, config.DefaultFile
	if src.configPath != "" {
		var err error
		data, err = os.ReadFile(src.configPath)
		if err != nil {
			return nil, nil, asUsage(fmt.Errorf("read config: %w", err))
		}
		name = src.configPath
	}
	s, warnings, err := config.Load(config.Sources{FileName: name, FileData: data, Env: os.Environ(), Flags: src.flags})
	if err != nil {
		return nil, warnings, asUsage(err)
	}
	return s, warnings, nil
}

// newLogger builds the process logger from the settings.
func newLogger(w io.Writer, s *config.Settings) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(s.LogLevel)) // validated by config
	opts := &slog.HandlerOptions{Level: lvl}
	if s.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func serveAction(c *cli.Context) error {
	if c.Args().Len() > 0 {
		return usageErrorf("serve takes no arguments, got %q (did you mean --config %s?)", c.Args().First(), c.Args().First())
	}
	src := newSettingsSource(c)
	settings, warnings, err := src.load()
	if err != nil {
		return err
	}
	log := newLogger(c.App.ErrWriter, settings)
	slog.SetDefault(log)
	for _, w := range warnings {
		log.Warn(w)
	}
	log.Info("configuration loaded", "file", src.fileName())

	// Take the signals over before anything starts: SIGHUP's default
	// action is to terminate, and one sent as soon as the server logs that
	// it started must reload, not kill it. Signals that arrive during start
	// wait in the channel.
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1)
	defer signal.Stop(sig)
	d := newDaemon(log, src, settings, c.App.Writer)
	if err := d.start(); err != nil {
		return err
	}
	return d.wait(c.Context, sig)
}

// daemon is one running `serve`: the control server, its datapath and
// offload, and the side endpoints.
type daemon struct {
	log      *slog.Logger
	src      settingsSource
	settings *config.Settings
	out      io.Writer

	dp      *datapathSet
	srv     *control.Server
	demo    map[string]string // the generated demo user, kept across reloads
	closer  []func() error    // side endpoints, closed in reverse order
	started time.Time
	health  selfCheck // /healthz's Binding round trip
}

func newDaemon(log *slog.Logger, src settingsSource, s *config.Settings, out io.Writer) *daemon {
	return &daemon{log: log, src: src, settings: s, out: out}
}

func (d *daemon) start() error {
	d.started = time.Now()
	s := d.settings
	cfg := s.Control()
	if len(cfg.RelayIPs) == 0 && anyUnspecified(cfg.Listeners) {
		ips, why := pickRelayIPs(cfg.Listeners, hostAddrs())
		if len(ips) == 0 {
			return usageErrorf("relay-ip: %s; set --relay-ip to an address peers can reach", why)
		}
		cfg.RelayIPs = ips
		d.log.Warn("relay-ip not set; picked one", "relay_ips", ips, "reason", why)
	}
	if !s.HasCredentials() {
		pw, err := randomPassword()
		if err != nil {
			return fmt.Errorf("demo user: %w", err)
		}
		d.demo = map[string]string{"demo": pw}
		cfg.Users = map[string]string{"demo": pw}
	}

	dp, err := openDatapath(d.log, s, cfg)
	if err != nil {
		return err
	}
	d.dp = dp
	srv, err := control.NewServer(cfg, control.Options{
		Datapath:  dp.dp,
		Offload:   dp.offload,
		Logger:    d.log,
		StateFile: s.StateFile,
	})
	if err != nil {
		dp.Close()
		return asUsage(err)
	}
	if err := srv.Start(); err != nil {
		dp.Close()
		return err
	}
	d.srv = srv
	if dp.kernel != nil {
		dp.kernel.setListeners(srv.Addrs(), hostAddrs())
		dp.kernel.afterStart()
	}
	if d.demo != nil {
		d.announceDemo(srv.Addrs())
	}
	if err := d.startSideEndpoints(); err != nil {
		d.shutdown()
		return err
	}
	if k := dp.kernel; k != nil {
		d.watchKernelPass(k)
	}
	return nil
}

// watchKernelPass warns, rate-limited, while the kernel path passes
// packets up for reasons that mean the host is misconfigured (see
// decidePassWarnings); it stops with the daemon.
func (d *daemon) watchKernelPass(k *xdpPath) {
	w := newPassWatcher(d.log, k.kernelCounters, k.kernelEgress())
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		w.run(stop, passCheckInterval)
	}()
	d.closer = append(d.closer, func() error {
		close(stop)
		<-done
		return nil
	})
}

func anyUnspecified(ls []control.ListenerSpec) bool {
	for _, l := range ls {
		if l.Addr.Addr().IsUnspecified() {
			return true
		}
	}
	return false
}

// announceDemo prints the demo credentials where a person running
// `hybridrelay serve` will see them, and warns in the log (without the
// password).
func (d *daemon) announceDemo(addrs []control.ListenerSpec) {
	d.log.Warn("no users or auth secrets configured: created a random demo user for testing only; configure user or auth-secret for real use", "user", "demo")
	fmt.Fprintf(d.out, "\nDemo credentials (testing only, new on every start):\n  username: demo\n  password: %s\n", d.demo["demo"])
	seen := map[string]bool{}
	for _, a := range addrs {
		scheme := "turn"
		query := "?transport=" + a.Network
		if a.Network == "tls" {
			scheme, query = "turns", "?transport=tcp"
		}
		if a.Network == "dtls" {
			scheme, query = "turns", "?transport=udp"
		}
		u := fmt.Sprintf("%s:%s%s", scheme, displayAddr(a.Addr, d.srv.RelayIPs()), query)
		if !seen[u] {
			seen[u] = true
			fmt.Fprintf(d.out, "  url: %s\n", u)
		}
	}
	fmt.Fprintln(d.out)
}

// displayAddr replaces an unspecified listener address by a relay address of
// the same family, which is what a client would dial.
func displayAddr(a netip.AddrPort, relays []netip.Addr) string {
	if a.Addr().IsUnspecified() {
		for _, r := range relays {
			if r.Is4() == a.Addr().Unmap().Is4() {
				return netip.AddrPortFrom(r, a.Port()).String()
			}
		}
	}
	return a.String()
}

func randomPassword() (string, error) {
	b := make([]byte, 15)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return strings.ToLower(base32.StdEncoding.EncodeToString(b)), nil
}

// wait serves until SIGTERM/SIGINT (or ctx ends), reloading on SIGHUP.
func (d *daemon) wait(ctx context.Context, sig <-chan os.Signal) error {
	for {
		select {
		case <-ctx.Done():
			return d.shutdownBounded("context done")
		case s := <-sig:
			if s == syscall.SIGHUP {
				d.reload()
				continue
			}
			if s == syscall.SIGUSR1 {
				if _, err := d.SetDraining(true); err != nil {
					d.log.Error("SIGUSR1: drain", "err", err)
				}
				continue
			}
			return d.shutdownBounded(s.String())
		}
	}
}

func (d *daemon) shutdownBounded(why string) error {
	d.log.Info("shutting down", "reason", why)
	done := make(chan error, 1)
	go func() { done <- d.shutdown() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("shutdown: %w", err)
		}
		d.log.Info("stopped")
		return nil
	case <-time.After(shutdownTimeout):
		return fmt.Errorf("shutdown: not finished after %s", shutdownTimeout)
	}
}

func (d *daemon) shutdown() error {
	var errs []error
	for i := len(d.closer) - 1; i >= 0; i-- {
		if err := d.closer[i](); err != nil {
			errs = append(errs, err)
		}
	}
	d.closer = nil
	if d.srv != nil {
		// With a state file and the kernel path, shut down as for a
		// restart: state saved, kernel entries and pins kept, so the next
		// process re-adopts them without a gap. Without a state
		// file nothing could re-adopt them: remove everything.
		keep := d.settings.StateFile != "" && d.dp != nil && d.dp.kernel != nil
		if keep {
			d.dp.kernel.keepPinned = true
			d.log.Info("keeping kernel fast path entries for re-adoption by the next start", "state_file", d.settings.StateFile, "pin_dir", d.settings.BPFFS)
		}
		if err := d.srv.Shutdown(keep); err != nil {
			errs = append(errs, err)
		}
	}
	if d.dp != nil {
		if err := d.dp.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// reload applies what SIGHUP promises: users, auth secrets and the TLS
// certificate files. Anything else that changed is reported as needing a
// restart. A configuration that does not load leaves everything as it is.
func (d *daemon) reload() {
	d.log.Info("SIGHUP: reloading configuration", "file", d.src.fileName())
	next, warnings, err := d.src.load()
	if err != nil {
		d.log.Error("reload failed; keeping the running configuration", "err", err)
		return
	}
	for _, w := range warnings {
		d.log.Warn(w)
	}
	prev := d.settings
	users := next.Users
	if !next.HasCredentials() {
		if d.demo == nil {
			// Credentials were removed altogether: serving with none
			// would lock every client out, so keep the running ones.
			d.log.Error("reload: the new configuration has no user and no auth-secret; keeping the running credentials")
			users, next.Users, next.AuthSecrets = prev.Users, prev.Users, prev.AuthSecrets
		} else {
			users = d.demo
		}
	} else if d.demo != nil {
		d.log.Info("reload: credentials configured; the demo user is removed")
		d.demo = nil
	}
	added, removed, changed := diffUsers(effectiveUsers(prev, d), users)
	d.srv.SetCredentials(users, next.AuthSecrets)
	d.log.Info("reload: credentials applied",
		"users", len(users), "users_added", added, "users_removed", removed, "passwords_changed", changed,
		"auth_secrets", len(next.AuthSecrets), "auth_secrets_added", countNew(prev.AuthSecrets, next.AuthSecrets),
		"auth_secrets_removed", countNew(next.AuthSecrets, prev.AuthSecrets))
	if control.NeedsTLS(next.Listeners) {
		if next.TLSCert != prev.TLSCert || next.TLSKey != prev.TLSKey {
			d.log.Warn("reload: tls-cert/tls-key paths changed; the running server re-reads the old paths until restart",
				"tls_cert", prev.TLSCert, "tls_key", prev.TLSKey)
		}
		if err := d.srv.ReloadTLS(); err != nil {
			d.log.Error("reload: TLS certificate not reloaded; keeping the previous one", "err", err)
		} else {
			d.log.Info("reload: TLS certificate reloaded", "tls_cert", prev.TLSCert)
		}
	}
	if err := d.srv.SetAlternateServers(next.AlternateServers); err != nil {
		d.log.Error("reload: alternate-server not applied", "err", err)
		next.AlternateServers = prev.AlternateServers
	} else if !slices.Equal(prev.AlternateServers, next.AlternateServers) {
		d.log.Info("reload: alternate servers applied", "alternate_servers", next.AlternateServers)
	}
	if keys := config.ChangedKeys(prev, next); len(keys) > 0 {
		restart := slices.DeleteFunc(keys, func(k string) bool { return k == "user" || k == "auth-secret" || k == "alternate-server" })
		if len(restart) > 0 {
			d.log.Warn("reload: these settings changed but only apply after a restart", "keys", restart)
		}
	}
	// Keep the old settings for what was not applied, so the next reload
	// compares against what really runs.
	applied := *prev
	applied.Users, applied.AuthSecrets = next.Users, next.AuthSecrets
	applied.AlternateServers = next.AlternateServers
	d.settings = &applied
}

func effectiveUsers(s *config.Settings, d *daemon) map[string]string {
	if !s.HasCredentials() && d.demo != nil {
		return d.demo
	}
	return s.Users
}

// diffUsers names users added and removed and counts changed passwords; the
// passwords themselves are never logged.
func diffUsers(prev, next map[string]string) (added, removed []string, changed int) {
	for u, p := range next {
		old, ok := prev[u]
		switch {
		case !ok:
			added = append(added, u)
		case old != p:
			changed++
		}
	}
	for u := range prev {
		if _, ok := next[u]; !ok {
			removed = append(removed, u)
		}
	}
	slices.Sort(added)
	slices.Sort(removed)
	return added, removed, changed
}

// countNew counts elements of b not in a.
func countNew(a, b []string) int {
	n := 0
	for _, x := range b {
		if !slices.Contains(a, x) {
			n++
		}
	}
	return n
}

package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/admin"
	"github.com/hybridrelay/hybridrelay/internal/metrics"
	"github.com/hybridrelay/hybridrelay/pkg/control"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// startSideEndpoints opens the admin socket and the metrics endpoint;
// each registers its closer in d.closer. The admin socket is
// on by default, so failing to open it (not root, another daemon on the
// same path) is a warning; the metrics endpoint is asked for explicitly, so
// failing to bind it is an error.
func (d *daemon) startSideEndpoints() error {
	if p := d.settings.AdminSocket; p != "" {
		a, err := admin.Listen(p, d, d.log)
		if err != nil {
			d.log.Warn("admin socket unavailable; `hybridrelay stats` and `maps` will not reach this daemon", "err", err)
		} else {
			d.closer = append(d.closer, a.Close)
			d.log.Info("admin socket listening", "path", p)
		}
	}
	if addr := d.settings.MetricsListen; addr != "" {
		m, err := metrics.Listen(addr, d.Snapshot, metrics.Health{Live: d.live, Ready: d.ready}, d.log)
		if err != nil {
			return err
		}
		d.closer = append(d.closer, m.Close)
		d.log.Info("metrics endpoint listening", "addr", m.Addr().String(), "paths", []string{"/metrics", metrics.PathHealthz, metrics.PathReadyz})
		if ap, err := netip.ParseAddrPort(addr); err == nil && !ap.Addr().IsLoopback() {
			d.log.Warn("the metrics endpoint is not on a loopback address: anyone who can reach it sees the relay's counters", "addr", addr)
		}
	}
	return nil
}

// Snapshot implements admin.Source and feeds the metrics endpoint.
func (d *daemon) Snapshot() (admin.Snapshot, error) {
	s := admin.Snapshot{Time: time.Now(), StartedAt: d.started, PID: os.Getpid(),
		Datapath: d.dp.name, DatapathReason: d.dp.reason}
	st := d.srv.Stats()
	s.Server = &st
	dps := d.dp.dp.Stats()
	s.Dataplane = &dps
	if ls, ok := d.dp.dp.(dataplane.LoopStatser); ok {
		s.Loops = ls.LoopStats()
	}
	if k := d.dp.kernel; k != nil {
		kern, err := admin.KernelFromLoader(k.x, "daemon", k.ifaces)
		if err != nil {
			return s, fmt.Errorf("read kernel counters: %w", err)
		}
		s.Kernel = kern
	}
	return s, nil
}

// Allocations implements admin.Source.
func (d *daemon) Allocations() []control.AllocationInfo { return d.srv.Allocations() }

// Channels implements admin.Source: the kernel table as the daemon's own
// handle sees it (which also works when the pins are private to the
// daemon's mount namespace, as under `ip netns exec`).
func (d *daemon) Channels() ([]admin.Channel, error) {
	if d.dp.kernel == nil {
		return nil, admin.ErrNoKernelPath
	}
	return admin.ChannelsFromLoader(d.dp.kernel.x, time.Now())
}

// SetDraining implements admin.Source (`hybridrelay drain`, SIGUSR1).
func (d *daemon) SetDraining(on bool) (admin.DrainStatus, error) {
	changed := d.srv.SetDraining(on)
	st := d.srv.Stats()
	ds := admin.DrainStatus{Draining: st.Draining, Since: st.DrainingSince, Changed: changed,
		Allocations: st.Allocations, AlternateServers: st.AlternateServers}
	switch {
	case changed && on:
		d.log.Info("draining: new allocations are sent to an alternate server (300) or refused (486); existing ones run to their end",
			"allocations_left", st.Allocations, "alternate_servers", st.AlternateServers)
		if len(st.AlternateServers) == 0 {
			d.log.Warn("draining without alternate-server: new clients get 486 Allocation Quota Reached and must find another relay themselves")
		}
	case changed:
		d.log.Info("drain ended: accepting new allocations", "allocations", st.Allocations)
	}
	return ds, nil
}

// liveAfter is how long the control plane's janitor (every 250 ms) may go
// without running before /healthz fails: a stuck janitor means lifetimes
// are no longer enforced.
const liveAfter = 10 * time.Second

// live backs /healthz: the process answers, the control plane's loops run,
// and a STUN Binding to the first UDP listener is answered (selfCheck).
func (d *daemon) live() error {
	if err := d.srv.Live(liveAfter); err != nil {
		return err
	}
	return d.health.check(d.srv.Addrs())
}

// ready backs /readyz: listeners open and not draining (control.Server
// Ready), and with the kernel path its maps still answer.
func (d *daemon) ready() error {
	if err := d.srv.Ready(); err != nil {
		return err
	}
	if k := d.dp.kernel; k != nil {
		if _, err := k.x.Counters(); err != nil {
			return fmt.Errorf("kernel path: %w", err)
		}
	}
	return nil
}

var _ admin.Source = (*daemon)(nil)

// errNoDaemon reports whether err means no daemon answers.
func errNoDaemon(err error) bool { return errors.Is(err, admin.ErrNotRunning) }

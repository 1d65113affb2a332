// Package metrics owns hybridrelay's Prometheus endpoint (off by default;
// `--metrics-listen 127.0.0.1:9641`). Every scrape reads one fresh
// admin.Snapshot (the same data `hybridrelay stats` shows) and turns it into
// const metrics, so there is no second set of counters to keep in step.
// The same listener answers /healthz and /readyz (health.go) from the
// checks the daemon passes in, for systemd and Kubernetes probes.
//
// Labels are bounded sets: reasons, methods, result codes, directions and
// datapaths. There are no per-username or per-address labels: with REST
// credentials every username is new, and a label per username would grow
// the series without bound.
package metrics

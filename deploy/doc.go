// Package deploy holds what runs hybridrelay as operators run TURN fleets,
// and the tests that keep it true; it has no code the binary uses, so the
// Kubernetes and Prometheus libraries its tests import never reach
// hybridrelay itself.
//
//	kubernetes/   Namespace, ConfigMap (the configuration file), Secret
//	              (auth-secret), the DaemonSet (hostNetwork, capabilities,
//	              bpffs and state file on hostPath, probes, preStop drain)
//	grafana/      a dashboard of the exported metrics
//	prometheus/   alert rules
//	systemd/      the hardened unit
//
// The tests decode every manifest strictly into the Kubernetes API types,
// check the invariants the relay depends on against the configuration
// loader and a running binary (the static one the Dockerfile builds, see
// `make static`), compare every metric the dashboard and the alerts query
// with a scrape of that binary, and check the systemd unit's command lines
// against the CLI.
package deploy

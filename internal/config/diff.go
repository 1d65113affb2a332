package config

import (
	"reflect"
)

// fieldKeys maps Settings fields to their keys, for ChangedKeys.
var fieldKeys = map[string]string{
	"Listeners": "listen", "RelayIPs": "relay-ip", "OtherAddresses": "other-address", "MinPort": "min-port", "MaxPort": "max-port",
	"Realm": "realm", "Users": "user", "AuthSecrets": "auth-secret", "TLSCert": "tls-cert", "TLSKey": "tls-key",
	"AllowPeers": "allow-peer", "DenyPeers": "deny-peer", "MaxAllocations": "max-allocations",
	"MaxAllocationsPerUser": "max-allocations-per-user", "AlternateServers": "alternate-server", "MaxTCPConnections": "max-tcp-connections", "BandwidthLimit": "bandwidth-limit",
	"UnauthRate": "unauth-rate", "UnauthBurst": "unauth-burst", "DefaultLifetime": "default-lifetime",
	"MaxLifetime": "max-lifetime", "Datapath": "datapath", "XDPMode": "xdp-mode", "XDPIfaces": "xdp-iface", "XDPMaxChannels": "xdp-max-channels", "XDPPrefilter": "xdp-prefilter",
	"BPFFS": "bpffs", "StateFile": "state-file", "BatchSize": "batch-size", "Loops": "loops",
	"SocketBuffer": "socket-buffer", "MaxQueueDelay": "max-queue-delay", "LogLevel": "log-level", "LogFormat": "log-format",
	"AdminSocket": "admin-socket", "MetricsListen": "metrics-listen",
}

// ChangedKeys lists the keys whose effective values differ between a and b,
// in documentation order. It is what SIGHUP reports (names only, never
// values: some are secrets).
func ChangedKeys(a, b *Settings) []string {
	changed := map[string]bool{}
	va, vb := reflect.ValueOf(a).Elem(), reflect.ValueOf(b).Elem()
	t := va.Type()
	for i := 0; i < t.NumField(); i++ {
		key, ok := fieldKeys[t.Field(i).Name]
		if !ok {
			continue
		}
		fa, fb := va.Field(i), vb.Field(i)
		if fa.Kind() == reflect.Slice || fa.Kind() == reflect.Map {
			if fa.Len() == 0 && fb.Len() == 0 {
				continue
			}
		}
		if !reflect.DeepEqual(fa.Interface(), fb.Interface()) {
			changed[key] = true
		}
	}
	var out []string
	for _, k := range keys {
		if changed[k.Name] {
			out = append(out, k.Name)
		}
	}
	return out
}

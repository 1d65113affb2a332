// Package admin owns the daemon's local admin socket: a unix stream socket
// (mode 0600 in a 0700 directory, and every connection's peer checked with
// SO_PEERCRED to be root or the daemon's own user) over which `hybridrelay
// stats` and `hybridrelay maps` ask a running `serve` for its state.
//
// The protocol is one JSON object per line. A request is {"cmd": NAME}; the
// answer is {"ok": true, "data": ...} or {"ok": false, "error": "..."}.
// Commands: "stats" (Snapshot), "allocations" ([]control.AllocationInfo),
// "channels" ([]Channel, the kernel channel table), "drain" and "undrain"
// (DrainStatus; `hybridrelay drain`). A connection may carry
// several requests in turn; each is bounded in size and time.
//
// The types here are also what the CLI prints with --json, so scripts see
// the same shapes whether the data came from the daemon or from pinned
// maps.
package admin

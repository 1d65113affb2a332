// Package control is the STUN/TURN control plane of hybridrelay (RFC 8489,
// RFC 8656): listeners (UDP through a dataplane.Datapath, TCP, TLS, DTLS),
// long-term and TURN REST credentials, nonces, allocations, permissions,
// channels, lifetimes, quotas, the peer policy and rate limits.
//
// It declares to a [KernelChannels] table (the XDP fast path, implemented
// by pkg/loader and wired in by cmd/hybridrelay: this package does not
// import the loader) which channel bindings the kernel may forward and
// until when; without one every packet takes the userspace path, which
// produces the same bytes.
//
// # Using it
//
//	srv, err := control.NewServer(cfg, control.Options{Datapath: dataplane.NewPlain()})
//	...
//	err = srv.Start()          // listeners open; Addrs() has the real ports
//	srv.SetCredentials(u, s)   // SIGHUP
//	srv.ReloadTLS()            // SIGHUP
//	srv.Close()                // SIGTERM
//
// One file per TURN method: binding in stun.go, allocate.go, refresh.go,
// permission.go, channelbind.go, send.go (Send/Data indications and
// ChannelData in both directions). attrs.go encodes the TURN attributes
// pion/stun does not know; auth.go holds credentials, nonces and
// MESSAGE-INTEGRITY-SHA256; policy.go the peer policy; ratelimit.go the
// token buckets; allocation.go allocation lifetimes; relayports.go relay
// sockets and the port pool; offload.go and offloadsync.go what the kernel
// table is told; bandwidth.go the bandwidth-limit and its kernel meter;
// transport.go the TCP/TLS framing; dtls.go TURN over DTLS (RFC 7350);
// natdiscovery.go RFC 5780 NAT behaviour discovery (other-address);
// tcpalloc.go RFC 6062 TCP relay allocations, tcpconn.go their peer data
// connections, tcpconnect.go Connect, ConnectionBind and the data pump;
// protostats.go the counters of the protocol extensions; state.go
// persistence. server.go is the server's lifecycle (listeners, shutdown,
// the janitor), config.go its configuration and how it is checked,
// stats.go the counters and the Stats/Allocations snapshots.
//
// # Choices where the RFCs leave room (or real clients disagree)
//
//   - Channel numbers: RFC 8656 allows 0x4000-0x4FFF, RFC 5766 allowed up
//     to 0x7FFF and its clients (coturn's turnutils_uclient) still pick from
//     there, so the wider range is accepted unless
//     Config.StrictChannelNumbers.
//   - Address family: without REQUESTED-ADDRESS-FAMILY an allocation is
//     IPv4 (RFC 8656 section 7.2), except on a server with IPv6 relay
//     addresses only, which answers with IPv6 instead of 440 (the pion/turn
//     v4 client cannot ask for a family).
//   - ChannelData over UDP may carry at most 3 bytes after the data
//     (padding); more means a corrupted length field and the datagram is
//     dropped — the XDP program applies the same rule.
//   - Unauthenticated responses (401, 438, 400, Binding) are rate limited
//     per source IP over UDP (spoofed-source amplification) and per
//     connection over TCP/TLS (a verified source; a response dropped on a
//     stream is never retransmitted, and clients behind one NAT must not
//     starve each other).
//   - The per-user quota counts TURN REST users by the user part of
//     "expiry:user".
//   - Draining (SetDraining) and a full server (MaxAllocations) answer a
//     new Allocate 300 Try Alternate with an ALTERNATE-SERVER of the
//     client's family from Config.AlternateServers, round robin, signed
//     like any answer to an authenticated request (RFC 8489 section 10,
//     RFC 8656 section 7.2); 486 without one. A user over its own quota
//     gets 486 (another server would not change that). Nothing else
//     changes while draining (drain.go); Ready and Live back the /readyz
//     and /healthz endpoints.
//   - Peers with one of our relay IPs are reachable only on live relay
//     sockets (hairpin); nothing relayed may reach a listener port on one
//     of our addresses, whatever the allow list says.
//
// # Concurrency
//
// The per-packet path takes no global lock: allocations are found by
// 5-tuple in a sync.Map, relay sockets carry a pointer to their allocation,
// and each allocation has its own RWMutex guarding its lifetimes,
// permissions and channels. Counters are typed atomics. A janitor goroutine
// enforces lifetimes every 250 ms (the kernel checks expiry per packet on
// its own), and the packet path reads a clock updated every 5 ms instead of
// calling time.Now per packet. Relay sockets are closed off the handler goroutine, because a
// datapath's Conn.Close waits for its receive loop.
//
// # Kernel offload (docs/design.md "Kernel-path invariants" 1-3)
//
// DTLS clients and TCP relay allocations (RFC 6062) are never offloaded:
// the first are not plain UDP 5-tuples, the second have no relay socket and
// no channel.
//
// A channel of a UDP client (of an allocation without a bandwidth limit, or
// with the kernel's meter for it)
// is declared with KernelChannels.Bind before the ChannelBind success
// response is sent. Its Expires is the earliest of the channel's, the
// permission's and the allocation's expiry, and Bind is called again
// whenever that moves. Unbind is called when the channel, its permission
// or the allocation expires, on Refresh with lifetime 0, and on Close; it
// returns what the kernel counted, which ServerStats keeps. Any table
// error leaves the channel on the userspace path; it is counted in
// ServerStats, logged once, and never reported to the client. A channel
// whose peer is another of this server's relayed addresses is declared
// like any other: the table forwards it relay to relay when the other
// side has a channel back, and passes it to userspace otherwise
// (docs/design.md, Relay to relay). Kernel usage is read once per janitor
// pass and once per Stats or Allocations call (KernelChannels.Usage), not
// per channel.
//
// # Restart without dropping media (docs/design.md, Kernel-path invariant 8)
//
// With Options.StateFile set, allocation state of UDP clients (5-tuple,
// username, relay addresses, absolute expiries, permissions, channels,
// DONT-FRAGMENT) is written as JSON to that file (temporary file + rename,
// mode 0600) at most once a second after a change, and at shutdown. Start
// restores every allocation that has not expired: relay sockets are opened
// again on the same ports and their channels are bound again (Bind
// replaces the entry the old process left). TCP/TLS allocations die with
// their connection and are not saved.
//
// A daemon that restarts (upgrade, re-exec) calls
//
//	srv.Shutdown(true) // keepOffload: kernel entries stay, media keeps flowing
//
// and the new process creates its Server with the same StateFile. Close
// (= Shutdown(false)) removes the kernel entries; the state file is still
// written, so allocations also survive a plain stop/start, minus the media
// that arrived in between. Kernel entries that belong to no restored
// allocation are the table's to reconcile when it re-adopts its pinned
// maps (loader.XDP.Reconcile, called by cmd/hybridrelay after Start).
package control

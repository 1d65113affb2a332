// Package loader owns the kernel side of hybridrelay's XDP fast path as seen
// from Go: the bpf2go output for bpf/relay.bpf.c (committed, so building needs
// no clang), loading it with map sizes from config, pinning its maps and links
// under a bpffs directory, re-adopting them after a restart, attaching it to
// interfaces, and typed access to its maps.
//
// It is the one owner of the kernel channel table: the control plane
// declares bindings through control.KernelChannels, which XDP implements
// (Bind, Unbind, Usage in table.go) with the types of internal/kchan, so
// neither package imports the other; XDP keeps what is installed (the
// index), builds every key (keys.go), decides relay-to-relay rewriting
// (hairpin.go), reads all channels' usage in one batched pass, and gives
// the CLI read-only access to a daemon's pins (OpenPinned).
//
// # Lifecycle
//
//	x, err := loader.Load(loader.Options{MaxChannels: 4096})     // pins under /sys/fs/bpf/hybridrelay
//	err = x.Attach([]int{ifindex}, loader.ModeAuto)               // native, generic fallback with a warning
//	err = x.SetRedirectIfaces([]int{ifindexA, ifindexB})          // devmap for egress on another interface
//	...
//	x.Close()   // restart: FDs closed, maps and links stay pinned, XDP keeps forwarding
//	x.Unpin()   // shutdown: pins removed and links detached (then Close)
//
// Load re-adopts maps already pinned in the directory (entries and counters
// survive) and Attach replaces the program of a pinned link on the same
// interface atomically (bpf_link update), so a restarting daemon never leaves
// a gap in the kernel path. The channel index (which slot belongs to which
// channel) is rebuilt from the maps; Reconcile deletes what the new process
// did not re-install. When the pin directory is under /sys/fs/bpf and no
// bpffs is mounted there, Load mounts one (as bpftool does).
//
// # Maps
//
// c2p_channels and p2c_channels (plain hash maps, MaxChannels each) hold the
// two directions of every installed channel, with its expiry; chan_usage
// (per-CPU array, indexed by a slot the loader assigns) the per-channel
// usage, kept outside the entries so that refreshing an expiry never loses
// counts; counters (per-CPU array) the forwarded packets/bytes per direction
// and one counter per XDP_PASS reason (see Counter); tx_ports (devmap) the
// redirect interfaces; egress (array, two slots per channel) how to reach
// each destination in use, resolved by the loader itself from the host's
// routes, neighbours and links over rtnetlink and kept current from their
// events (egress.go, resolver_linux.go; docs/design.md "Egress"), so the
// program works with IP forwarding off. A channel whose peer is another
// installed channel's relayed address is written relay to relay
// (hairpin.go). A full table is ErrFull, counted in PassMapFull; a channel
// the program cannot rewrite in place (IPv6 client with an IPv4 relay, ...)
// is ErrUnsupported. Channel numbers 0x4000-0x7FFF are accepted (RFC 8656
// and RFC 5766 ranges): the control plane decides what it binds.
//
// fast_c2p and fast_p2c (mappable arrays of 2-way sets) hold the same
// entries again for a lookup the verifier inlines; every entry map write
// goes through fast.go, which writes a way only when no program can be
// reading it (docs/design.md "Entry lookup").
//
// listeners (hash) holds the server's UDP listener addresses
// (SetListeners, listeners.go); with Options.Prefilter (or SetPrefilter)
// the program drops datagrams to them that the server would discard by
// their framing alone, its only XDP_DROP, counted in DropPrefilter*
// (docs/design.md "Kernel-path invariants" 9).
//
// # Map layout and byte order
//
// Keys and values are the C structs of bpf/structs.h. Addresses, ports and the
// channel number are stored in network byte order exactly as on the wire;
// IPv4 addresses occupy the first 4 of 16 address bytes (IPv4-mapped IPv6
// addresses are unmapped first). All of that is done in one place, keys.go.
// Expiry is stored twice: in jiffies, which the program compares with
// bpf_jiffies64 (jiffies.go converts, early enough never to be late), and
// as CLOCK_MONOTONIC nanoseconds for userspace, converted from time.Time
// in one place (mono.go).
//
// # Namespaces
//
// Attach and AttachPass resolve interface indexes in the network namespace of
// the calling OS thread: from a test or a benchmark harness call them inside
// netns.(*NS).Do. Load and pin from the root namespace (a mount namespace made
// by `ip netns exec` has its own /sys, so pins made there are invisible
// outside).
//
// # Using the fast path from a benchmark harness
//
//	x, _ := loader.Load(loader.Options{PinDir: dir, NetNS: "/run/netns/" + relayNS}) // or DisablePin: true
//	relayNS.Do(func() error { return x.Attach([]int{cliIdx, peerIdx}, loader.ModeNative) })
//	x.SetRedirectIfaces([]int{cliIdx, peerIdx})
//	clientNS.Do(func() error { _, err := x.AttachPass(clientIfIdx, loader.ModeNative); return err })
//	...                                                   // x as control.Options.Offload
//	x.Unpin(); x.Close()
//
// The far end of every veth the program transmits into needs an XDP program
// (AttachPass) or frames sent with XDP_TX/redirect are lost (docs/design.md).
package loader

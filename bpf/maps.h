/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Every map of the program. The control plane is the only writer of the
 * entry maps (docs/design.md "Kernel-path invariants"); the program writes counters only. */
#ifndef HR_MAPS_H
#define HR_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "structs.h"

/* client -> peer entries, one per offloaded channel. A plain hash (not LRU:
 * LRU would evict live bindings); max_entries is set from config by the
 * loader. A full map leaves the channel to userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct c2p_key);
	__type(value, struct c2p_val);
	__uint(max_entries, HR_DEFAULT_MAX_CHANNELS);
} c2p_channels SEC(".maps");

/* peer -> client entries, one per offloaded channel (a peer transport
 * address is bound to at most one channel per allocation, RFC 8656
 * section 12). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct p2c_key);
	__type(value, struct p2c_val);
	__uint(max_entries, HR_DEFAULT_MAX_CHANNELS);
} p2c_channels SEC(".maps");

/* The fast tables: the entry maps' contents again, in arrays of
 * HR_FAST_WAYS-way sets indexed by a hash the program computes itself
 * (relay.bpf.c hr_fast_lookup). An array lookup is inlined by the
 * verifier, a hash map lookup is a call into the kernel (three, with the
 * hash and the key compare), and on a kernel with return-thunk
 * mitigations every call costs tens of nanoseconds. An entry whose set is
 * full stays in the hash map only, which the program asks on a miss.
 * Mappable: the control plane writes the ways in place (pkg/loader/fast.go).
 * Sized 2 x the next power of two of max channels by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct fast_c2p_way);
	__uint(max_entries, 2 * HR_DEFAULT_MAX_CHANNELS);
} fast_c2p SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct fast_p2c_way);
	__uint(max_entries, 2 * HR_DEFAULT_MAX_CHANNELS);
} fast_p2c SEC(".maps");

/* Per-channel usage counters indexed by the entries' slot, per CPU; sized
 * like the entry maps. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct chan_stats);
	__uint(max_entries, HR_DEFAULT_MAX_CHANNELS);
} chan_usage SEC(".maps");

/* Global counters, indexed by enum hr_counter; per-CPU so the hot path
 * never contends (docs/design.md "Kernel-path invariants"). Userspace sums the CPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, HR_CNT_MAX);
} counters SEC(".maps");

/* Interfaces the program may redirect to, keyed and valued by ifindex.
 * Egress on the ingress interface uses XDP_TX and needs no entry. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, HR_MAX_IFACES);
} tx_ports SEC(".maps");

/* The egress table: one slot per destination in use, shared by every
 * channel entry that sends there (the entries carry the slot index). An
 * array so the lookup is inlined; the control plane rewrites a slot in
 * place when a route, neighbour or link changes, so a failover never
 * touches the channel entries. Sized 2 x max channels by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct egress_entry);
	__uint(max_entries, HR_DEFAULT_MAX_EGRESS);
} egress SEC(".maps");

/* Bandwidth meters (meter.h), indexed by the entries' meter field; sized
 * like the entry maps (an offloaded allocation has at least one channel).
 * Mappable, so that the userspace path meters on the same state. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct hr_meter);
	__uint(max_entries, HR_DEFAULT_MAX_CHANNELS);
} meters SEC(".maps");
/* The server's UDP listener addresses (wildcard listeners expanded to the
 * host's addresses by the control plane), for the pre-filter: with
 * HR_L_PREFILTER, a datagram to one of them that is neither STUN- nor
 * ChannelData-shaped is dropped. Nothing else is ever dropped. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct listener_key);
	__type(value, struct listener_val);
	__uint(max_entries, HR_MAX_LISTENERS);
} listeners SEC(".maps");

#endif

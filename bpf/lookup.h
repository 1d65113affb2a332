/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Entry lookup: the keys, and the fast tables (maps.h) asked before the
 * entry hash maps. */
#ifndef HR_LOOKUP_H
#define HR_LOOKUP_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "structs.h"
#include "maps.h"

/* The entry keys, built in the words the kernel's hash table reads them
 * in: jhash loads 32-bit words, the key compare 64-bit ones (memcmp on a
 * CPU with efficient unaligned access), and a load over several smaller
 * stores cannot be served from the store buffer. Each word is composed in
 * a register (words.h) and stored once. */
union hr_entry_key {
	struct c2p_key c2p;
	struct p2c_key p2c;
	__u64 w[5];
};
_Static_assert(sizeof(struct c2p_key) == 40 && sizeof(struct p2c_key) == 40, "entry key size");
_Static_assert(__builtin_offsetof(struct c2p_key, listener_addr) == 16 &&
		       __builtin_offsetof(struct c2p_key, client_port) == 32 &&
		       __builtin_offsetof(struct c2p_key, listener_port) == 34 &&
		       __builtin_offsetof(struct c2p_key, channel) == 36 &&
		       __builtin_offsetof(struct c2p_key, family) == 38,
	       "c2p_key words");
_Static_assert(__builtin_offsetof(struct p2c_key, relay_addr) == 16 &&
		       __builtin_offsetof(struct p2c_key, peer_port) == 32 &&
		       __builtin_offsetof(struct p2c_key, relay_port) == 34 &&
		       __builtin_offsetof(struct p2c_key, family) == 36,
	       "p2c_key words");

/* Set by the loader before load (pkg/loader/fast.go): the fast tables'
 * set count - 1 (a power of two - 1) and the hash seed, chosen at random
 * per load so that nobody can pick keys that share a set. */
volatile const __u32 hr_fast_mask = 0;
volatile const __u64 hr_fast_seed = 0;

/* The set of a key: multiply-xor over its five words. pkg/loader/fast.go
 * computes the same. */
static __always_inline __u32 hr_fast_set(const union hr_entry_key *k)
{
	__u64 h = hr_fast_seed;
#pragma unroll
	for (int i = 0; i < 5; i++)
		h = (h ^ k->w[i]) * 0x9E3779B97F4A7C15ULL;
	return (__u32)(h >> 32) & hr_fast_mask;
}

/* The value of the published way of map (fast_c2p or fast_p2c) whose key
 * is k, or NULL. Both way layouts are gen, pad, 40-byte key, value. */
static __always_inline void *hr_fast_lookup(void *map, const union hr_entry_key *k)
{
	const __u32 set = hr_fast_set(k);
#pragma unroll
	for (__u32 i = 0; i < HR_FAST_WAYS; i++) {
		__u32 idx = set * HR_FAST_WAYS + i;
		struct fast_c2p_way *e = bpf_map_lookup_elem(map, &idx);
		if (!e)
			return 0;
		__u64 dep = *(volatile __u32 *)&e->gen;
		if (!dep)
			continue;
		/* The key and value are read through an address that depends
		 * on the gen just read, which orders those loads after it on
		 * CPUs that would otherwise reorder them (arm64); the
		 * control plane publishes with a release store. */
		asm volatile("%0 &= 0" : "+r"(dep));
		const __u64 *kw = (const void *)&e->key + dep;
		if (kw[0] == k->w[0] && kw[1] == k->w[1] && kw[2] == k->w[2] && kw[3] == k->w[3] &&
		    kw[4] == k->w[4])
			return (void *)&e->val + dep;
	}
	return 0;
}
_Static_assert(__builtin_offsetof(struct fast_c2p_way, key) == 8 && __builtin_offsetof(struct fast_p2c_way, key) == 8 &&
		       __builtin_offsetof(struct fast_c2p_way, val) == __builtin_offsetof(struct fast_p2c_way, val),
	       "fast way layouts");

#endif

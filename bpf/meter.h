/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Per-allocation bandwidth meter: bandwidth-limit enforced in the kernel
 * (docs/design.md "Bandwidth limit").
 *
 * One meter per limited allocation, shared by both directions and every
 * channel of it, and by the userspace path, which maps the same array
 * (BPF_F_MMAPABLE) and runs the same algorithm on the same word. The
 * algorithm is GCRA, the virtual-scheduling form of a token bucket (ITU-T
 * I.371): tat_ns is the theoretical arrival time; a packet of n bytes
 * conforms when tat_ns - now <= tau_ns, and then moves tat_ns to
 * max(tat_ns, now) + n * ps_per_byte / 1000. A conforming stream gets
 * rate bytes/s with bursts of tau_ns worth. tat_ns is the only state and
 * is updated with compare-and-swap, so every CPU and userspace can share
 * it without a lock. */
#ifndef HR_METER_H
#define HR_METER_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"

enum hr_meter_verdict {
	HR_METER_OK,   /* conforms: forward */
	HR_METER_OVER, /* over the limit: drop (userspace would drop it too) */
	HR_METER_BUSY, /* no decision (slot unset, CAS contended): pass to userspace */
};

/* Compare-and-swap attempts before giving the packet to userspace, which
 * decides on the same meter. */
#define HR_METER_TRIES 4

static __always_inline enum hr_meter_verdict hr_meter_take(__u32 idx, __u32 bytes)
{
	struct hr_meter *m = bpf_map_lookup_elem(&meters, &idx);
	if (!m)
		return HR_METER_BUSY;
	const __u64 ps = m->ps_per_byte;
	if (!ps)
		return HR_METER_BUSY;
	const __u64 now = bpf_ktime_get_ns();
	const __u64 inc = (__u64)bytes * ps / 1000;
#pragma unroll
	for (int i = 0; i < HR_METER_TRIES; i++) {
		const __u64 tat = *(volatile __u64 *)&m->tat_ns;
		const __u64 base = tat > now ? tat : now;
		if (base - now > m->tau_ns) {
			__sync_fetch_and_add(&m->drop_packets, 1);
			__sync_fetch_and_add(&m->drop_bytes, bytes);
			return HR_METER_OVER;
		}
		if (__sync_val_compare_and_swap(&m->tat_ns, tat, base + inc) == tat)
			return HR_METER_OK;
	}
	return HR_METER_BUSY;
}

#endif

/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Incremental Internet checksum updates (RFC 1071, RFC 1624).
 *
 * All arithmetic is done on 16- or 32-bit words exactly as they sit in memory
 * (loaded natively, never byte-swapped): the one's complement sum is byte
 * order independent (RFC 1071 section 2(B)), so the result can be stored
 * back as is. A byte at an even offset of the summed stream is the first
 * byte of its word, i.e. the low byte of a little-endian load, and a byte at
 * an odd offset the high byte; hr_csum_byte() encodes that for the
 * little-endian BPF target this program is built for (bpfel).
 *
 * Updates follow RFC 1624 equation 3: HC' = ~(~HC + ~m + m'). The sum is
 * kept in 64 bits and folded once at the end; address-sized runs are
 * summed in 32-bit words (RFC 1071 section 2(C): the sum may be taken in
 * wider words and folded). */
#ifndef HR_CSUM_H
#define HR_CSUM_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

/* Start an update of checksum field value check (as stored). */
static __always_inline __u64 hr_csum_start(__u16 check)
{
	return (__u16)~check;
}

static __always_inline __u64 hr_csum_add(__u64 sum, __u16 word)
{
	return sum + word;
}

/* One's complement subtraction: add the complement. */
static __always_inline __u64 hr_csum_sub(__u64 sum, __u16 word)
{
	return sum + (__u16)~word;
}

/* Replace n words old[] by new[] (n is a compile time constant). */
static __always_inline __u64 hr_csum_replace(__u64 sum, const __u16 *old, const __u16 *new, const int n)
{
#pragma unroll
	for (int i = 0; i < n; i++) {
		sum = hr_csum_sub(sum, old[i]);
		sum = hr_csum_add(sum, new[i]);
	}
	return sum;
}

/* Replace n 32-bit words old[] by new[]: the one's complement sum of a
 * 32-bit word is that of its two 16-bit halves, and ~ of the word is ~ of
 * each half, so this equals hr_csum_replace over the 2n halves with half
 * the operations. Both arrays must be 4-aligned. */
static __always_inline __u64 hr_csum_replace32(__u64 sum, const __u32 *old, const __u32 *new, const int n)
{
#pragma unroll
	for (int i = 0; i < n; i++)
		sum += (__u64)(__u32)~old[i] + new[i];
	return sum;
}

/* The word contribution of byte b at offset off of the summed stream. */
static __always_inline __u16 hr_csum_byte(__u8 b, __u32 off)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	return (off & 1) ? (__u16)((__u16)b << 8) : (__u16)b;
#else
	return (off & 1) ? (__u16)b : (__u16)((__u16)b << 8);
#endif
}

static __always_inline __u16 hr_csum_fold(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* Finish an update: the new checksum field value. */
static __always_inline __u16 hr_csum_finish(__u64 sum)
{
	return (__u16)~hr_csum_fold(sum);
}

/* Full sum of an IPv4 header without options (five 32-bit words, loaded
 * from the packet); a correct header folds to 0xffff. */
static __always_inline __u16 hr_ip4_hdr_sum(const __u32 *w)
{
	__u64 sum = 0;
#pragma unroll
	for (int i = 0; i < 5; i++)
		sum += w[i];
	return hr_csum_fold(sum);
}

#endif

/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Header words composed in registers. The rewrite reads and writes the
 * headers in whole 32- and 64-bit words, never field by field: a field
 * store followed by a wider load of the same bytes (the checksum's word
 * sums, the key compare of the hash lookup) cannot be served from the
 * store buffer and stalls until the stores retire, and a copy through a
 * byte pointer compiles to one load and store per byte.
 *
 * "first" is the part at the lower address, as stored in memory, so the
 * same source is right for the little- and the big-endian object. */
#ifndef HR_WORDS_H
#define HR_WORDS_H

#include <linux/types.h>

/* The 16-bit word holding byte b0 then b1. */
static __always_inline __u16 hr_w16(__u8 b0, __u8 b1)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	return (__u16)b0 | ((__u16)b1 << 8);
#else
	return ((__u16)b0 << 8) | (__u16)b1;
#endif
}

/* The 32-bit word holding the 16-bit words first then second. */
static __always_inline __u32 hr_w32(__u16 first, __u16 second)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	return (__u32)first | ((__u32)second << 16);
#else
	return ((__u32)first << 16) | (__u32)second;
#endif
}

/* The first 16-bit word of a 32-bit word. */
static __always_inline __u16 hr_w32_first(__u32 w)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	return (__u16)w;
#else
	return (__u16)(w >> 16);
#endif
}

/* The 64-bit word holding the 32-bit words first then second. */
static __always_inline __u64 hr_w64(__u32 first, __u32 second)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	return (__u64)first | ((__u64)second << 32);
#else
	return ((__u64)first << 32) | (__u64)second;
#endif
}

#endif

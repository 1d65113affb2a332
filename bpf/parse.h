/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Header parsing: Ethernet, at most one 802.1Q/802.1ad tag, IPv4 without
 * options or fragmentation, IPv6 without extension headers, UDP. Every
 * access is preceded by its bounds check against data_end. The IP and UDP
 * headers are copied to the stack (struct hr_pkt) in 32-bit words, the
 * size the rewrite and the keys read them in (words.h), so that the
 * rewrite can compute the new headers from them after the packet has
 * moved. */
#ifndef HR_PARSE_H
#define HR_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "consts.h"
#include "csum.h"

enum hr_parse_result {
	HR_PARSE_OK = 0,
	HR_PARSE_OTHER,     /* well formed, but not something we relay */
	HR_PARSE_MALFORMED, /* truncated or inconsistent */
};

struct hr_vlan_hdr {
	__be16 tci;
	__be16 proto; /* encapsulated EtherType */
};

struct hr_pkt {
	__be16 eth_proto; /* the outer EtherType (the rewrite writes new MACs) */
	__u16 vlan_tci; /* host order, valid if has_vlan */
	__u8 has_vlan;
	__u8 family; /* HR_FAMILY_V4 / HR_FAMILY_V6 */
	__be16 l3_proto; /* EtherType after the tag, network order */
	__u16 payload_len; /* UDP length - 8 */
	union {
		struct iphdr ip4;
		struct ipv6hdr ip6;
		__u32 ip_w[HR_IP6_HLEN / 4]; /* IPv4: the first 5 */
	};
	union {
		struct udphdr udp;
		__u32 udp_w[2]; /* ports; length and checksum */
	};
};

/* The IPv4 and IPv6 words the addresses start at (struct hr_pkt ip_w). */
enum hr_ip_word {
	HR_IP4_W_SADDR = 3,
	HR_IP4_W_DADDR = 4,
	HR_IP6_W_SADDR = 2,
	HR_IP6_W_DADDR = 6,
};

/* Copy n 32-bit words of a header from the packet (bounds already
 * checked; the verifier accepts unaligned packet loads where the CPU does
 * them efficiently, and the IP header is 2 bytes off a word boundary behind
 * Ethernet). */
static __always_inline void hr_copy_words(__u32 *dst, const void *src, const int n)
{
	const __u32 *w = src;
#pragma unroll
	for (int i = 0; i < n; i++)
		dst[i] = w[i];
}

static __always_inline int hr_parse_udp(struct hr_pkt *p, struct udphdr *udp, void *end, __u32 l4len)
{
	if ((void *)(udp + 1) > end)
		return HR_PARSE_MALFORMED;
	__u16 ulen = bpf_ntohs(udp->len);
	/* The UDP length must match the IP length exactly: a datagram that
	 * claims less or more than the IP packet carries is not ours to fix. */
	if (ulen < HR_UDP_HLEN || ulen != l4len)
		return HR_PARSE_MALFORMED;
	hr_copy_words(p->udp_w, udp, 2);
	p->payload_len = ulen - HR_UDP_HLEN;
	return HR_PARSE_OK;
}

static __always_inline int hr_parse(struct xdp_md *ctx, struct hr_pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return HR_PARSE_MALFORMED;
	p->eth_proto = eth->h_proto;
	__be16 proto = eth->h_proto;
	void *l3 = (void *)(eth + 1);

	p->has_vlan = 0;
	p->vlan_tci = 0;
	if (proto == bpf_htons(HR_ETH_P_8021Q) || proto == bpf_htons(HR_ETH_P_8021AD)) {
		struct hr_vlan_hdr *vh = l3;
		if ((void *)(vh + 1) > end)
			return HR_PARSE_MALFORMED;
		p->has_vlan = 1;
		p->vlan_tci = bpf_ntohs(vh->tci);
		proto = vh->proto;
		l3 = (void *)(vh + 1);
		/* A second tag (QinQ) is more than we handle. */
		if (proto == bpf_htons(HR_ETH_P_8021Q) || proto == bpf_htons(HR_ETH_P_8021AD))
			return HR_PARSE_OTHER;
	}
	p->l3_proto = proto;

	if (proto == bpf_htons(HR_ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > end)
			return HR_PARSE_MALFORMED;
		if (ip->version != 4)
			return HR_PARSE_MALFORMED;
		if (ip->ihl != 5) /* options (ihl > 5) or nonsense (< 5) */
			return ip->ihl < 5 ? HR_PARSE_MALFORMED : HR_PARSE_OTHER;
		if (ip->frag_off & bpf_htons(HR_IP_MF | HR_IP_OFFSET))
			return HR_PARSE_OTHER; /* fragments: the stack reassembles */
		if (ip->protocol != HR_IPPROTO_UDP)
			return HR_PARSE_OTHER;
		__u16 tot = bpf_ntohs(ip->tot_len);
		if (tot < HR_IP4_HLEN + HR_UDP_HLEN)
			return HR_PARSE_MALFORMED;
		/* Ethernet padding may follow the IP packet; a packet longer
		 * than the frame is truncated. */
		if (l3 + tot > end)
			return HR_PARSE_MALFORMED;
		/* A header with a bad checksum would be dropped by the stack;
		 * an incremental update would only carry the error on. */
		if (hr_ip4_hdr_sum((const __u32 *)ip) != 0xffff)
			return HR_PARSE_MALFORMED;
		hr_copy_words(p->ip_w, ip, HR_IP4_HLEN / 4);
		p->family = HR_FAMILY_V4;
		return hr_parse_udp(p, (struct udphdr *)(ip + 1), end, tot - HR_IP4_HLEN);
	}
	if (proto == bpf_htons(HR_ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > end)
			return HR_PARSE_MALFORMED;
		if (ip6->version != 6)
			return HR_PARSE_MALFORMED;
		if (ip6->nexthdr != HR_IPPROTO_UDP)
			return HR_PARSE_OTHER; /* extension headers or another protocol */
		__u16 plen = bpf_ntohs(ip6->payload_len);
		if (plen < HR_UDP_HLEN) /* also catches jumbograms (0) */
			return HR_PARSE_MALFORMED;
		if ((void *)(ip6 + 1) + plen > end)
			return HR_PARSE_MALFORMED;
		hr_copy_words(p->ip_w, ip6, HR_IP6_HLEN / 4);
		p->family = HR_FAMILY_V6;
		int rc = hr_parse_udp(p, (struct udphdr *)(ip6 + 1), end, plen);
		/* The UDP checksum is mandatory over IPv6 (RFC 8200 section
		 * 8.1): zero is invalid, the stack drops it. */
		if (rc == HR_PARSE_OK && p->udp.check == 0)
			return HR_PARSE_MALFORMED;
		return rc;
	}
	return HR_PARSE_OTHER;
}

/* The ChannelData header (RFC 8656 section 12.4) at the start of a UDP
 * payload, its two words as stored (network order). */
struct hr_chandata {
	__be16 channel;
	__be16 len;
};

enum hr_cd_shape {
	HR_CD_NOT_SHAPED = 0, /* shorter than a header, or the first two bits are not 01 */
	HR_CD_SHAPED,         /* channel number 0x4000-0x7FFF: worth a channel lookup */
};

/* Read the ChannelData header of the payload at payload (p->payload_len
 * bytes, already bounded by the IP and UDP lengths). Returns HR_PARSE_OK
 * with *shape set, or HR_PARSE_MALFORMED if the frame is shorter than the
 * UDP length claims. The first two bits 01 tell ChannelData from STUN (00);
 * RFC 8656 section 12 binds 0x4000-0x4FFF and RFC 5766 section 11 allowed
 * 0x4000-0x7FFF, so the whole 01 range is shaped and the control plane
 * decides which numbers it binds. */
static __always_inline int hr_parse_chandata(const struct hr_pkt *p, const void *payload, const void *end,
					     struct hr_chandata *cd, enum hr_cd_shape *shape)
{
	*shape = HR_CD_NOT_SHAPED;
	cd->channel = 0;
	cd->len = 0;
	if (p->payload_len < HR_CHANNELDATA_HLEN)
		return HR_PARSE_OK;
	const __be16 *w = payload;
	if ((const void *)(w + 2) > end)
		return HR_PARSE_MALFORMED;
	cd->channel = w[0];
	cd->len = w[1];
	__u16 ch = bpf_ntohs(cd->channel);
	if (ch >= HR_CHANNEL_MIN && ch <= HR_CHANNEL_MAX)
		*shape = HR_CD_SHAPED;
	return HR_PARSE_OK;
}

/* Check a ChannelData message's length field against the UDP payload
 * length: the field, not the UDP length, says how much data there is
 * (RFC 8656 section 12.4), and over UDP at most 3 bytes of padding may
 * follow (section 12.5). Returns HR_PARSE_OK with the data length and the
 * number of trailing bytes, or HR_PARSE_MALFORMED (less data than claimed,
 * or more than padding after it): userspace decides about those. */
static __always_inline int hr_chandata_len(const struct hr_chandata *cd, __u32 payload_len, __u32 *data_len,
					   __u32 *trail)
{
	__u32 n = bpf_ntohs(cd->len);
	if (HR_CHANNELDATA_HLEN + n > payload_len)
		return HR_PARSE_MALFORMED;
	__u32 t = payload_len - HR_CHANNELDATA_HLEN - n;
	if (t > HR_MAX_PAD)
		return HR_PARSE_MALFORMED;
	*data_len = n;
	*trail = t;
	return HR_PARSE_OK;
}

/* What a datagram to a listener is by its framing alone, the way the
 * server demultiplexes it (RFC 8656 section 12: first bits 00 STUN, 01
 * ChannelData). This mirrors internal/turnproto ClassifyDatagram, and
 * pkg/loader's tests prove the two agree: the server discards every
 * datagram of a kind other than STUN and CHANNELDATA. */
enum hr_framing {
	HR_FRAMING_STUN,               /* header checks of RFC 8489 section 6.3 pass */
	HR_FRAMING_CHANNELDATA,        /* length fits, at most 3 bytes after (RFC 8656 12.4, 12.5) */
	HR_FRAMING_SHORT,              /* under 4 bytes, or a STUN header under 20 */
	HR_FRAMING_NOT_TURN,           /* first bits 10/11, or 00 without the magic cookie */
	HR_FRAMING_STUN_LENGTH,        /* message length not a multiple of 4 or not the datagram's */
	HR_FRAMING_CHANNELDATA_LENGTH, /* length beyond the datagram, or more than padding after it */
};

/* Classify the UDP payload at payload; cd is its header as
 * hr_parse_chandata read it (the first 4 bytes, when there are 4). A read
 * the verifier cannot prove in bounds (never, for a packet that parsed)
 * classifies as STUN, which nothing drops. */
static __always_inline enum hr_framing hr_classify(const struct hr_pkt *p, const void *payload, const void *end,
						   const struct hr_chandata *cd)
{
	__u32 n = p->payload_len;
	if (n < HR_CHANNELDATA_HLEN)
		return HR_FRAMING_SHORT;
	__u8 top = bpf_ntohs(cd->channel) >> 14;
	if (top == 1) {
		__u32 data_len, trail;
		if (hr_chandata_len(cd, n, &data_len, &trail) != HR_PARSE_OK)
			return HR_FRAMING_CHANNELDATA_LENGTH;
		return HR_FRAMING_CHANNELDATA;
	}
	if (top != 0)
		return HR_FRAMING_NOT_TURN;
	if (n < HR_STUN_HLEN)
		return HR_FRAMING_SHORT;
	const __be32 *w = payload;
	if ((const void *)(w + 2) > end)
		return HR_FRAMING_STUN;
	if (w[1] != bpf_htonl(HR_STUN_MAGIC))
		return HR_FRAMING_NOT_TURN;
	__u32 mlen = bpf_ntohs(cd->len); /* the STUN message length is the same word */
	if ((mlen & 3) || HR_STUN_HLEN + mlen != n)
		return HR_FRAMING_STUN_LENGTH;
	return HR_FRAMING_STUN;
}

#endif

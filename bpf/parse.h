/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Header parsing: Ethernet, at most one 802.1Q/802.1ad tag, IPv4 without
 * options or fragmentation, IPv6 without extension headers, UDP. Every
 * access is preceded by its bounds check against data_end. The parsed
 * headers are copied to the stack (struct hr_pkt) so the rewrite can build
 * the new headers there and write them once the packet is committed. */
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
	struct ethhdr eth;
	__u16 vlan_tci; /* host order, valid if has_vlan */
	__u8 has_vlan;
	__u8 family; /* HR_FAMILY_V4 / HR_FAMILY_V6 */
	__be16 l3_proto; /* EtherType after the tag, network order */
	__u16 payload_len; /* UDP length - 8 */
	union {
		struct iphdr ip4;
		struct ipv6hdr ip6;
	};
	struct udphdr udp;
};

static __always_inline int hr_parse_udp(struct hr_pkt *p, struct udphdr *udp, void *end, __u32 l4len)
{
	if ((void *)(udp + 1) > end)
		return HR_PARSE_MALFORMED;
	__u16 ulen = bpf_ntohs(udp->len);
	/* The UDP length must match the IP length exactly: a datagram that
	 * claims less or more than the IP packet carries is not ours to fix. */
	if (ulen < HR_UDP_HLEN || ulen != l4len)
		return HR_PARSE_MALFORMED;
	__builtin_memcpy(&p->udp, udp, sizeof(*udp));
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
	__builtin_memcpy(&p->eth, eth, sizeof(*eth));
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
		if (hr_ip4_hdr_sum((const __u16 *)ip) != 0xffff)
			return HR_PARSE_MALFORMED;
		__builtin_memcpy(&p->ip4, ip, sizeof(*ip));
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
		__builtin_memcpy(&p->ip6, ip6, sizeof(*ip6));
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

#endif

// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
/* hybridrelay XDP fast path: forwards bound TURN channels (RFC 8656
 * section 12) in both directions without waking userspace.
 *
 *   client -> listener  ChannelData(ch, data)  ==>  relay -> peer     data
 *   peer   -> relay     data                   ==>  listener -> client ChannelData(ch, data)
 *
 * Invariants (docs/design.md "Kernel-path invariants"):
 *  - only entries the control plane installed after a successful
 *    ChannelBind are forwarded, and only before their expiry (checked on
 *    every packet against bpf_ktime_get_coarse_ns: CLOCK_MONOTONIC_COARSE
 *    needs no clocksource read, and the control plane stores expiries
 *    early by the coarse clock's lag, so it is never late);
 *  - everything else is XDP_PASS, unmodified: the program never returns
 *    XDP_DROP or XDP_ABORTED, and it decides egress (the egress slot the
 *    control plane resolved, MTU, devmap) before it touches the packet;
 *  - egress never depends on the host forwarding IP: bpf_fib_lookup is
 *    not used (it refuses every lookup when forwarding is off);
 *  - checksums are updated incrementally (RFC 1624); a zero IPv4 UDP
 *    checksum stays zero;
 *  - counters are per-CPU, per-channel usage is in chan_stats.
 *
 * IP header fields follow RFC 8656 section 14 "preferred behavior": the
 * TTL/hop limit is one less than the incoming value (<= 1: passed to
 * userspace), DSCP and ECN are copied, DF is set as the allocation's
 * DONT-FRAGMENT asked (client -> peer) or copied (peer -> client). */

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "consts.h"
#include "structs.h"
#include "maps.h"
#include "csum.h"
#include "parse.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Largest ChannelData data length handled. The program does not set
 * xdp.frags, so frames are single buffers of at most a page; the bound only
 * keeps packet offsets small enough for the verifier. */
#define HR_MAX_DATA 0x3FFF

static __always_inline void hr_count(__u32 idx, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &idx);
	if (c)
		*c += n; /* per-CPU slot: no atomics needed */
}

/* Not inlined: only the slow path calls it, and its prototype puts enum
 * hr_counter into the object's BTF, from which bpf2go generates the Go
 * constants. */
static __attribute__((noinline)) int hr_pass(enum hr_counter reason)
{
	hr_count(reason, 1);
	return XDP_PASS;
}

static __always_inline void hr_chan_count(__u32 slot, const int to_peer, __u64 bytes)
{
	/* Per-CPU slot: both directions of a channel may run on different
	 * CPUs without sharing a cache line, and no atomics are needed. */
	struct chan_stats *s = bpf_map_lookup_elem(&chan_usage, &slot);
	if (!s)
		return;
	if (to_peer) {
		s->to_peer_packets++;
		s->to_peer_bytes += bytes;
	} else {
		s->to_client_packets++;
		s->to_client_bytes += bytes;
	}
}

/* Decide how the rewritten packet leaves, from the egress slot the control
 * plane resolved for its destination (docs/design.md "Egress"). Returns
 * XDP_TX or XDP_REDIRECT with *eg set, or XDP_PASS with *reason set.
 * Nothing is modified here. l3_total is the rewritten IP packet's length;
 * for tagged frames *tci is the tag to send with. */
static __always_inline int hr_egress(struct xdp_md *ctx, const struct hr_pkt *p, __u32 slot,
				     __u32 l3_total, const struct egress_entry **eg, __u16 *tci,
				     __u32 *reason)
{
	const struct egress_entry *e = bpf_map_lookup_elem(&egress, &slot);
	if (!e) {
		*reason = HR_CNT_PASS_NO_NEXTHOP;
		return XDP_PASS;
	}
	if (e->pass) {
		/* Unresolved neighbour, no route, local, link down, ...:
		 * the stack gets the packet unmodified. */
		*reason = e->pass;
		return XDP_PASS;
	}
	if (l3_total > e->mtu) {
		*reason = HR_CNT_PASS_TOO_BIG;
		return XDP_PASS;
	}
	*eg = e;
	__u32 in = ctx->ingress_ifindex;
	/* The frame keeps its L2 length: a tagged frame leaves tagged (with
	 * the egress VLAN's tag, out of its own parent), an untagged one
	 * untagged. Anything else is left to the stack. */
	if (p->has_vlan) {
		if (!e->vlan_id || e->ifindex != in) {
			*reason = HR_CNT_PASS_NO_EGRESS;
			return XDP_PASS;
		}
		*tci = (p->vlan_tci & 0xF000) | (e->vlan_id & 0x0FFF);
		return XDP_TX;
	}
	if (e->vlan_id) {
		*reason = HR_CNT_PASS_NO_EGRESS;
		return XDP_PASS;
	}
	if (e->ifindex == in)
		return XDP_TX;
	/* The control plane marks a slot usable only while its device is in
	 * the devmap (and unmarks it before the device leaves), so the
	 * devmap is not looked up twice per packet. */
	return XDP_REDIRECT;
}

/* Write the new L2-L4 headers at the start of the (already resized)
 * packet. hdrs = l2 + l3 + UDP. Returns 0, or -1 if the packet is
 * shorter than the headers (cannot happen after a successful resize). */
static __always_inline int hr_write_headers(struct xdp_md *ctx, const struct hr_pkt *p,
					    const struct egress_entry *eg, __u16 tci,
					    const void *ip, const struct udphdr *udp,
					    const __u32 l2, const int v6)
{
	const __u32 l3 = v6 ? HR_IP6_HLEN : HR_IP4_HLEN;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;

	if (data + l2 + l3 + HR_UDP_HLEN > end)
		return -1;
	struct ethhdr *eth = data;
	__builtin_memcpy(eth->h_dest, eg->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eg->smac, ETH_ALEN);
	eth->h_proto = p->eth.h_proto;
	if (l2 > HR_ETH_HLEN) {
		struct hr_vlan_hdr *vh = data + HR_ETH_HLEN;
		vh->tci = bpf_htons(tci);
		vh->proto = p->l3_proto;
	}
	__builtin_memcpy(data + l2, ip, l3);
	__builtin_memcpy(data + l2 + l3, udp, HR_UDP_HLEN);
	return 0;
}

/* Resize the packet from its current length to want bytes at the tail.
 * The program does not set xdp.frags, so the frame is one buffer and its
 * length is data_end - data. */
static __always_inline int hr_trim(struct xdp_md *ctx, __u32 want)
{
	__u32 have = ctx->data_end - ctx->data;
	if (have > want)
		return bpf_xdp_adjust_tail(ctx, -(int)(have - want));
	return 0;
}

/* Commit a rewrite decided by hr_egress: move the packet start by
 * head_delta (+4 drops the ChannelData header, -4 makes room for one; the
 * headers are rewritten from the stack copies at the new start, never
 * moved in place), cut the packet to want bytes (padding, Ethernet
 * trailer) and write the new headers. Returns 0, or the pass reason if
 * the packet could not be changed: a failed head move leaves it as it
 * was; the later steps cannot fail for a packet that parsed. */
static __always_inline __u32 hr_commit(struct xdp_md *ctx, const struct hr_pkt *p,
				       const struct egress_entry *eg, __u16 tci, const void *ip,
				       const struct udphdr *udp, const __u32 l2, const int v6,
				       const int head_delta, __u32 want)
{
	if (head_delta && bpf_xdp_adjust_head(ctx, head_delta))
		return head_delta < 0 ? HR_CNT_PASS_HEADROOM : HR_CNT_PASS_MALFORMED;
	if (hr_trim(ctx, want))
		return HR_CNT_PASS_MALFORMED;
	if (hr_write_headers(ctx, p, eg, tci, ip, udp, l2, v6))
		return HR_CNT_PASS_MALFORMED;
	return 0;
}

/* Count a forwarded packet (the global counter pair at pkts, pkts + 1 for
 * its bytes; the channel's usage slot) and send it the way hr_egress
 * chose. A device missing from the devmap (never, see hr_egress) would
 * make the redirect hand the rewritten packet to the stack. */
static __always_inline int hr_send(int action, const struct egress_entry *eg, const __u32 pkts,
				   __u32 slot, const int to_peer, __u32 bytes)
{
	hr_count(pkts, 1);
	hr_count(pkts + 1, bytes);
	hr_chan_count(slot, to_peer, bytes);
	if (action == XDP_REDIRECT)
		return bpf_redirect_map(&tx_ports, eg->ifindex, XDP_PASS);
	return action;
}

/* client -> peer: strip the ChannelData header and padding, rewrite to
 * relay -> peer. w_chan and w_len are the header's two words as stored.
 *
 * Relay-to-relay (HR_F_HAIRPIN): the peer is another allocation of this
 * server whose client has a channel bound to this allocation's relayed
 * address. XDP cannot deliver to the host itself, so instead of relay ->
 * peer the packet becomes that client's ChannelData directly: listener ->
 * other client, the other channel's number, the same data (padding cut,
 * as over UDP it is optional, RFC 8656 section 12.5), counted on both
 * channels. The control plane keeps the entry's expiry at the earlier of
 * the two channels'. */
static __always_inline int hr_to_peer(struct xdp_md *ctx, const struct hr_pkt *p,
				      const struct c2p_val *v, __u16 w_chan, __u16 w_len,
				      const __u32 l2, const int v6)
{
	const __u32 l3 = v6 ? HR_IP6_HLEN : HR_IP4_HLEN;
	const __u32 hdrs = l2 + l3 + HR_UDP_HLEN;

	if (bpf_ktime_get_coarse_ns() >= v->expires_ns)
		return hr_pass(HR_CNT_PASS_EXPIRED);

	/* RFC 8656 section 12.4: the length field, not the UDP length, says
	 * how much data there is; over UDP up to 3 bytes of padding may
	 * follow (section 12.5). More than that, or less data than claimed,
	 * is left to userspace. */
	__u32 cd_len = bpf_ntohs(w_len);
	if (HR_CHANNELDATA_HLEN + cd_len > p->payload_len)
		return hr_pass(HR_CNT_PASS_MALFORMED);
	__u32 trail = p->payload_len - HR_CHANNELDATA_HLEN - cd_len;
	if (trail > HR_MAX_PAD)
		return hr_pass(HR_CNT_PASS_MALFORMED);
	if (cd_len > HR_MAX_DATA)
		return hr_pass(HR_CNT_PASS_TOO_BIG);
	__u8 ttl = v6 ? p->ip6.hop_limit : p->ip4.ttl;
	if (ttl <= 1)
		return hr_pass(HR_CNT_PASS_TTL);

	/* The removed padding bytes leave the UDP checksum. */
	__u64 pad_sub = 0;
	{
		void *data = (void *)(long)ctx->data;
		void *end = (void *)(long)ctx->data_end;
		__u8 *payload = data + hdrs;
#pragma unroll
		for (__u32 i = 0; i < HR_MAX_PAD; i++) {
			if (i < trail) {
				__u32 off = (HR_CHANNELDATA_HLEN + cd_len + i) & 0x7FFF;
				__u8 *b = payload + off;
				if ((void *)(b + 1) > end)
					return hr_pass(HR_CNT_PASS_MALFORMED);
				pad_sub = hr_csum_sub(pad_sub, hr_csum_byte(*b, off));
			}
		}
	}

	const int hp = v->flags & HR_F_HAIRPIN;
	const __u8 *src = hp ? v->hp_listener_addr : v->relay_addr;
	const __u8 *dst = hp ? v->hp_client_addr : v->peer_addr;
	/* The ChannelData header stays (with the other channel's number)
	 * on a hairpin, and goes otherwise. */
	const __u32 kept = hp ? HR_CHANNELDATA_HLEN : 0;
	__u16 new_ulen = HR_UDP_HLEN + kept + cd_len;
	struct udphdr u;
	__builtin_memcpy(&u, &p->udp, sizeof(u));
	u.source = hp ? v->hp_listener_port : v->relay_port;
	u.dest = hp ? v->hp_client_port : v->peer_port;
	u.len = bpf_htons(new_ulen);

	struct iphdr n4;
	struct ipv6hdr n6;
	__u64 sum;
	if (v6) {
		__builtin_memcpy(&n6, &p->ip6, sizeof(n6));
		__builtin_memcpy(&n6.saddr, src, 16);
		__builtin_memcpy(&n6.daddr, dst, 16);
		n6.payload_len = bpf_htons(new_ulen);
		n6.hop_limit = ttl - 1;
		sum = hr_csum_start(p->udp.check);
		sum = hr_csum_replace(sum, (const __u16 *)&p->ip6.saddr, (const __u16 *)&n6.saddr, 16);
	} else {
		__builtin_memcpy(&n4, &p->ip4, sizeof(n4));
		__builtin_memcpy(&n4.saddr, src, 4);
		__builtin_memcpy(&n4.daddr, dst, 4);
		n4.tot_len = bpf_htons(HR_IP4_HLEN + new_ulen);
		n4.ttl = ttl - 1;
		/* Toward a client DF is copied, as peer -> client does. */
		if (!hp)
			n4.frag_off = (v->flags & HR_F_DONT_FRAGMENT) ? bpf_htons(HR_IP_DF) : 0;
		/* n4.check still holds the old value, so it cancels out. */
		__u64 isum = hr_csum_start(p->ip4.check);
		isum = hr_csum_replace(isum, (const __u16 *)&p->ip4, (const __u16 *)&n4, 10);
		n4.check = hr_csum_finish(isum);
		sum = hr_csum_start(p->udp.check);
		sum = hr_csum_replace(sum, (const __u16 *)&p->ip4.saddr, (const __u16 *)&n4.saddr, 4);
	}
	/* RFC 768: a zero IPv4 UDP checksum means "none" and stays so. */
	if (v6 || p->udp.check != 0) {
		sum = hr_csum_sub(sum, p->udp.len); /* pseudo-header length */
		sum = hr_csum_add(sum, u.len);
		sum = hr_csum_replace(sum, (const __u16 *)&p->udp, (const __u16 *)&u, 3);
		sum = hr_csum_sub(sum, w_chan);
		if (hp)
			sum = hr_csum_add(sum, v->hp_channel); /* same offset, length kept */
		else
			sum = hr_csum_sub(sum, w_len);
		sum += pad_sub;
		u.check = hr_csum_finish(sum);
		if (u.check == 0)
			u.check = 0xFFFF;
	}

	const struct egress_entry *eg = 0;
	__u16 tci = 0;
	__u32 reason = HR_CNT_PASS_OTHER;
	int action = hr_egress(ctx, p, hp ? v->hp_egress : v->egress, l3 + new_ulen, &eg, &tci, &reason);
	if (action == XDP_PASS || !eg)
		return hr_pass(reason);
	reason = hr_commit(ctx, p, eg, tci, v6 ? (const void *)&n6 : (const void *)&n4, &u, l2, v6,
			   hp ? 0 : HR_CHANNELDATA_HLEN, hdrs + kept + cd_len);
	if (reason)
		return hr_pass(reason);
	if (hp) {
		void *data = (void *)(long)ctx->data;
		void *end = (void *)(long)ctx->data_end;
		__u16 *cd = data + hdrs;
		if ((void *)(cd + 1) > end)
			return hr_pass(HR_CNT_PASS_MALFORMED);
		cd[0] = v->hp_channel;
		hr_chan_count(v->hp_slot, 0, cd_len);
		return hr_send(action, eg, HR_CNT_FWD_HAIRPIN_PACKETS, v->slot, 1, cd_len);
	}
	return hr_send(action, eg, HR_CNT_FWD_TO_PEER_PACKETS, v->slot, 1, cd_len);
}

/* peer -> client: prepend ChannelData(channel, length) and rewrite to
 * listener -> client. No padding: over UDP it is optional (RFC 8656
 * section 12.5). */
static __always_inline int hr_to_client(struct xdp_md *ctx, const struct hr_pkt *p,
					const struct p2c_val *v, const __u32 l2, const int v6)
{
	const __u32 l3 = v6 ? HR_IP6_HLEN : HR_IP4_HLEN;
	const __u32 hdrs = l2 + l3 + HR_UDP_HLEN;

	if (bpf_ktime_get_coarse_ns() >= v->expires_ns)
		return hr_pass(HR_CNT_PASS_EXPIRED);
	__u32 plen = p->payload_len;
	__u32 new_ulen = HR_UDP_HLEN + HR_CHANNELDATA_HLEN + plen;
	if (plen > HR_MAX_DATA || l3 + new_ulen > 0xFFFF)
		return hr_pass(HR_CNT_PASS_TOO_BIG);
	__u8 ttl = v6 ? p->ip6.hop_limit : p->ip4.ttl;
	if (ttl <= 1)
		return hr_pass(HR_CNT_PASS_TTL);

	__u16 w_chan = v->channel;
	__u16 w_len = bpf_htons(plen);

	struct udphdr u;
	__builtin_memcpy(&u, &p->udp, sizeof(u));
	u.source = v->listener_port;
	u.dest = v->client_port;
	u.len = bpf_htons(new_ulen);

	struct iphdr n4;
	struct ipv6hdr n6;
	__u64 sum;
	if (v6) {
		__builtin_memcpy(&n6, &p->ip6, sizeof(n6));
		__builtin_memcpy(&n6.saddr, v->listener_addr, 16);
		__builtin_memcpy(&n6.daddr, v->client_addr, 16);
		n6.payload_len = bpf_htons(new_ulen);
		n6.hop_limit = ttl - 1;
		sum = hr_csum_start(p->udp.check);
		sum = hr_csum_replace(sum, (const __u16 *)&p->ip6.saddr, (const __u16 *)&n6.saddr, 16);
	} else {
		__builtin_memcpy(&n4, &p->ip4, sizeof(n4));
		__builtin_memcpy(&n4.saddr, v->listener_addr, 4);
		__builtin_memcpy(&n4.daddr, v->client_addr, 4);
		n4.tot_len = bpf_htons(HR_IP4_HLEN + new_ulen);
		n4.ttl = ttl - 1;
		__u64 isum = hr_csum_start(p->ip4.check);
		isum = hr_csum_replace(isum, (const __u16 *)&p->ip4, (const __u16 *)&n4, 10);
		n4.check = hr_csum_finish(isum);
		sum = hr_csum_start(p->udp.check);
		sum = hr_csum_replace(sum, (const __u16 *)&p->ip4.saddr, (const __u16 *)&n4.saddr, 4);
	}
	if (v6 || p->udp.check != 0) {
		sum = hr_csum_sub(sum, p->udp.len);
		sum = hr_csum_add(sum, u.len);
		sum = hr_csum_replace(sum, (const __u16 *)&p->udp, (const __u16 *)&u, 3);
		/* The inserted header starts the payload at an even offset. */
		sum = hr_csum_add(sum, w_chan);
		sum = hr_csum_add(sum, w_len);
		u.check = hr_csum_finish(sum);
		if (u.check == 0)
			u.check = 0xFFFF;
	}

	const struct egress_entry *eg = 0;
	__u16 tci = 0;
	__u32 reason = HR_CNT_PASS_OTHER;
	int action = hr_egress(ctx, p, v->egress, l3 + new_ulen, &eg, &tci, &reason);
	if (action == XDP_PASS || !eg)
		return hr_pass(reason);
	reason = hr_commit(ctx, p, eg, tci, v6 ? (const void *)&n6 : (const void *)&n4, &u, l2, v6,
			   -HR_CHANNELDATA_HLEN, hdrs + HR_CHANNELDATA_HLEN + plen);
	if (reason)
		return hr_pass(reason);
	{
		void *data = (void *)(long)ctx->data;
		void *end = (void *)(long)ctx->data_end;
		__u16 *cd = data + hdrs;
		if ((void *)(cd + 2) > end)
			return hr_pass(HR_CNT_PASS_MALFORMED);
		cd[0] = w_chan;
		cd[1] = w_len;
	}
	return hr_send(action, eg, HR_CNT_FWD_TO_CLIENT_PACKETS, v->slot, 0, plen);
}

static __always_inline void hr_addr(__u8 *dst, const struct hr_pkt *p, const int v6, const int src)
{
	if (v6)
		__builtin_memcpy(dst, src ? (const void *)&p->ip6.saddr : (const void *)&p->ip6.daddr, 16);
	else
		__builtin_memcpy(dst, src ? (const void *)&p->ip4.saddr : (const void *)&p->ip4.daddr, 4);
}

/* Classify a parsed UDP packet: ChannelData for a bound channel, payload
 * from a bound peer, or neither. l2 and v6 are compile time constants so
 * every header sits at a fixed offset. */
static __always_inline int hr_relay(struct xdp_md *ctx, const struct hr_pkt *p, const __u32 l2, const int v6)
{
	const __u32 l3 = v6 ? HR_IP6_HLEN : HR_IP4_HLEN;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u16 *payload = data + l2 + l3 + HR_UDP_HLEN;
	__u16 w_chan = 0, w_len = 0;
	int shaped = 0;

	if (p->payload_len >= HR_CHANNELDATA_HLEN) {
		if ((void *)(payload + 2) > end)
			return hr_pass(HR_CNT_PASS_MALFORMED);
		w_chan = payload[0];
		w_len = payload[1];
		__u16 ch = bpf_ntohs(w_chan);
		shaped = ch >= HR_CHANNEL_MIN && ch <= HR_CHANNEL_MAX;
	}
	if (shaped) {
		struct c2p_key k;
		__builtin_memset(&k, 0, sizeof(k));
		hr_addr(k.client_addr, p, v6, 1);
		hr_addr(k.listener_addr, p, v6, 0);
		k.client_port = p->udp.source;
		k.listener_port = p->udp.dest;
		k.channel = w_chan;
		k.family = v6 ? HR_FAMILY_V6 : HR_FAMILY_V4;
		struct c2p_val *v = bpf_map_lookup_elem(&c2p_channels, &k);
		if (v)
			return hr_to_peer(ctx, p, v, w_chan, w_len, l2, v6);
	}
	struct p2c_key pk;
	__builtin_memset(&pk, 0, sizeof(pk));
	hr_addr(pk.peer_addr, p, v6, 1);
	hr_addr(pk.relay_addr, p, v6, 0);
	pk.peer_port = p->udp.source;
	pk.relay_port = p->udp.dest;
	pk.family = v6 ? HR_FAMILY_V6 : HR_FAMILY_V4;
	struct p2c_val *pv = bpf_map_lookup_elem(&p2c_channels, &pk);
	if (pv)
		return hr_to_client(ctx, p, pv, l2, v6);
	return hr_pass(shaped ? HR_CNT_PASS_NO_ENTRY : HR_CNT_PASS_NOT_CHANNELDATA);
}

SEC("xdp")
int hybridrelay(struct xdp_md *ctx)
{
	struct hr_pkt p;
	int rc = hr_parse(ctx, &p);
	if (rc == HR_PARSE_MALFORMED)
		return hr_pass(HR_CNT_PASS_MALFORMED);
	if (rc != HR_PARSE_OK)
		return hr_pass(HR_CNT_PASS_OTHER);
	if (p.has_vlan)
		return p.family == HR_FAMILY_V6 ? hr_relay(ctx, &p, HR_ETH_HLEN + HR_VLAN_HLEN, 1)
						: hr_relay(ctx, &p, HR_ETH_HLEN + HR_VLAN_HLEN, 0);
	return p.family == HR_FAMILY_V6 ? hr_relay(ctx, &p, HR_ETH_HLEN, 1) : hr_relay(ctx, &p, HR_ETH_HLEN, 0);
}

/* Passes everything. Attached to the far end of a veth pair so that
 * XDP_TX/redirect into the pair delivers (veth needs an XDP program on the
 * receiving peer), and the baseline of the BPF_PROG_RUN benchmarks. */
SEC("xdp")
int pass_all(struct xdp_md *ctx)
{
	return XDP_PASS;
}

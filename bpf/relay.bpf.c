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
 *    every packet against bpf_jiffies64, which the verifier inlines into
 *    one load: no helper call; the loader converts expiries to jiffies
 *    early by the tick's lag and a drift allowance, so it is never late);
 *  - everything else is XDP_PASS, unmodified: the program never returns
 *    XDP_ABORTED, and XDP_DROP only in the listener pre-filter (a
 *    datagram to a UDP listener the server would discard by its framing
 *    alone) and for a bound channel's packet over its allocation's
 *    bandwidth-limit (meter.h), which userspace would drop on the same
 *    meter; it decides egress (the egress slot the control plane
 *    resolved, MTU, devmap) before it touches the packet;
 *  - egress never depends on the host forwarding IP: bpf_fib_lookup is
 *    not used (it refuses every lookup when forwarding is off);
 *  - checksums are updated incrementally (RFC 1624); a zero IPv4 UDP
 *    checksum stays zero;
 *  - counters are per-CPU, per-channel usage is in chan_stats.
 *
 * Both directions (and relay to relay) take one path, hr_forward,
 * parameterised by what happens to the ChannelData header (enum hr_cd_op).
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
#include "words.h"
#include "parse.h"
#include "meter.h"
#include "lookup.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* bpf2go -type finds only types the object's BTF has, and clang emits the
 * types of what the object defines. This variable puts the constant enums
 * of consts.h there. Its section is none the loader (cilium/ebpf) makes a
 * map of, so it costs nothing at run time. */
struct hr_btf_anchor {
	enum hr_family family;
	enum hr_chan_flag flag;
	enum hr_map_size map_size;
	enum hr_chandata_limit chandata;
	enum hr_listener_flag listener;
	enum hr_stun stun;
} hr_btf_anchor SEC(".hr_btf") = {HR_FAMILY_V4, HR_F_DONT_FRAGMENT, HR_DEFAULT_MAX_CHANNELS, HR_CHANNEL_MIN,
				  HR_L_PREFILTER, HR_STUN_HLEN};

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

/* The listener pre-filter's drop, the program's only XDP_DROP. */
static __attribute__((noinline)) int hr_drop(enum hr_counter reason)
{
	hr_count(reason, 1);
	return XDP_DROP;
}

/* The drop counter of a framing the server discards; 0 for STUN and
 * ChannelData, which go on to userspace. */
static __always_inline __u32 hr_prefilter_reason(enum hr_framing f)
{
	switch (f) {
	case HR_FRAMING_SHORT:
		return HR_CNT_DROP_PREFILTER_SHORT;
	case HR_FRAMING_NOT_TURN:
		return HR_CNT_DROP_PREFILTER_NOT_TURN;
	case HR_FRAMING_STUN_LENGTH:
		return HR_CNT_DROP_PREFILTER_STUN_LENGTH;
	case HR_FRAMING_CHANNELDATA_LENGTH:
		return HR_CNT_DROP_PREFILTER_CHANNELDATA_LENGTH;
	default:
		return 0;
	}
}

/* Which half of a channel's usage (struct chan_stats) a packet counts in. */
enum hr_usage_dir {
	HR_USAGE_TO_PEER,
	HR_USAGE_TO_CLIENT,
};

static __always_inline void hr_chan_count(__u32 slot, const enum hr_usage_dir dir, __u64 bytes)
{
	/* Per-CPU slot: both directions of a channel may run on different
	 * CPUs without sharing a cache line, and no atomics are needed. */
	struct chan_stats *s = bpf_map_lookup_elem(&chan_usage, &slot);
	if (!s)
		return;
	if (dir == HR_USAGE_TO_PEER) {
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

/* Where a forwarded packet goes and how it is counted: the fields of one
 * c2p or p2c entry (addresses point into the map value). */
struct hr_target {
	__u64 expires_jiffies;
	const __u32 *saddr; /* new source: relayed or listener address (4-aligned in the value) */
	const __u32 *daddr; /* new destination: peer or client address */
	__be16 sport;
	__be16 dport;
	__be16 channel;    /* the outgoing header's channel number (not HR_CD_STRIP) */
	__u16 df;          /* enum hr_df */
	__u32 egress;      /* egress slot of the destination */
	__u32 slot;        /* usage slot, counted in the op's direction */
	__u32 other_slot;  /* HR_CD_RENUMBER: the other channel's slot, counted toward its client */
	__u32 meter;       /* the allocation's bandwidth meter; 0: not limited */
};

/* The new IP and UDP header words that are not copied from the entry
 * (words.h): IPv4 words 0-2, IPv6 words 0-1 (the addresses follow), and
 * both UDP words. */
struct hr_new_hdrs {
	__u32 ip[3];
	__u32 udp[2];
};

/* Write the new L2-L4 headers at the start of the (already resized)
 * packet, in whole words: the MACs from the egress entry, the addresses
 * from t, the rest from h. Returns 0, or -1 if the packet is shorter than
 * the headers (cannot happen after a successful resize). */
static __always_inline int hr_write_headers(struct xdp_md *ctx, const struct hr_pkt *p,
					    const struct egress_entry *eg, __u16 tci,
					    const struct hr_new_hdrs *h, const struct hr_target *t,
					    const __u32 l2, const int fam)
{
	const __u32 l3 = fam == HR_FAMILY_V6 ? HR_IP6_HLEN : HR_IP4_HLEN;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;

	if (data + l2 + l3 + HR_UDP_HLEN > end)
		return -1;
	/* Destination then source MAC: the entry's first 12 bytes. */
	const __u32 *mac = (const __u32 *)eg;
	__u32 *w = data;
	w[0] = mac[0];
	w[1] = mac[1];
	w[2] = mac[2];
	*(__be16 *)(data + 2 * ETH_ALEN) = p->eth_proto;
	if (l2 > HR_ETH_HLEN)
		*(__u32 *)(data + HR_ETH_HLEN) = hr_w32(bpf_htons(tci), p->l3_proto);
	__u32 *ip = data + l2;
	if (fam == HR_FAMILY_V6) {
		ip[0] = h->ip[0];
		ip[1] = h->ip[1];
#pragma unroll
		for (int i = 0; i < 4; i++) {
			ip[HR_IP6_W_SADDR + i] = t->saddr[i];
			ip[HR_IP6_W_DADDR + i] = t->daddr[i];
		}
	} else {
#pragma unroll
		for (int i = 0; i < 3; i++)
			ip[i] = h->ip[i];
		ip[HR_IP4_W_SADDR] = t->saddr[0];
		ip[HR_IP4_W_DADDR] = t->daddr[0];
	}
	__u32 *udp = data + l2 + l3;
	udp[0] = h->udp[0];
	udp[1] = h->udp[1];
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

/* What a forward does with the ChannelData header (RFC 8656 section 12.4).
 * Over UDP padding is optional (section 12.5): the program never sends
 * any, and cuts what arrives. */
enum hr_cd_op {
	HR_CD_STRIP,    /* client -> peer: header and padding removed */
	HR_CD_RENUMBER, /* relay to relay: header kept with the other channel's number, padding removed */
	HR_CD_PREPEND,  /* peer -> client: a header is added */
};

/* How the outgoing IPv4 header's DF bit is set (RFC 8656 section 14). */
enum hr_df {
	HR_DF_COPY,  /* toward a client: as it arrived */
	HR_DF_CLEAR, /* toward a peer, DONT-FRAGMENT not asked */
	HR_DF_SET,   /* toward a peer, DONT-FRAGMENT asked */
};

/* The counter pair (packets; bytes at +1) and usage half of each op. */
static __always_inline __u32 hr_fwd_counter(const enum hr_cd_op op)
{
	if (op == HR_CD_STRIP)
		return HR_CNT_FWD_TO_PEER_PACKETS;
	if (op == HR_CD_RENUMBER)
		return HR_CNT_FWD_HAIRPIN_PACKETS;
	return HR_CNT_FWD_TO_CLIENT_PACKETS;
}

/* Forward one datagram to t: decide egress, build the new IP and UDP
 * headers on the stack with incrementally updated checksums (RFC 1624),
 * then move the packet start, cut the tail, write the headers and the
 * ChannelData header op asks for, count and send. cd is the arriving
 * ChannelData header (not HR_CD_PREPEND). Nothing is modified before
 * egress is decided, and anything not forwarded is passed unmodified,
 * with its reason counted.
 *
 * IP header fields follow RFC 8656 section 14 "preferred behavior": the
 * TTL/hop limit is one less (<= 1: passed), DSCP and ECN are copied, DF as
 * t->df says. */
static __always_inline int hr_forward(struct xdp_md *ctx, const struct hr_pkt *p, const struct hr_target *t,
				      const struct hr_chandata *cd, const enum hr_cd_op op, const __u32 l2,
				      const int fam)
{
	const int v6 = fam == HR_FAMILY_V6;
	const __u32 l3 = v6 ? HR_IP6_HLEN : HR_IP4_HLEN;
	const __u32 hdrs = l2 + l3 + HR_UDP_HLEN;
	/* Bytes of ChannelData header before and after the rewrite. */
	const __u32 cd_in = op == HR_CD_PREPEND ? 0 : HR_CHANNELDATA_HLEN;
	const __u32 cd_out = op == HR_CD_STRIP ? 0 : HR_CHANNELDATA_HLEN;

	if (bpf_jiffies64() >= t->expires_jiffies)
		return hr_pass(HR_CNT_PASS_EXPIRED);

	__u32 data_len = p->payload_len;
	__u32 trail = 0;
	if (op != HR_CD_PREPEND && hr_chandata_len(cd, p->payload_len, &data_len, &trail) != HR_PARSE_OK)
		return hr_pass(HR_CNT_PASS_MALFORMED);
	__u32 new_ulen = HR_UDP_HLEN + cd_out + data_len;
	if (data_len > HR_MAX_DATA || l3 + new_ulen > 0xFFFF)
		return hr_pass(HR_CNT_PASS_TOO_BIG);
	__u8 ttl = v6 ? p->ip6.hop_limit : p->ip4.ttl;
	if (ttl <= 1)
		return hr_pass(HR_CNT_PASS_TTL);

	/* The removed padding bytes leave the UDP checksum. */
	__u64 pad_sub = 0;
	if (op != HR_CD_PREPEND) {
		void *data = (void *)(long)ctx->data;
		void *end = (void *)(long)ctx->data_end;
		__u8 *payload = data + hdrs;
#pragma unroll
		for (__u32 i = 0; i < HR_MAX_PAD; i++) {
			if (i < trail) {
				__u32 off = (HR_CHANNELDATA_HLEN + data_len + i) & 0x7FFF;
				__u8 *b = payload + off;
				if ((void *)(b + 1) > end)
					return hr_pass(HR_CNT_PASS_MALFORMED);
				pad_sub = hr_csum_sub(pad_sub, hr_csum_byte(*b, off));
			}
		}
	}
	/* The outgoing ChannelData header's words, and the UDP length
	 * fields, as stored. */
	const __be16 out_chan = t->channel;
	const __be16 out_len = bpf_htons(data_len);
	const __be16 old_ulen = p->udp.len;
	const __be16 ulen = bpf_htons(new_ulen);

	/* The new headers, word by word from the old ones (words.h), and
	 * the checksum updates over the changed words. */
	struct hr_new_hdrs h;
	__u64 sum = hr_csum_start(p->udp.check);
	if (v6) {
		h.ip[0] = p->ip_w[0]; /* version, traffic class (DSCP, ECN), flow label */
		h.ip[1] = hr_w32(ulen, hr_w16(p->ip6.nexthdr, ttl - 1));
		sum = hr_csum_replace32(sum, p->ip_w + HR_IP6_W_SADDR, t->saddr, 4);
		sum = hr_csum_replace32(sum, p->ip_w + HR_IP6_W_DADDR, t->daddr, 4);
	} else {
		/* version, IHL, DSCP, ECN; total length */
		h.ip[0] = hr_w32(hr_w32_first(p->ip_w[0]), bpf_htons(HR_IP4_HLEN + new_ulen));
		/* identification; flags (no fragments get here) */
		h.ip[1] = t->df == HR_DF_COPY ? p->ip_w[1]
					      : hr_w32(p->ip4.id, t->df == HR_DF_SET ? bpf_htons(HR_IP_DF) : 0);
		/* TTL, protocol; the old checksum, which cancels out */
		h.ip[2] = hr_w32(hr_w16(ttl - 1, p->ip4.protocol), p->ip4.check);
		__u64 isum = hr_csum_start(p->ip4.check);
		isum = hr_csum_replace32(isum, p->ip_w, h.ip, 3);
		isum = hr_csum_replace32(isum, p->ip_w + HR_IP4_W_SADDR, t->saddr, 1);
		isum = hr_csum_replace32(isum, p->ip_w + HR_IP4_W_DADDR, t->daddr, 1);
		h.ip[2] = hr_w32(hr_w32_first(h.ip[2]), hr_csum_finish(isum));
		sum = hr_csum_replace32(sum, p->ip_w + HR_IP4_W_SADDR, t->saddr, 1);
		sum = hr_csum_replace32(sum, p->ip_w + HR_IP4_W_DADDR, t->daddr, 1);
	}
	h.udp[0] = hr_w32(t->sport, t->dport);
	__u16 ucheck = 0;
	/* RFC 768: a zero IPv4 UDP checksum means "none" and stays so. */
	if (v6 || p->udp.check != 0) {
		/* The length is in the pseudo-header and in the UDP header. */
		sum = hr_csum_sub(sum, old_ulen);
		sum = hr_csum_add(sum, ulen);
		sum = hr_csum_sub(sum, old_ulen);
		sum = hr_csum_add(sum, ulen);
		sum = hr_csum_replace32(sum, p->udp_w, h.udp, 1);
		/* Both headers start the payload, at an even offset. */
		if (op == HR_CD_RENUMBER) {
			/* The length word stays. */
			sum = hr_csum_sub(sum, cd->channel);
			sum = hr_csum_add(sum, out_chan);
		} else if (op == HR_CD_STRIP) {
			sum = hr_csum_sub(sum, cd->channel);
			sum = hr_csum_sub(sum, cd->len);
		} else {
			sum = hr_csum_add(sum, out_chan);
			sum = hr_csum_add(sum, out_len);
		}
		sum += pad_sub;
		ucheck = hr_csum_finish(sum);
		if (ucheck == 0)
			ucheck = 0xFFFF;
	}
	h.udp[1] = hr_w32(ulen, ucheck);

	const struct egress_entry *eg = 0;
	__u16 tci = 0;
	__u32 reason = HR_CNT_PASS_OTHER;
	int action = hr_egress(ctx, p, t->egress, l3 + new_ulen, &eg, &tci, &reason);
	if (action == XDP_PASS || !eg)
		return hr_pass(reason);
	/* bandwidth-limit: the second kind of drop the program may make,
	 * only of what userspace would drop on the same meter. */
	if (t->meter) {
		const enum hr_meter_verdict mv = hr_meter_take(t->meter, data_len);
		if (mv == HR_METER_OVER) {
			hr_count(HR_CNT_DROP_BANDWIDTH_PACKETS, 1);
			hr_count(HR_CNT_DROP_BANDWIDTH_BYTES, data_len);
			return XDP_DROP;
		}
		if (mv == HR_METER_BUSY)
			return hr_pass(HR_CNT_PASS_METER_BUSY);
	}

	/* Commit. The head moves by the header size difference (+4 drops
	 * the ChannelData header, -4 makes room for one); the L2-L4 headers
	 * are rewritten from the stack copies at the new start, never moved
	 * in place. A failed head move leaves the packet as it was; the
	 * later steps cannot fail for a packet that parsed. */
	const int head_delta = (int)cd_in - (int)cd_out;
	if (head_delta && bpf_xdp_adjust_head(ctx, head_delta))
		return hr_pass(head_delta < 0 ? HR_CNT_PASS_HEADROOM : HR_CNT_PASS_MALFORMED);
	if (hr_trim(ctx, hdrs + cd_out + data_len))
		return hr_pass(HR_CNT_PASS_MALFORMED);
	if (hr_write_headers(ctx, p, eg, tci, &h, t, l2, fam))
		return hr_pass(HR_CNT_PASS_MALFORMED);
	if (op != HR_CD_STRIP) {
		void *data = (void *)(long)ctx->data;
		void *end = (void *)(long)ctx->data_end;
		void *w = data + hdrs;
		if (w + HR_CHANNELDATA_HLEN > end)
			return hr_pass(HR_CNT_PASS_MALFORMED);
		if (op == HR_CD_PREPEND)
			*(__u32 *)w = hr_w32(out_chan, out_len);
		else
			*(__be16 *)w = out_chan;
	}

	/* Count (the global pair, the channel's usage; a relay-to-relay
	 * packet also on the other channel, toward its client) and send the
	 * way hr_egress chose. A device missing from the devmap (never, see
	 * hr_egress) would make the redirect hand the rewritten packet to
	 * the stack. */
	const __u32 pkts = hr_fwd_counter(op);
	hr_count(pkts, 1);
	hr_count(pkts + 1, data_len);
	if (op == HR_CD_RENUMBER)
		hr_chan_count(t->other_slot, HR_USAGE_TO_CLIENT, data_len);
	hr_chan_count(t->slot, op == HR_CD_PREPEND ? HR_USAGE_TO_CLIENT : HR_USAGE_TO_PEER, data_len);
	if (action == XDP_REDIRECT)
		return bpf_redirect_map(&tx_ports, eg->ifindex, XDP_PASS);
	return action;
}

/* client -> peer: strip the ChannelData header and padding, rewrite to
 * relay -> peer.
 *
 * Relay-to-relay (HR_F_HAIRPIN): the peer is another allocation of this
 * server whose client has a channel bound to this allocation's relayed
 * address. XDP cannot deliver to the host itself, so instead of relay ->
 * peer the packet becomes that client's ChannelData directly: listener ->
 * other client, the other channel's number, the same data (padding cut),
 * counted on both channels. The control plane keeps the entry's expiry at
 * the earlier of the two channels'. */
static __always_inline int hr_to_peer(struct xdp_md *ctx, const struct hr_pkt *p, const struct c2p_val *v,
				      const struct hr_chandata *cd, const __u32 l2, const int fam)
{
	struct hr_target t = {.expires_jiffies = v->expires_jiffies, .slot = v->slot, .meter = v->meter};
	if (v->flags & HR_F_HAIRPIN) {
		t.saddr = (const __u32 *)v->hp_listener_addr;
		t.daddr = (const __u32 *)v->hp_client_addr;
		t.sport = v->hp_listener_port;
		t.dport = v->hp_client_port;
		t.channel = v->hp_channel;
		t.df = HR_DF_COPY; /* toward a client, as peer -> client does */
		t.egress = v->hp_egress;
		t.other_slot = v->hp_slot;
		return hr_forward(ctx, p, &t, cd, HR_CD_RENUMBER, l2, fam);
	}
	t.saddr = (const __u32 *)v->relay_addr;
	t.daddr = (const __u32 *)v->peer_addr;
	t.sport = v->relay_port;
	t.dport = v->peer_port;
	t.df = (v->flags & HR_F_DONT_FRAGMENT) ? HR_DF_SET : HR_DF_CLEAR;
	t.egress = v->egress;
	return hr_forward(ctx, p, &t, cd, HR_CD_STRIP, l2, fam);
}

/* peer -> client: prepend ChannelData(channel, length) and rewrite to
 * listener -> client. */
static __always_inline int hr_to_client(struct xdp_md *ctx, const struct hr_pkt *p, const struct p2c_val *v,
					const __u32 l2, const int fam)
{
	const struct hr_target t = {
		.expires_jiffies = v->expires_jiffies,
		.saddr = (const __u32 *)v->listener_addr,
		.daddr = (const __u32 *)v->client_addr,
		.sport = v->listener_port,
		.dport = v->client_port,
		.channel = v->channel,
		.df = HR_DF_COPY,
		.egress = v->egress,
		.slot = v->slot,
		.meter = v->meter,
	};
	return hr_forward(ctx, p, &t, 0, HR_CD_PREPEND, l2, fam);
}

/* Which end of the packet an address is copied from. */
enum hr_end {
	HR_END_SRC,
	HR_END_DST,
};

union hr_listener_key {
	struct listener_key k;
	__u32 w[5];
};
_Static_assert(sizeof(struct listener_key) == 20 && __builtin_offsetof(struct listener_key, port) == 16 &&
		       __builtin_offsetof(struct listener_key, family) == 18,
	       "listener_key words");

/* One end's address words in the parsed headers. */
static __always_inline const __u32 *hr_addr_words(const struct hr_pkt *p, const int fam, const enum hr_end end)
{
	if (fam == HR_FAMILY_V6)
		return p->ip_w + (end == HR_END_SRC ? HR_IP6_W_SADDR : HR_IP6_W_DADDR);
	return p->ip_w + (end == HR_END_SRC ? HR_IP4_W_SADDR : HR_IP4_W_DADDR);
}

/* One end's address as a key's two 64-bit words (an IPv4 address in the
 * first 4 bytes, the rest zero, as structs.h lays it out). */
static __always_inline void hr_key_addr(__u64 *w, const struct hr_pkt *p, const int fam, const enum hr_end end)
{
	const __u32 *a = hr_addr_words(p, fam, end);
	if (fam == HR_FAMILY_V6) {
		w[0] = hr_w64(a[0], a[1]);
		w[1] = hr_w64(a[2], a[3]);
	} else {
		w[0] = hr_w64(a[0], 0);
		w[1] = 0;
	}
}

/* Classify a parsed UDP packet: ChannelData for a bound channel, payload
 * from a bound peer, or neither. l2 and fam are compile time constants so
 * every header sits at a fixed offset. */
static __always_inline int hr_relay(struct xdp_md *ctx, const struct hr_pkt *p, const __u32 l2, const int fam)
{
	const __u32 l3 = fam == HR_FAMILY_V6 ? HR_IP6_HLEN : HR_IP4_HLEN;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct hr_chandata cd;
	enum hr_cd_shape shape;

	if (hr_parse_chandata(p, data + l2 + l3 + HR_UDP_HLEN, end, &cd, &shape) != HR_PARSE_OK)
		return hr_pass(HR_CNT_PASS_MALFORMED);
	if (shape == HR_CD_SHAPED) {
		union hr_entry_key k;
		hr_key_addr(&k.w[0], p, fam, HR_END_SRC); /* client */
		hr_key_addr(&k.w[2], p, fam, HR_END_DST); /* listener */
		/* client port, listener port; channel, family, pad */
		k.w[4] = hr_w64(p->udp_w[0], hr_w32(cd.channel, hr_w16(fam, 0)));
		struct c2p_val *v = hr_fast_lookup(&fast_c2p, &k);
		if (!v)
			v = bpf_map_lookup_elem(&c2p_channels, &k.c2p);
		if (v)
			return hr_to_peer(ctx, p, v, &cd, l2, fam);
	}
	union hr_entry_key pk;
	hr_key_addr(&pk.w[0], p, fam, HR_END_SRC); /* peer */
	hr_key_addr(&pk.w[2], p, fam, HR_END_DST); /* relayed address */
	/* peer port, relay port; family, pad */
	pk.w[4] = hr_w64(p->udp_w[0], hr_w32(hr_w16(fam, 0), 0));
	struct p2c_val *pv = hr_fast_lookup(&fast_p2c, &pk);
	if (!pv)
		pv = bpf_map_lookup_elem(&p2c_channels, &pk.p2c);
	if (pv)
		return hr_to_client(ctx, p, pv, l2, fam);

	/* Pre-filter: a datagram to one of the server's UDP listeners that
	 * it would discard by its framing alone is dropped here, before it
	 * costs the stack and userspace anything. Only listener addresses
	 * the control plane installed, only UDP that parsed, only what is
	 * not forwarded above. */
	union hr_listener_key lk;
	const __u32 *la = hr_addr_words(p, fam, HR_END_DST);
#pragma unroll
	for (int i = 0; i < 4; i++)
		lk.w[i] = fam == HR_FAMILY_V6 || i == 0 ? la[i] : 0;
	lk.w[4] = hr_w32(p->udp.dest, hr_w16(fam, 0));
	const struct listener_val *l = bpf_map_lookup_elem(&listeners, &lk.k);
	if (l && (l->flags & HR_L_PREFILTER)) {
		__u32 reason = hr_prefilter_reason(hr_classify(p, data + l2 + l3 + HR_UDP_HLEN, end, &cd));
		if (reason)
			return hr_drop(reason);
	}
	return hr_pass(shape == HR_CD_SHAPED ? HR_CNT_PASS_NO_ENTRY : HR_CNT_PASS_NOT_CHANNELDATA);
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
	/* One specialisation per L2 length and family: fixed offsets. */
	if (p.has_vlan)
		return p.family == HR_FAMILY_V6 ? hr_relay(ctx, &p, HR_ETH_HLEN + HR_VLAN_HLEN, HR_FAMILY_V6)
						: hr_relay(ctx, &p, HR_ETH_HLEN + HR_VLAN_HLEN, HR_FAMILY_V4);
	return p.family == HR_FAMILY_V6 ? hr_relay(ctx, &p, HR_ETH_HLEN, HR_FAMILY_V6)
					: hr_relay(ctx, &p, HR_ETH_HLEN, HR_FAMILY_V4);
}

/* Clock probe for the loader (BPF_PROG_RUN only, never attached): writes
 * bpf_ktime_get_ns() (CLOCK_MONOTONIC) then bpf_jiffies64() into the first
 * 16 bytes of the frame, so pkg/loader can relate the two clocks. */
SEC("xdp")
int hr_clock(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u64 *w = data;
	if ((void *)(w + 2) > end)
		return XDP_PASS;
	w[0] = bpf_ktime_get_ns();
	w[1] = bpf_jiffies64();
	return XDP_PASS;
}

/* Passes everything. Attached to the far end of a veth pair so that
 * XDP_TX/redirect into the pair delivers (veth needs an XDP program on the
 * receiving peer), and the baseline of the BPF_PROG_RUN benchmarks. */
SEC("xdp")
int pass_all(struct xdp_md *ctx)
{
	return XDP_PASS;
}

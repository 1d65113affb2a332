/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Constants shared by the XDP program and (through bpf2go -type) the Go loader. */
#ifndef HR_CONSTS_H
#define HR_CONSTS_H

/* EtherTypes (IEEE 802.3 / 802.1Q). */
#define HR_ETH_P_IP     0x0800
#define HR_ETH_P_IPV6   0x86DD
#define HR_ETH_P_8021Q  0x8100
#define HR_ETH_P_8021AD 0x88A8

#define HR_ETH_HLEN  14
#define HR_VLAN_HLEN 4
#define HR_IP4_HLEN  20 /* IHL 5: packets with IPv4 options are passed */
#define HR_IP6_HLEN  40 /* no extension headers: anything else is passed */
#define HR_UDP_HLEN  8

#define HR_IPPROTO_UDP 17
#define HR_AF_INET     2
#define HR_AF_INET6    10

/* IPv4 flags/fragment offset field (RFC 791 section 3.1). */
#define HR_IP_DF     0x4000
#define HR_IP_MF     0x2000
#define HR_IP_OFFSET 0x1FFF

/* The constants below are enums, not macros, so that they are in the
 * object's BTF and bpf2go -type generates them for the Go loader
 * (pkg/loader uses only the generated values). */

/* ChannelData (RFC 8656 section 12.4): 2-byte channel number, 2-byte
 * length, then the data. The first two bits are 01, which tells
 * ChannelData apart from STUN (00). RFC 8656 section 12 allows channels
 * 0x4000-0x4FFF, RFC 5766 section 11 allowed 0x4000-0x7FFF and clients
 * still use it (coturn's turnutils_uclient does); the control plane
 * decides which numbers it binds, so the program accepts the whole 01
 * range and forwards only installed channels. Over UDP the padding to a
 * multiple of 4 is optional (section 12.5), so at most 3 bytes may follow
 * the data. */
enum hr_chandata_limit {
	HR_CHANNELDATA_HLEN = 4,
	HR_CHANNEL_MIN = 0x4000,
	HR_CHANNEL_MAX = 0x7FFF,
	HR_MAX_PAD = 3,
};

/* Address family tags in map keys (not AF_* values: they are stable on
 * every OS the loader may be built on). */
enum hr_family {
	HR_FAMILY_V4 = 4,
	HR_FAMILY_V6 = 6,
};

/* c2p_val.flags */
enum hr_chan_flag {
	HR_F_DONT_FRAGMENT = 0x1,
	HR_F_HAIRPIN = 0x2, /* relay-to-relay: rewrite to the hp_* client */
};

/* Defaults for map sizes; the loader overrides max_entries before load
 * (the egress table gets two slots per channel: one per direction). */
enum hr_map_size {
	HR_DEFAULT_MAX_CHANNELS = 1024,
	HR_DEFAULT_MAX_EGRESS = 2048,
	HR_FAST_WAYS = 2, /* ways per set of the fast tables */
	HR_MAX_IFACES = 64,
	HR_MAX_LISTENERS = 256, /* UDP listener addresses (the loader expands wildcards) */
};

/* STUN message header (RFC 8489 section 5): 20 bytes, the magic cookie at
 * offset 4. */
enum hr_stun {
	HR_STUN_HLEN = 20,
	HR_STUN_MAGIC = 0x2112A442,
};

/* listener_val.flags */
enum hr_listener_flag {
	HR_L_PREFILTER = 0x1, /* drop datagrams neither STUN nor ChannelData shaped */
};

/* Indexes of the per-CPU counters array. Every XDP_PASS has exactly one
 * reason, and so has every XDP_DROP of the listener pre-filter;
 * HR_CNT_PASS_MAP_FULL is written by userspace only (a channel the control
 * plane could not install), the program never touches it. */
enum hr_counter {
	HR_CNT_FWD_TO_PEER_PACKETS = 0,
	HR_CNT_FWD_TO_PEER_BYTES,    /* ChannelData data bytes relayed */
	HR_CNT_FWD_TO_CLIENT_PACKETS,
	HR_CNT_FWD_TO_CLIENT_BYTES,  /* peer payload bytes relayed */
	HR_CNT_FWD_HAIRPIN_PACKETS,  /* relay-to-relay: ChannelData to another of our clients */
	HR_CNT_FWD_HAIRPIN_BYTES,
	HR_CNT_PASS_NO_ENTRY,        /* ChannelData-shaped, no channel/peer entry */
	HR_CNT_PASS_EXPIRED,         /* entry found, expiry passed */
	HR_CNT_PASS_TOO_BIG,         /* result exceeds egress MTU */
	/* Egress reasons: the control plane resolves every destination
	 * (route, neighbour, link) into the egress table and stores the
	 * reason a destination cannot be forwarded to in its entry. */
	HR_CNT_PASS_NO_NEIGH,        /* next hop's link-layer address unresolved (ARP/ND) */
	HR_CNT_PASS_NO_ROUTE,        /* no route: unreachable, blackhole, prohibit */
	HR_CNT_PASS_LOCAL,           /* destination is this host (relay-to-relay hairpin) */
	HR_CNT_PASS_LINK_DOWN,       /* egress link down */
	HR_CNT_PASS_NO_NEXTHOP,      /* egress not resolved (yet), or no such slot */
	HR_CNT_PASS_NO_EGRESS,       /* egress device not transmittable: not in tx_ports, VLAN mismatch, not Ethernet */
	HR_CNT_PASS_NOT_CHANNELDATA, /* UDP, not ChannelData, no peer entry */
	HR_CNT_PASS_MALFORMED,       /* truncated, inconsistent lengths, bad IPv4 header checksum */
	HR_CNT_PASS_HEADROOM,        /* bpf_xdp_adjust_head(-4) refused */
	HR_CNT_PASS_MAP_FULL,        /* userspace: channel left to userspace, table full */
	HR_CNT_PASS_TTL,             /* TTL/hop limit <= 1 (RFC 8656 section 14) */
	HR_CNT_PASS_OTHER,           /* not IP/UDP, IPv4 options, fragments, IPv6 ext headers, QinQ */
	HR_CNT_DROP_BANDWIDTH_PACKETS, /* over the allocation's bandwidth-limit (meter.h): XDP_DROP */
	HR_CNT_DROP_BANDWIDTH_BYTES,
	HR_CNT_PASS_METER_BUSY,      /* the meter could not decide (contended): userspace meters it */
	/* The listener pre-filter (docs/design.md "Kernel-path invariants"):
	 * UDP to a listener address the server would discard by its framing
	 * alone (internal/turnproto ClassifyDatagram), dropped. */
	HR_CNT_DROP_PREFILTER_SHORT,              /* under 4 bytes, or a STUN header under 20 */
	HR_CNT_DROP_PREFILTER_NOT_TURN,           /* first bits 10/11, or 00 without the magic cookie */
	HR_CNT_DROP_PREFILTER_STUN_LENGTH,        /* STUN length not a multiple of 4 or not the datagram's */
	HR_CNT_DROP_PREFILTER_CHANNELDATA_LENGTH, /* ChannelData length beyond the datagram, or more than padding after it */
	HR_CNT_MAX,
};

#endif

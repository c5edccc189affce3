/* SPDX-License-Identifier: (MIT OR GPL-2.0) */
/* mqlb_kern_user.h: constants, map layouts and the flow hash shared by the
 * XDP programs in bpf/ and their loader, mqlb-xdp. */
#ifndef MQLB_KERN_USER_H
#define MQLB_KERN_USER_H

/* Table sizes. The ring array holds MQLB_MAX_VIPS rings of ring_size slots
 * each; ring_size is a prime chosen at load time (65537 by default). */
#define MQLB_MAX_VIPS 32
#define MQLB_MAX_REALS 1024 /* real 0 is "none": an empty ring slot */
#define MQLB_RING_DEFAULT 65537
#define MQLB_RING_MAX 1000003
#define MQLB_CONNS_MAX 1048576

/* Encapsulation chosen at load time. */
#define MQLB_ENCAP_L2 0   /* rewrite the destination MAC to the real's */
#define MQLB_ENCAP_IPIP 1 /* IPIP (IPv4) or IPv6-in-IPv6 to the gateway */

/* vip flags */
#define MQLB_VIP_SRC_HASH (1u << 0) /* pick the real by source address only */
#define MQLB_VIP_ADDR (1u << 1)     /* port 0 proto 0: the address is a VIP */

/* real flags */
#define MQLB_REAL_VALID (1u << 0)

/* Key of the vips hash: the address (IPv4 in addr[0]), port in network
 * order, IP protocol, address family (4 or 6). */
struct mqlb_vip_key {
	__u32 addr[4];
	__u16 port;
	__u8 proto;
	__u8 family;
};

struct mqlb_vip {
	__u32 num; /* index into rings, members and vip_stats */
	__u32 flags;
};

struct mqlb_real {
	__u32 addr[4];
	__u8 mac[6];
	__u8 family;
	__u8 flags;
};

/* Key of the connection table: the client's flow towards the VIP. */
struct mqlb_flow {
	__u32 src[4];
	__u32 dst[4];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

/* Key of the IPv4 connection table: 16 bytes to hash and compare instead
 * of mqlb_flow's 40, on the path every packet of an established flow takes. */
struct mqlb_flow4 {
	__u32 src;
	__u32 dst;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
} __attribute__((aligned(8))); /* compared as two __u64 */

/* The per-CPU flow cache in front of the IPv4 connection table: a
 * direct-mapped slot per flow hash, a copy of the table's entry. */
#define MQLB_FCACHE_SLOTS 4096 /* a power of two */
#define MQLB_FCACHE_MAX_CPUS 4096

/* The VIP slot's generation (vipgen) when the entry was made: an entry of
 * a VIP since removed, its slot perhaps reused, is never taken. */
struct mqlb_conn {
	__u32 real;
	__u32 vip;
	__u32 gen;
};

struct mqlb_fcache {
	struct mqlb_flow4 key; /* proto 0: empty */
	struct mqlb_conn conn;
	__u32 pad;
};

/* vip_ports: one bit per destination port that some VIP uses, so that the
 * connection table is looked up only for packets that may be a VIP's. */
#define MQLB_PORT_WORDS (65536 / 64)

/* Loader-written settings (config array, index 0). */
struct mqlb_config {
	__u32 src4;        /* outer source address for IPIP over IPv4 */
	__u32 src6[4];     /* outer source address for IPv6-in-IPv6 */
	__u8 gw_mac[6];    /* next hop of encapsulated packets */
	__u16 mtu;         /* largest frame the interface sends, without L2 */
};

/* Per VIP and per real counters (per-CPU arrays, summed by the loader). */
struct mqlb_vstat {
	__u64 packets;    /* sent on to a real */
	__u64 bytes;
	__u64 new_flows;  /* of those packets, the first of a scheduled flow */
	__u64 lru_hits;   /* not counted by the program: packets - new_flows */
	__u64 lru_misses;
};

struct mqlb_rstat {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;
};

/* Global counters, one u64 per index of the per-CPU stats array. */
enum mqlb_stat {
	MQLB_ST_PASS,          /* not for a VIP: XDP_PASS */
	MQLB_ST_FWD,           /* forwarded to a real: XDP_TX */
	MQLB_ST_NEW_FLOWS,     /* flows scheduled from a ring */
	MQLB_ST_LRU_HIT,       /* not counted by the program: the VIPs' packets - new_flows */
	MQLB_ST_LRU_MISS,      /* no entry, ring consulted */
	MQLB_ST_MISS_NOT_SYN,  /* TCP non-SYN without an entry (LB restart, eviction) */
	MQLB_ST_DROP_FRAG,     /* IP fragment addressed to a VIP address */
	MQLB_ST_DROP_OPTIONS,  /* IPv4 options or IPv6 extension headers to a VIP */
	MQLB_ST_DROP_TOO_BIG,  /* would exceed the MTU once encapsulated */
	MQLB_ST_DROP_NO_REAL,  /* the VIP has no real with weight > 0 */
	MQLB_ST_DROP_BAD,      /* truncated headers */
	MQLB_ST_DECAP,         /* decap program: packets decapsulated */
	MQLB_ST_DECAP_PASS,    /* decap program: everything else */
	MQLB_ST_MAX,
};

#define MQLB_STAT_NAMES                                                                  \
	"pass", "forwarded", "new_flows", "lru_hits", "lru_misses", "miss_not_syn",       \
		"drop_fragment", "drop_options", "drop_too_big", "drop_no_real", "drop_bad", \
		"decap", "decap_pass"

/* The flow hash (a murmur3 32-bit round per word), the same on both sides so
 * that the loader and the tests can predict where a flow goes. */
static inline __u32 mqlb_rotl(__u32 x, int r) { return (x << r) | (x >> (32 - r)); }

static inline __u32 mqlb_mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51u;
	k = mqlb_rotl(k, 15);
	k *= 0x1b873593u;
	h ^= k;
	h = mqlb_rotl(h, 13);
	return h * 5 + 0xe6546b64u;
}

static inline __u32 mqlb_fmix(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}

#define MQLB_HASH_SEED 0x6d716c62u /* "mqlb" */

static inline __u32 mqlb_flow_hash(const struct mqlb_flow *f, int src_only)
{
	__u32 h = MQLB_HASH_SEED;

	h = mqlb_mix(h, f->src[0]);
	h = mqlb_mix(h, f->src[1]);
	h = mqlb_mix(h, f->src[2]);
	h = mqlb_mix(h, f->src[3]);
	if (!src_only) {
		h = mqlb_mix(h, f->dst[0]);
		h = mqlb_mix(h, f->dst[1]);
		h = mqlb_mix(h, f->dst[2]);
		h = mqlb_mix(h, f->dst[3]);
		h = mqlb_mix(h, ((__u32)f->sport << 16) | f->dport);
		h = mqlb_mix(h, f->proto);
	}
	return mqlb_fmix(h);
}

#endif

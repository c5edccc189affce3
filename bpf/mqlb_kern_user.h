/* SPDX-License-Identifier: (MIT OR GPL-2.0) */
/* mqlb_kern_user.h: constants, map layouts and the flow hash shared by the
 * XDP programs in bpf/ and their loader, mqlb-xdp. */
#ifndef MQLB_KERN_USER_H
#define MQLB_KERN_USER_H

/* Table sizes. The ring array holds MQLB_MAX_VIPS rings of ring_size slots
 * each; ring_size is a prime chosen at load time (65537 by default). A slot
 * is a real's index, 16 bits; an array element holds MQLB_RING_LANES slots
 * (elements are 8 bytes at least): slot i of VIP n is lane (n * ring_size
 * + i) % 4 of element (n * ring_size + i) / 4, a ring 128 KiB. */
#define MQLB_MAX_VIPS 32
#define MQLB_MAX_REALS 1024 /* real 0 is "none": an empty ring slot */
#define MQLB_RING_DEFAULT 65537
#define MQLB_RING_MAX 1000003
#define MQLB_CONNS_MAX 1048576
#define MQLB_RING_LANES 4

static inline __u32 mqlb_ring_elems(__u32 ring_size)
{
	return (MQLB_MAX_VIPS * ring_size + MQLB_RING_LANES - 1) / MQLB_RING_LANES;
}

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
	__u32 num; /* index into rings, members, vipgen and the VIP counters */
	__u32 flags;
};

struct mqlb_real {
	__u32 addr[4];
	__u8 mac[6];
	__u8 family;
	__u8 flags;
};

/* A flow towards a VIP: the key of the IPv6 connection table (conns6, an
 * LRU hash) and what the flow hash is defined on. */
struct mqlb_flow {
	__u32 src[4];
	__u32 dst[4];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

/* Value of conns6. The VIP slot's generation (vipgen) when the entry was
 * made: an entry of a VIP since removed, its slot perhaps reused, is never
 * taken. */
struct mqlb_conn {
	__u32 real;
	__u32 vip;
	__u32 gen;
};

/* The IPv4 connection table (conns4): an array of 2^n buckets of
 * MQLB_CT_WAYS entries, indexed by the flow hash h; an entry is 16 bytes,
 * a bucket one cache line (a new flow's bucket is a miss somewhere in the
 * table: the smaller the table, the likelier a cache or TLB hit). An entry
 * is two words, each written with one store, so that readers on other
 * CPUs need no lock:
 *   key  h, the flow hash (mqlb_hash64 of the addresses, the ports and the
 *        protocol)
 *   val  check << 48 | tag << 32 | age << 16 | vip << 10 | real; check is
 *        mqlb_ct_check of the same tuple, a function independent of h:
 *        two flows share an entry only if their hashes and their checks
 *        are equal (about 80 bits), and a val written for another key (an
 *        entry torn by two CPUs) fails but in one case in 65536; tag =
 *        0x8000 | (epoch & 0x7fff), the epoch the packet that made or last
 *        checked the entry loaded before its checks: an older one (a real
 *        left a VIP, a VIP was removed, a real's MAC changed since) is
 *        checked against the VIP table and the members again; age is the
 *        seconds of the loader's clock (16 bits) when the entry was
 *        last written or used. Tag and age together
 *        are the entry's stamp, and the program reads the current one,
 *        MQLB_CT_STAMP(epoch, now), as one word (struct mqlb_cpu's stamp):
 *        an established flow's val is left as it is when its stamp is
 *        that one, one comparison. The age wraps every
 *        65536 s (18.2 h): an entry idle longer looks young to the choice
 *        of the one to replace, which it only delays.
 * The real's destination (its MAC, l2, or IPv4 address, ipip) is read from
 * its line of struct mqlb_cpu, which the packet's counters touch anyway.
 * A new flow's writer stores val, then key, and a reader loads key, then
 * val: on a CPU that keeps stores and loads in order a torn read is an old
 * key with a new val, which the check catches but in one case in 65536.
 * An established flow's packet changes only the tag and the age of its
 * entry, with a compare-and-swap on the val it checked: if another CPU gave
 * the entry to another flow meanwhile, the val differs and nothing is
 * written (a plain store could pair that flow's key with this val).
 * A new flow takes the bucket's entry of the same key and check, else the
 * first empty one (val 0), else the one least recently used. No entry is
 * ever emptied, so those in use are always the first ones. */
#define MQLB_CT_WAYS 4
#define MQLB_CT_AGE_SHIFT 16
#define MQLB_CT_AGE_MASK 0xffffu
#define MQLB_CT_TAG(epoch) ((__u64)(0x8000 | ((epoch) & 0x7fff)) << 32)
#define MQLB_CT_TAG_MASK (0xffffull << 32)
#define MQLB_CT_EPOCH(stamp) ((__u32)((stamp) >> 32) & 0x7fff)
#define MQLB_CT_STAMP(epoch, now) \
	(MQLB_CT_TAG(epoch) | (__u64)((now) & MQLB_CT_AGE_MASK) << MQLB_CT_AGE_SHIFT)
#define MQLB_CT_STAMP_MASK (MQLB_CT_TAG_MASK | (__u64)MQLB_CT_AGE_MASK << MQLB_CT_AGE_SHIFT)
#define MQLB_CT_VAL(check, stamp, vip, real) \
	((__u64)(check) << 48 | ((stamp) & MQLB_CT_STAMP_MASK) | (__u64)(vip) << 10 | (__u64)(real))
#define MQLB_CT_REAL(val) ((__u32)(val) & (MQLB_MAX_REALS - 1))
#define MQLB_CT_VIP(val) ((__u32)((val) >> 10) & (MQLB_MAX_VIPS - 1))
#define MQLB_CT_AGE(val) ((__u32)((val) >> MQLB_CT_AGE_SHIFT) & MQLB_CT_AGE_MASK)

struct mqlb_ct4 {
	__u64 key;
	__u64 val;
};

struct mqlb_ct4_bucket {
	struct mqlb_ct4 e[MQLB_CT_WAYS];
};

/* Buckets for --max-conns n: n / MQLB_CT_WAYS, up to a power of two,
 * 1 << mqlb_ct_bits(n); at most 1 << MQLB_CT_BITS_MAX (--max-conns 2^26). */
#define MQLB_CT_BITS_MAX 24

static inline __u32 mqlb_ct_bits(__u32 conns)
{
	__u32 n = 0;

	while (n < MQLB_CT_BITS_MAX && ((__u64)MQLB_CT_WAYS << n) < conns)
		n++;
	return n;
}

static inline __u32 mqlb_ct_buckets(__u32 conns) { return 1u << mqlb_ct_bits(conns); }

/* Loader-written settings (config array, index 0). */
struct mqlb_config {
	__u32 src4;        /* outer source address for IPIP over IPv4 */
	__u32 src6[4];     /* outer source address for IPv6-in-IPv6 */
	__u8 gw_mac[6];    /* next hop of encapsulated packets */
	__u16 mtu;         /* largest frame the interface sends, without L2 */
};

/* Per VIP and per real counters, in each CPU's struct mqlb_cpu. */
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

/* Global counters. */
enum mqlb_stat {
	MQLB_ST_PASS,          /* not for a VIP: XDP_PASS */
	MQLB_ST_FWD,           /* not counted by the program: the VIPs' packets */
	MQLB_ST_NEW_FLOWS,     /* not counted by the program: the VIPs' new_flows */
	MQLB_ST_LRU_HIT,       /* not counted by the program: the VIPs' packets - new_flows */
	MQLB_ST_LRU_MISS,      /* not counted by the program: the VIPs' lru_misses */
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

/* Per-CPU state of the balancer: the cpus array holds one per CPU and the
 * program takes its own by CPU number, one inlined lookup (a per-CPU map
 * costs a second, cold, indirection). The loader writes the stamp (epoch
 * and clock) and the port filter in every element through mmap, before it
 * attaches the program, and sums the counters over the elements. The
 * settings fixed at load time are not here but in the program's .rodata
 * (bpf/mqlb_xdp.bpf.c): the verifier knows them, so no address a packet
 * reads waits for a load of this page. */
#define MQLB_ST_SLOTS 16

/* The port filter: bit mqlb_port_bit(port) set when some VIP may have the
 * port (in network order). 256 bits, so that it shares the first cache
 * line with the stamp and the pass counter: a packet for a VIP
 * reads one line of state besides its counters', one for no VIP one line
 * in all. A port that shares its bit with a VIP's is passed after the VIP
 * lookup; the multiplication spreads neighbouring ports. */
#define MQLB_PORT_BITS 256

static inline __u32 mqlb_port_bit(__u16 port_be) { return ((__u32)port_be * 0x9e37u >> 8) & 0xff; }

/* IPv4 VIPs by address, port and protocol, for a new flow: open addressing
 * over MQLB_VIP4_SLOTS words, from the slot of mqlb_vip4_slot(key) on to
 * the first empty one. The loader fills the table not in use, then points
 * vip4_cur at it. A word is the key | present | flags | num: */
#define MQLB_VIP4_SLOTS 64
#define MQLB_VIP4_KEY(addr, port, proto) \
	((__u64)(addr) | (__u64)(port) << 32 | (__u64)(proto) << 48)
#define MQLB_VIP4_KEYMASK 0xffffffffffffffull
#define MQLB_VIP4_NUM(w) ((__u32)((w) >> 56) & (MQLB_MAX_VIPS - 1))
#define MQLB_VIP4_SRC_HASH (1ull << 62)
#define MQLB_VIP4_PRESENT (1ull << 63)

static inline __u32 mqlb_vip4_slot(__u64 key)
{
	return (__u32)((key * 0x9e3779b97f4a7c15ull) >> 58) % MQLB_VIP4_SLOTS;
}

/* A VIP's line: its counters and the copy of its slot's generation (the
 * vipgen map), which an IPv6 entry holds and is checked against. */
struct mqlb_cpu_vip {
	struct mqlb_vstat st;
	__u32 gen;
} __attribute__((aligned(64)));

/* A real's line: its counters and its IPv4 destination, read by every
 * packet sent to it (its MAC, l2, or IPv4 address, ipip; 0: it takes no
 * IPv4 flows). */
struct mqlb_cpu_real {
	__u64 dest;
	struct mqlb_rstat st;
};

/* In the order of use: what every packet reads (the first line: stamp,
 * port filter, the pass counter), then new flows' things; the
 * reals' lines last, the first ones still in the first page. */
struct mqlb_cpu {
	__u64 stamp;                      /* MQLB_CT_STAMP(epoch, now): see struct mqlb_ct4 */
	__u32 was_now;                    /* unused: the clock before it was in the stamp */
	__u32 vip4_cur;                   /* 0 or 1: the vip4 table in use */
	__u64 ports[MQLB_PORT_BITS / 64]; /* set: some VIP may have the port */
	__u64 stats[MQLB_ST_SLOTS];       /* enum mqlb_stat */
	struct mqlb_cpu_vip vip[MQLB_MAX_VIPS];
	__u64 vip4[2][MQLB_VIP4_SLOTS];
	struct mqlb_cpu_real real[MQLB_MAX_REALS];
} __attribute__((aligned(4096))); /* a CPU's own pages: no line shared, its header in one page */

_Static_assert(__builtin_offsetof(struct mqlb_cpu, stats[MQLB_ST_PASS + 1]) <= 64,
	       "what every packet reads is in the first cache line");

/* The murmur3 32-bit round, for the reals' Maglev permutations. */
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

/* The flow hash: picks the ring slot and the conns4 bucket. It is the same
 * on both sides and on every balancer, without a random seed, so that the
 * tests predict where a flow goes and a balancer restarted without its
 * table (or another one behind the same ECMP route) sends an established
 * flow to the real that has it. Two multiplications; a over the addresses,
 * b over ports and protocol. */
static inline __u64 mqlb_hash64(__u64 a, __u64 b)
{
	__u64 x = (a ^ MQLB_HASH_SEED) * 0x9e3779b97f4a7c15ull ^ b;

	x ^= x >> 32;
	x *= 0xd6e8feb86659fd93ull;
	return x ^ x >> 32;
}

/* For IPv4, a is source | destination << 32 (the addresses as they lie in
 * the packet) and b is the ports (as in the packet) | protocol << 32: the
 * k0 and k1 of bpf/mqlb_xdp.bpf.c. The IPv6 words fold in only when they
 * are not zero. */
static inline __u64 mqlb_flow_hash(const struct mqlb_flow *f, int src_only)
{
	__u64 a = f->src[0], b = 0, w;

	w = ((__u64)f->src[2] << 32 | f->src[1]) * 0xc2b2ae3d27d4eb4full ^
	    (__u64)f->src[3] * 0x165667b19e3779f9ull;
	if (!src_only) {
		a |= (__u64)f->dst[0] << 32;
		b = (__u64)f->proto << 32 | (__u32)f->dport << 16 | f->sport;
		w ^= ((__u64)f->dst[2] << 32 | f->dst[1]) * 0x27d4eb2f165667c5ull ^
		     (__u64)f->dst[3] * 0x85ebca77c2b2ae63ull;
	}
	return mqlb_hash64(a ^ w, b);
}

/* The check of an IPv4 connection entry (struct mqlb_ct4), 16 bits of
 * the tuple (k0, k1 as mqlb_hash64's a and b) by other multiplications
 * than the flow hash's: a pair of tuples whose flow hashes collide has
 * the same check only once in 65536. */
static inline __u64 mqlb_ct_check(__u64 k0, __u64 k1)
{
	return ((k0 ^ k1 * 0xc2b2ae3d27d4eb4full) * 0x165667b19e3779f9ull) >> 48;
}

/* The ring slot of a hash, in [0, m): the upper 32 bits scaled, no division. */
static inline __u32 mqlb_ring_slot(__u64 h, __u32 m) { return (__u32)(((h >> 32) * m) >> 32); }

#endif

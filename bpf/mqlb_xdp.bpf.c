/* SPDX-License-Identifier: (MIT OR GPL-2.0) */
/* mqlb_xdp.bpf.c: the XDP load balancer. Packets for a VIP:port:proto go to
 * a real picked by the VIP's Maglev ring and remembered in the connection
 * table; they leave by XDP_TX, MAC-rewritten (l2) or IPIP-encapsulated. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "mqlb_kern_user.h"

/* Branch hints: an established IPv4 flow's packet is the likely one, and
 * clang lays most of its way out with no branch taken. */
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* TCP flags, in byte 13 of the header */
#define TCPF_SYN 0x02
#define TCPF_ACK 0x10

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * MQLB_MAX_VIPS);
	__type(key, struct mqlb_vip_key);
	__type(value, struct mqlb_vip);
} vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MQLB_MAX_REALS);
	__type(key, __u32);
	__type(value, struct mqlb_real);
} reals SEC(".maps");

/* MQLB_MAX_VIPS rings of ring_size slots, MQLB_RING_LANES to an element;
 * the loader sizes it and writes the slots through mmap. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries,
	       (MQLB_MAX_VIPS * MQLB_RING_DEFAULT + MQLB_RING_LANES - 1) / MQLB_RING_LANES);
	__type(key, __u32);
	__type(value, __u16[MQLB_RING_LANES]);
} ring SEC(".maps");

/* members[vip * MQLB_MAX_REALS + real] = weight + 1, or 0 when the real
 * does not serve that VIP: an established flow stays on a drained real
 * (weight 0) but not on a removed one. The loader keeps weights here so a
 * successor can take over from the pinned maps. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MQLB_MAX_VIPS * MQLB_MAX_REALS);
	__type(key, __u32);
	__type(value, __u32);
} members SEC(".maps");

/* vipgen[vip]: bumped by the loader each time a VIP takes the slot. The
 * program reads its copy in struct mqlb_cpu; the map keeps it for a
 * successor (--pin). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MQLB_MAX_VIPS);
	__type(key, __u32);
	__type(value, __u32);
} vipgen SEC(".maps");

/* The connection tables. IPv4: buckets in an array (mqlb_kern_user.h),
 * looked up and written inline: no hash-table helper, lock or LRU list on
 * the path of every packet. Mmapable for its layout: the values of such
 * an array start on a page, so a bucket is one cache line (a plain
 * array's start 312 bytes into a page). IPv6: an LRU hash with per-CPU LRU
 * lists. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, MQLB_CONNS_MAX / MQLB_CT_WAYS);
	__type(key, __u32);
	__type(value, struct mqlb_ct4_bucket);
} conns4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__uint(max_entries, MQLB_CONNS_MAX);
	__type(key, struct mqlb_flow);
	__type(value, struct mqlb_conn);
} conns6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mqlb_config);
} config SEC(".maps");

/* Settings fixed at load time, which the loader writes before the program
 * is verified. The section is frozen, so the verifier knows their values
 * and keeps one arm of each choice made on them: the other encapsulation's
 * code goes, and a packet's bucket is its hash masked by an immediate, so
 * its address waits for no load (see ct4_index). */
const volatile __u32 ct_bits = 0;                 /* conns4 has 1 << ct_bits buckets */
const volatile __u32 encap = MQLB_ENCAP_L2;       /* MQLB_ENCAP_* */
const volatile __u32 ring_size = MQLB_RING_DEFAULT; /* slots of each VIP's ring */

/* One struct mqlb_cpu per possible CPU; the loader sizes it and maps it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mqlb_cpu);
} cpus SEC(".maps");

static __always_inline int count(struct mqlb_cpu *c, __u32 what, int verdict)
{
	c->stats[what]++;
	return verdict;
}

/* A fragment or a packet with options cannot be matched on ports: drop it
 * when its destination address is a VIP's, pass it otherwise. */
static __always_inline int odd_packet(struct mqlb_cpu *c, const __u32 *dst, int family, __u32 why)
{
	struct mqlb_vip_key k = {};

	if (family == 4)
		k.addr[0] = dst[0];
	else
		__builtin_memcpy(k.addr, dst, 16);
	k.family = (__u8)family;
	if (bpf_map_lookup_elem(&vips, &k))
		return count(c, why, XDP_DROP);
	return count(c, MQLB_ST_PASS, XDP_PASS);
}

/* The port filter: a clear bit means no VIP has the port (network order,
 * as the packet has it). */
static __always_inline int port_maybe_vip(const struct mqlb_cpu *c, __u16 port_be)
{
	__u32 p = mqlb_port_bit(port_be);

	return (c->ports[p / 64] >> (p % 64)) & 1;
}

static __always_inline __u16 csum_fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/* The real in a ring slot (0: none). */
static __always_inline __u32 ring_real(__u32 slot)
{
	__u32 k = slot / MQLB_RING_LANES;
	__u16 *r = bpf_map_lookup_elem(&ring, &k);

	return r ? r[slot % MQLB_RING_LANES] : 0;
}

static __always_inline int member(__u32 vip, __u32 real)
{
	__u32 i = vip * MQLB_MAX_REALS + real;
	__u32 *m;

	if (real == 0 || real >= MQLB_MAX_REALS)
		return 0;
	m = bpf_map_lookup_elem(&members, &i);
	return m && *m;
}

/* The entry of hash h and check chk in its bucket, or NULL; *val its
 * value. A bucket's entries in use are its first ones (an entry is never
 * emptied, a new flow takes the first empty one): the search ends at an
 * empty entry. The key is loaded before the value (see struct mqlb_ct4). */
static __always_inline struct mqlb_ct4 *ct4_find(struct mqlb_ct4_bucket *b, __u64 h, __u64 chk,
						 __u64 *val)
{
#pragma unroll
	for (int i = 0; i < MQLB_CT_WAYS; i++) {
		struct mqlb_ct4 *e = &b->e[i];
		__u64 k = *(volatile __u64 *)&e->key, v = *(volatile __u64 *)&e->val;

		if (!v)
			break;
		if (k == h && (v >> 48) == chk) {
			*val = v;
			return e;
		}
	}
	return NULL;
}

/* The way a new flow's entry goes to: its own (same key and check), else
 * an empty one, else the one used least recently. An index, not a pointer:
 * the verifier allows no arithmetic that clang makes of a choice between
 * pointers. */
static __always_inline __u32 ct4_way(const struct mqlb_ct4_bucket *b, __u64 h, __u64 chk,
				     __u32 now)
{
	__u32 oldest = 0;
	int same = -1, empty = -1, old = 0;

#pragma unroll
	for (int i = 0; i < MQLB_CT_WAYS; i++) {
		const struct mqlb_ct4 *e = &b->e[i];
		__u64 v = e->val;
		__u32 age = (now - MQLB_CT_AGE(v)) & MQLB_CT_AGE_MASK;

		if (!v) {
			empty = i; /* and the ones after it are empty too */
			break;
		}
		if (e->key == h && (v >> 48) == chk) {
			same = i;
			break;
		}
		if (age >= oldest) {
			oldest = age;
			old = i;
		}
	}
	return (__u32)(same >= 0 ? same : empty >= 0 ? empty : old) % MQLB_CT_WAYS;
}

/* Counted once a packet leaves, per VIP and per real only: the loader
 * makes forwarded of the VIPs' packets, lru_hits of packets - new_flows,
 * and the global new_flows and lru_misses of the VIPs'. */
static __always_inline int sent(struct mqlb_cpu *c, __u32 vn, __u32 real, __u64 len, int new)
{
	struct mqlb_vstat *vs = &c->vip[vn % MQLB_MAX_VIPS].st;
	struct mqlb_rstat *rs = &c->real[real % MQLB_MAX_REALS].st;

	vs->packets++;
	vs->bytes += len;
	rs->packets++;
	rs->bytes += len;
	if (new) {
		vs->new_flows++;
		rs->new_flows++;
	}
	return XDP_TX;
}

/* Direct routing: the real has the VIP on lo; only the MACs change. The
 * MAC words are read and written whole (x86 and arm64 take them
 * unaligned). */
static __always_inline void to_mac(void *data, __u64 mac)
{
	__u32 d0 = *(__u32 *)data;
	__u16 d1 = *(__u16 *)(data + 4);

	*(__u32 *)(data + 6) = d0;
	*(__u16 *)(data + 10) = d1;
	*(__u32 *)data = (__u32)mac;
	*(__u16 *)(data + 4) = (__u16)(mac >> 32);
}

static __always_inline int encap4(struct mqlb_cpu *c, struct xdp_md *ctx, __u32 daddr)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data, *neth;
	struct iphdr *in, *out;
	struct mqlb_config *cfg;
	__u8 src_mac[ETH_ALEN];
	__u32 s = 0, zero = 0;
	__u16 tot, tos;

	cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return count(c, MQLB_ST_DROP_NO_REAL, XDP_DROP);
	in = (void *)(eth + 1);
	if ((void *)(in + 1) > end)
		return count(c, MQLB_ST_DROP_BAD, XDP_DROP);
	tot = bpf_ntohs(in->tot_len);
	if ((__u32)tot + sizeof(struct iphdr) > cfg->mtu)
		return count(c, MQLB_ST_DROP_TOO_BIG, XDP_DROP);
	tos = in->tos;
	__builtin_memcpy(src_mac, eth->h_dest, ETH_ALEN);
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr)))
		return count(c, MQLB_ST_DROP_BAD, XDP_DROP);
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	neth = data;
	out = (void *)(neth + 1);
	if ((void *)(out + 1) > end)
		return count(c, MQLB_ST_DROP_BAD, XDP_DROP);
	__builtin_memcpy(neth->h_dest, cfg->gw_mac, ETH_ALEN);
	__builtin_memcpy(neth->h_source, src_mac, ETH_ALEN);
	neth->h_proto = bpf_htons(ETH_P_IP);
	out->version = 4;
	out->ihl = 5;
	out->tos = tos;
	out->tot_len = bpf_htons(tot + sizeof(struct iphdr));
	out->id = 0;
	/* DF: the broker's decap sees no fragments; MSS is the fix for size. */
	out->frag_off = bpf_htons(0x4000);
	out->ttl = 64;
	out->protocol = IPPROTO_IPIP;
	out->check = 0;
	out->saddr = cfg->src4;
	out->daddr = daddr;
#pragma unroll
	for (int i = 0; i < 10; i++)
		s += ((__u16 *)out)[i];
	out->check = csum_fold(s);
	return XDP_TX;
}

static __always_inline int encap6(struct mqlb_cpu *c, struct xdp_md *ctx, const struct mqlb_real *r)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data, *neth;
	struct ipv6hdr *in, *out;
	struct mqlb_config *cfg;
	__u8 src_mac[ETH_ALEN], head[4];
	__u32 zero = 0;
	__u16 plen;

	cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return count(c, MQLB_ST_DROP_NO_REAL, XDP_DROP);
	in = (void *)(eth + 1);
	if ((void *)(in + 1) > end)
		return count(c, MQLB_ST_DROP_BAD, XDP_DROP);
	plen = bpf_ntohs(in->payload_len);
	if ((__u32)plen + 2 * sizeof(struct ipv6hdr) > cfg->mtu)
		return count(c, MQLB_ST_DROP_TOO_BIG, XDP_DROP);
	/* Keep traffic class and flow label: ECMP on the way hashes them. */
	__builtin_memcpy(head, in, 4);
	__builtin_memcpy(src_mac, eth->h_dest, ETH_ALEN);
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct ipv6hdr)))
		return count(c, MQLB_ST_DROP_BAD, XDP_DROP);
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	neth = data;
	out = (void *)(neth + 1);
	if ((void *)(out + 1) > end)
		return count(c, MQLB_ST_DROP_BAD, XDP_DROP);
	__builtin_memcpy(neth->h_dest, cfg->gw_mac, ETH_ALEN);
	__builtin_memcpy(neth->h_source, src_mac, ETH_ALEN);
	neth->h_proto = bpf_htons(ETH_P_IPV6);
	__builtin_memcpy(out, head, 4);
	out->payload_len = bpf_htons(plen + sizeof(struct ipv6hdr));
	out->nexthdr = IPPROTO_IPV6;
	out->hop_limit = 64;
	__builtin_memcpy(&out->saddr, cfg->src6, 16);
	__builtin_memcpy(&out->daddr, r->addr, 16);
	return XDP_TX;
}

/* An IPv4 packet for an entry's real (dest as in struct mqlb_cpu_real)
 * with encapsulation enc; the caller checked the Ethernet header against
 * end. */
static __always_inline int forward4(struct mqlb_cpu *c, struct xdp_md *ctx, void *data, void *end,
				    __u64 val, __u64 dest, int new, __u32 enc)
{
	__u64 len = (__u64)(end - data);

	if (enc == MQLB_ENCAP_IPIP) {
		int v = encap4(c, ctx, (__u32)dest);

		if (v != XDP_TX)
			return v;
	} else {
		to_mac(data, dest);
	}
	return sent(c, MQLB_CT_VIP(val), MQLB_CT_REAL(val), len, new);
}

/* The vip4 word of an IPv4 VIP (MQLB_VIP4_PRESENT set), or 0. */
static __always_inline __u64 vip4_find(const struct mqlb_cpu *c, __u64 key)
{
	const __u64 *t = c->vip4[c->vip4_cur & 1];
	__u32 i = mqlb_vip4_slot(key);

	for (int n = 0; n < MQLB_VIP4_SLOTS; n++) {
		__u64 w = t[(i + n) % MQLB_VIP4_SLOTS];

		if (!w)
			break;
		if ((w & MQLB_VIP4_KEYMASK) == key)
			return w;
	}
	return 0;
}

/* The bucket index of a hash. ct_bits is known to the verifier, which
 * keeps the one arm that matches it: the hash masked by an immediate. The
 * mask, loaded instead (from .rodata or the state page), would hold up the
 * bucket's address, and so its TLB and cache misses, until that load's own
 * page walk were done. The empty asm keeps each arm an immediate: clang
 * would turn the chain into (1 << ct_bits) - 1. */
static __always_inline __u32 ct4_index(__u64 h)
{
	__u32 bits = ct_bits, m = 0;

#pragma unroll
	for (__u32 n = 0; n <= MQLB_CT_BITS_MAX; n++)
		if (bits == n) {
			m = (1u << n) - 1;
			asm volatile("" : "+r"(m));
		}
	return (__u32)h & m;
}

/* The bucket of a flow's key. */
static __always_inline struct mqlb_ct4_bucket *ct4_bucket(__u64 h)
{
	__u32 i = ct4_index(h);

	return bpf_map_lookup_elem(&conns4, &i);
}

/* An IPv4 TCP or UDP flow without a usable entry (the caller checked the
 * headers): its VIP's ring picks the real, the table remembers it. For a
 * new flow the bucket (somewhere in the table) and the ring slot are both
 * likely cache misses, the ring slot's after the state's: both lines are
 * asked for before anything waits on either, the bucket's first, and the
 * way is chosen once the ring has been read. */
static __noinline int schedule4(struct xdp_md *ctx, struct mqlb_cpu *c, int syn, __u64 stamp)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + sizeof(struct ethhdr);
	struct mqlb_ct4_bucket *b;
	struct mqlb_ct4 *e;
	__u32 vn, slot, real, way, rs = ring_size;
	__u64 k0, k1, h, chk, val, vip, dest;

	if ((void *)(ip + 1) + sizeof(__u32) > end)
		return count(c, MQLB_ST_DROP_BAD, XDP_DROP);
	k0 = *(__u64 *)(data + sizeof(struct ethhdr) + __builtin_offsetof(struct iphdr, saddr));
	k1 = (__u64)ip->protocol << 32 | *(__u32 *)(ip + 1);
	h = mqlb_hash64(k0, k1);
	chk = mqlb_ct_check(k0, k1);
	b = ct4_bucket(h);
	if (!b)
		return count(c, MQLB_ST_DROP_BAD, XDP_DROP);
	/* A load of its line before any branch on it. */
	(void)*(volatile __u64 *)&b->e[0].val;
	vip = vip4_find(c, MQLB_VIP4_KEY(ip->daddr, (__u16)(k1 >> 16), ip->protocol));
	if (!vip)
		return count(c, MQLB_ST_PASS, XDP_PASS);
	vn = MQLB_VIP4_NUM(vip);
	c->vip[vn].st.lru_misses++;
	if (!syn && ip->protocol == IPPROTO_TCP)
		c->stats[MQLB_ST_MISS_NOT_SYN]++;
	if (vip & MQLB_VIP4_SRC_HASH)
		slot = vn * rs + mqlb_ring_slot(mqlb_hash64(ip->saddr, 0), rs);
	else
		slot = vn * rs + mqlb_ring_slot(h, rs);
	real = ring_real(slot);
	way = ct4_way(b, h, chk, MQLB_CT_AGE(stamp));
	if (real == 0 || real >= MQLB_MAX_REALS)
		return count(c, MQLB_ST_DROP_NO_REAL, XDP_DROP);
	dest = c->real[real].dest;
	if (!dest)
		return count(c, MQLB_ST_DROP_NO_REAL, XDP_DROP);
	val = MQLB_CT_VAL(chk, stamp, vn, real);
	e = &b->e[way];
	*(volatile __u64 *)&e->val = val;
	*(volatile __u64 *)&e->key = h;
	return forward4(c, ctx, data, end, val, dest, 1, encap);
}

/* An entry whose tag predates the epoch: is its VIP still the one of the
 * packet's address, port and protocol, and does the real still serve it?
 * Then the caller stamps it with the stamp it loaded before this check. */
static __always_inline int still4(const struct mqlb_cpu *c, __u64 val, __u64 k0, __u64 k1)
{
	__u32 vn = MQLB_CT_VIP(val), real = MQLB_CT_REAL(val);
	__u64 vip =
	    vip4_find(c, MQLB_VIP4_KEY((__u32)(k0 >> 32), (__u16)(k1 >> 16), (__u8)(k1 >> 32)));

	return vip && MQLB_VIP4_NUM(vip) == vn && member(vn, real);
}

/* An established IPv4 flow whose entry e (its value val) has another
 * stamp than the current one: an older epoch (its real and VIP checked
 * again, else scheduled anew) or an older age. The entry gets the stamp,
 * with a compare-and-swap over the val checked (see struct mqlb_ct4). Out
 * of the main function, so that none of this holds registers there. */
static __noinline int restamp4(struct xdp_md *ctx, struct mqlb_cpu *c, struct mqlb_ct4 *e,
			       __u64 val, __u64 stamp)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + sizeof(struct ethhdr);
	__u64 k0, k1, dest;

	if ((void *)(ip + 1) + sizeof(__u32) > end)
		return count(c, MQLB_ST_DROP_BAD, XDP_DROP);
	k0 = *(__u64 *)(data + sizeof(struct ethhdr) + __builtin_offsetof(struct iphdr, saddr));
	k1 = (__u64)ip->protocol << 32 | *(__u32 *)(ip + 1);
	if (((val ^ stamp) & MQLB_CT_TAG_MASK) && !still4(c, val, k0, k1))
		return schedule4(ctx, c, 0, stamp);
	dest = c->real[MQLB_CT_REAL(val)].dest;
	if (!dest)
		return schedule4(ctx, c, 0, stamp);
	__sync_val_compare_and_swap(&e->val, val, (val & ~MQLB_CT_STAMP_MASK) | stamp);
	return forward4(c, ctx, data, end, val, dest, 0, encap);
}

/* The real of an established IPv6 flow, or 0: the entry's VIP slot still
 * holds the VIP it was made for, and the real still serves it. */
static __always_inline __u32 established6(const struct mqlb_cpu *c, const struct mqlb_flow *f,
					   __u32 *vnum)
{
	struct mqlb_conn *e = bpf_map_lookup_elem(&conns6, f);
	__u32 vn;

	if (!e)
		return 0;
	vn = e->vip;
	if (vn >= MQLB_MAX_VIPS)
		return 0;
	if (c->vip[vn].gen != e->gen || !member(vn, e->real))
		return 0;
	*vnum = vn;
	return e->real;
}

static __always_inline int ip6(struct mqlb_cpu *c, struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	struct mqlb_flow f = {};
	struct mqlb_vip_key vk = {};
	struct mqlb_conn nc = {};
	struct mqlb_real *r;
	struct mqlb_vip *vip;
	__u32 real = 0, vn = 0, len = (__u32)(end - data);
	void *l4;
	__u32 rs = ring_size;
	int syn = 0, v;

	if ((void *)(ip6 + 1) > end)
		return count(c, MQLB_ST_PASS, XDP_PASS);
	f.family = 6;
	__builtin_memcpy(f.src, &ip6->saddr, 16);
	__builtin_memcpy(f.dst, &ip6->daddr, 16);
	f.proto = ip6->nexthdr;
	if (f.proto == IPPROTO_FRAGMENT)
		return odd_packet(c, f.dst, 6, MQLB_ST_DROP_FRAG);
	if (f.proto == IPPROTO_HOPOPTS || f.proto == IPPROTO_ROUTING || f.proto == IPPROTO_DSTOPTS)
		return odd_packet(c, f.dst, 6, MQLB_ST_DROP_OPTIONS);
	l4 = ip6 + 1;
	if (f.proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > end)
			return count(c, MQLB_ST_PASS, XDP_PASS);
		f.sport = th->source;
		f.dport = th->dest;
		syn = th->syn && !th->ack;
	} else if (f.proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > end)
			return count(c, MQLB_ST_PASS, XDP_PASS);
		f.sport = uh->source;
		f.dport = uh->dest;
	} else {
		return count(c, MQLB_ST_PASS, XDP_PASS);
	}
	if (!port_maybe_vip(c, f.dport))
		return count(c, MQLB_ST_PASS, XDP_PASS);

	if (!syn)
		real = established6(c, &f, &vn);
	if (!real) {
		__u32 slot;
		__u64 h;

		__builtin_memcpy(vk.addr, f.dst, sizeof vk.addr);
		vk.port = f.dport;
		vk.proto = f.proto;
		vk.family = 6;
		vip = bpf_map_lookup_elem(&vips, &vk);
		if (!vip || (vip->flags & MQLB_VIP_ADDR) || vip->num >= MQLB_MAX_VIPS)
			return count(c, MQLB_ST_PASS, XDP_PASS);
		vn = vip->num;
		c->vip[vn].st.lru_misses++;
		if (!syn && f.proto == IPPROTO_TCP)
			c->stats[MQLB_ST_MISS_NOT_SYN]++;
		h = mqlb_flow_hash(&f, vip->flags & MQLB_VIP_SRC_HASH);
		slot = vn * rs + mqlb_ring_slot(h, rs);
		real = ring_real(slot);
		if (!real || real >= MQLB_MAX_REALS)
			return count(c, MQLB_ST_DROP_NO_REAL, XDP_DROP);
		nc.real = real;
		nc.vip = vn;
		nc.gen = c->vip[vn].gen;
		bpf_map_update_elem(&conns6, &f, &nc, BPF_ANY);
	}
	r = bpf_map_lookup_elem(&reals, &real);
	if (!r || !(r->flags & MQLB_REAL_VALID))
		return count(c, MQLB_ST_DROP_NO_REAL, XDP_DROP);
	if (encap == MQLB_ENCAP_IPIP) {
		v = encap6(c, ctx, r);
		if (v != XDP_TX)
			return v;
	} else {
		data = (void *)(long)ctx->data;
		end = (void *)(long)ctx->data_end;
		if (data + sizeof(struct ethhdr) > end)
			return count(c, MQLB_ST_DROP_BAD, XDP_DROP);
		to_mac(data, *(__u64 *)r->mac);
	}
	return sent(c, vn, real, len, nc.real != 0);
}

/* Everything but the IPv4 TCP or UDP packets that the main function
 * reads itself: short frames, other protocols, IPv6, IPv4 fragments and
 * options (and a version field other than 4: passed). */
static __noinline int other(struct xdp_md *ctx, struct mqlb_cpu *c)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	if ((void *)(eth + 1) > end)
		return count(c, MQLB_ST_PASS, XDP_PASS);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return ip6(c, ctx);
	if (eth->h_proto != bpf_htons(ETH_P_IP) || (void *)(ip + 1) > end)
		return count(c, MQLB_ST_PASS, XDP_PASS);
	if (ip->frag_off & bpf_htons(0x3fff))
		return odd_packet(c, &ip->daddr, 4, MQLB_ST_DROP_FRAG);
	if (ip->ihl != 5)
		return odd_packet(c, &ip->daddr, 4, MQLB_ST_DROP_OPTIONS);
	return count(c, MQLB_ST_PASS, XDP_PASS);
}

/* The IPv4 path, in one function so that little spills to the stack: the
 * headers, the port filter, the flow's bucket; an entry with the current
 * stamp (epoch and clock) is forwarded at once. Header fields are read as
 * whole words (x86 and arm64 take them unaligned).
 * The stamp is loaded once, before anything is checked, and that value is
 * the one an entry is stamped with: a bump after the load (the loader's
 * last step of a change) leaves the entry older than the epoch, checked
 * again by its next packet. A second load, after the checks, could tag
 * with the new epoch an entry checked against the maps before the change.
 * (That the checks' loads follow the stamp's is x86's order of loads; a
 * CPU that reorders loads would need a load-acquire here.) The
 * encapsulation, enc, is a constant: see the programs below. */
static __always_inline int lb(struct xdp_md *ctx, const __u32 enc)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + sizeof(struct ethhdr);
	__u32 cpu = bpf_get_smp_processor_id(), ports;
	struct mqlb_cpu *c = bpf_map_lookup_elem(&cpus, &cpu);
	struct mqlb_ct4_bucket *b;
	struct mqlb_ct4 *e;
	__u64 k0, k1, h, val = 0, dest, stamp;
	void *l4 = ip + 1;

	if (unlikely(!c))
		return XDP_ABORTED; /* the loader sizes cpus for every possible CPU */
	/* IPv4, version 4 and 5 words of header, not a fragment */
	if (unlikely(l4 > end || *(__u16 *)(data + 12) != bpf_htons(ETH_P_IP) ||
		     *(__u8 *)ip != 0x45 || (ip->frag_off & bpf_htons(0x3fff))))
		return other(ctx, c);
	if (likely(ip->protocol == IPPROTO_TCP)) {
		if (unlikely(l4 + sizeof(struct tcphdr) > end))
			return count(c, MQLB_ST_PASS, XDP_PASS);
		/* A SYN is a new connection, whatever an old entry says: that
		 * is how a drained real stops getting new flows with reused
		 * ports. */
		if (unlikely((((__u8 *)l4)[13] & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN))
			return port_maybe_vip(c, ((__u16 *)l4)[1])
				   ? schedule4(ctx, c, 1, *(volatile __u64 *)&c->stamp)
				   : count(c, MQLB_ST_PASS, XDP_PASS);
	} else if (ip->protocol == IPPROTO_UDP) {
		if (l4 + sizeof(struct udphdr) > end)
			return count(c, MQLB_ST_PASS, XDP_PASS);
	} else {
		return count(c, MQLB_ST_PASS, XDP_PASS);
	}
	ports = *(__u32 *)l4;
	if (unlikely(!port_maybe_vip(c, (__u16)(ports >> 16))))
		return count(c, MQLB_ST_PASS, XDP_PASS);

	/* The key as it lies in the packet: addresses, then ports. */
	k0 = *(__u64 *)(data + sizeof(struct ethhdr) + __builtin_offsetof(struct iphdr, saddr));
	k1 = (__u64)ip->protocol << 32 | ports;
	h = mqlb_hash64(k0, k1);
	stamp = *(volatile __u64 *)&c->stamp;
	b = ct4_bucket(h);
	if (unlikely(!b || !(e = ct4_find(b, h, mqlb_ct_check(k0, k1), &val))))
		return schedule4(ctx, c, 0, stamp);
	/* The entry has the current stamp (epoch and clock) and its real a
	 * destination: on at once. */
	if (likely((val & MQLB_CT_STAMP_MASK) == stamp)) {
		dest = c->real[MQLB_CT_REAL(val)].dest;
		if (likely(dest))
			return forward4(c, ctx, data, end, val, dest, 0, enc);
	}
	return restamp4(ctx, c, e, val, stamp);
}

/* The programs: one for each encapsulation, so that an established flow's
 * path reads no setting. The loader loads the one of its encapsulation and
 * sets encap in .rodata to the same, for the paths out of line. */
SEC("xdp")
int mqlb_xdp(struct xdp_md *ctx)
{
	return lb(ctx, MQLB_ENCAP_L2);
}

SEC("xdp")
int mqlb_xdp_ipip(struct xdp_md *ctx)
{
	return lb(ctx, MQLB_ENCAP_IPIP);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";

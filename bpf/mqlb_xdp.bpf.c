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

/* Set by the loader before load. */
const volatile __u32 ring_size = MQLB_RING_DEFAULT;
const volatile __u32 encap = MQLB_ENCAP_L2;

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

/* MQLB_MAX_VIPS rings of ring_size slots; the loader sizes it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MQLB_MAX_VIPS * MQLB_RING_DEFAULT);
	__type(key, __u32);
	__type(value, __u32);
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

/* The IPv4 flow cache: the connection table's lookup is a hash of the key,
 * a bucket walk and a compare, about half of an established packet's cost;
 * a slot of this per-CPU array is a multiply-and-shift hash and two
 * compares. Entries are checked like the table's (VIP generation, member).
 * Writing a table entry empties the flow's slot on every CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MQLB_FCACHE_SLOTS);
	__type(key, __u32);
	__type(value, struct mqlb_fcache);
} fcache4 SEC(".maps");

/* vipgen[vip]: bumped by the loader each time a VIP takes the slot. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MQLB_MAX_VIPS);
	__type(key, __u32);
	__type(value, __u32);
} vipgen SEC(".maps");

/* A bit per destination port of some VIP (MQLB_PORT_WORDS words). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MQLB_PORT_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} vip_ports SEC(".maps");

/* The connection tables, IPv4 (compact key) and IPv6. Shared entries,
 * per-CPU LRU lists: no global LRU lock on the fast path, and a flow whose
 * packets change CPU still finds its entry. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__uint(max_entries, MQLB_CONNS_MAX);
	__type(key, struct mqlb_flow4);
	__type(value, struct mqlb_conn);
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

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MQLB_ST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MQLB_MAX_VIPS);
	__type(key, __u32);
	__type(value, struct mqlb_vstat);
} vip_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MQLB_MAX_REALS);
	__type(key, __u32);
	__type(value, struct mqlb_rstat);
} real_stats SEC(".maps");

static __always_inline int count(__u32 what, int verdict)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &what);

	if (v)
		*v += 1;
	return verdict;
}

/* A fragment or a packet with options cannot be matched on ports: drop it
 * when its destination address is a VIP's, pass it otherwise. */
static __always_inline int odd_packet(struct mqlb_flow *f, __u32 why)
{
	struct mqlb_vip_key k = {};

	__builtin_memcpy(k.addr, f->dst, sizeof k.addr);
	k.family = f->family;
	if (bpf_map_lookup_elem(&vips, &k))
		return count(why, XDP_DROP);
	return count(MQLB_ST_PASS, XDP_PASS);
}

static __always_inline __u16 csum_fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
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

static __always_inline int vip_port(__u16 port_be)
{
	__u32 p = bpf_ntohs(port_be), w = p / 64;
	__u64 *bits = bpf_map_lookup_elem(&vip_ports, &w);

	return bits && (*bits >> (p % 64)) & 1;
}

static __always_inline struct mqlb_flow4 flow4(const struct mqlb_flow *f)
{
	struct mqlb_flow4 k = {};

	k.src = f->src[0];
	k.dst = f->dst[0];
	k.sport = f->sport;
	k.dport = f->dport;
	k.proto = f->proto;
	return k;
}

static __always_inline __u32 fcache_slot(const struct mqlb_flow4 *k)
{
	/* Multiply-shift: the top bits of a 64-bit product mix every input bit. */
	__u64 x = ((__u64)k->src << 32 | k->dst) ^ ((__u64)k->sport << 48 | (__u64)k->dport << 32 | k->proto);

	x *= 0x9e3779b97f4a7c15ull;
	x ^= x >> 29;
	x *= 0xbf58476d1ce4e5b9ull;
	return (__u32)(x >> 52) & (MQLB_FCACHE_SLOTS - 1);
}

static __always_inline int flow4_eq(const struct mqlb_flow4 *a, const struct mqlb_flow4 *b)
{
	const __u64 *x = (const void *)a, *y = (const void *)b;

	return x[0] == y[0] && x[1] == y[1];
}

struct fc_inval {
	__u32 slot;
};

static long fcache_inval_cpu(__u32 cpu, void *arg)
{
	struct fc_inval *a = arg;
	struct mqlb_fcache *e = bpf_map_lookup_percpu_elem(&fcache4, &a->slot, cpu);

	if (!e)
		return 1; /* past the last CPU */
	e->key.proto = 0;
	return 0;
}

/* A table entry was written: no CPU may keep an older copy. */
static __always_inline void fcache_put(const struct mqlb_flow4 *k, const struct mqlb_conn *c)
{
	struct fc_inval a = { .slot = fcache_slot(k) };
	struct mqlb_fcache *e;

	bpf_loop(MQLB_FCACHE_MAX_CPUS, fcache_inval_cpu, &a, 0);
	e = bpf_map_lookup_elem(&fcache4, &a.slot);
	if (e) {
		e->key = *k;
		e->conn = *c;
	}
}

/* The real of an established flow, or 0: the entry's VIP slot still holds
 * the VIP it was made for, and the real still serves it. */
static __always_inline __u32 established(const struct mqlb_flow *f, __u32 *vnum)
{
	struct mqlb_flow4 k4;
	struct mqlb_fcache *e;
	struct mqlb_conn *c;
	__u32 *gen, vn, slot;

	/* The barrier keeps clang from merging the two calls into one with
	 * a map pointer in a register, which the verifier cannot inline. */
	if (f->family == 4) {
		k4 = flow4(f);
		slot = fcache_slot(&k4);
		e = bpf_map_lookup_elem(&fcache4, &slot);
		if (e && flow4_eq(&e->key, &k4)) {
			c = &e->conn;
		} else {
			c = bpf_map_lookup_elem(&conns4, &k4);
			asm volatile("" : "+r"(c));
			if (c && e) {
				e->key = k4;
				e->conn = *c;
			}
		}
	} else {
		c = bpf_map_lookup_elem(&conns6, f);
	}

	if (!c)
		return 0;
	vn = c->vip;
	if (vn >= MQLB_MAX_VIPS)
		return 0;
	gen = bpf_map_lookup_elem(&vipgen, &vn);
	if (!gen || *gen != c->gen || !member(vn, c->real))
		return 0;
	*vnum = vn;
	return c->real;
}

static __always_inline int encap4(struct xdp_md *ctx, const struct mqlb_real *r,
				  const struct mqlb_config *cfg)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data, *neth;
	struct iphdr *in, *out;
	__u8 src_mac[ETH_ALEN];
	__u16 tot, tos;
	__u32 s = 0;

	in = (void *)(eth + 1);
	if ((void *)(in + 1) > end)
		return count(MQLB_ST_DROP_BAD, XDP_DROP);
	tot = bpf_ntohs(in->tot_len);
	if ((__u32)tot + sizeof(struct iphdr) > cfg->mtu)
		return count(MQLB_ST_DROP_TOO_BIG, XDP_DROP);
	tos = in->tos;
	__builtin_memcpy(src_mac, eth->h_dest, ETH_ALEN);
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr)))
		return count(MQLB_ST_DROP_BAD, XDP_DROP);
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	neth = data;
	out = (void *)(neth + 1);
	if ((void *)(out + 1) > end)
		return count(MQLB_ST_DROP_BAD, XDP_DROP);
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
	out->daddr = r->addr[0];
#pragma unroll
	for (int i = 0; i < 10; i++)
		s += ((__u16 *)out)[i];
	out->check = csum_fold(s);
	return XDP_TX;
}

static __always_inline int encap6(struct xdp_md *ctx, const struct mqlb_real *r,
				  const struct mqlb_config *cfg)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data, *neth;
	struct ipv6hdr *in, *out;
	__u8 src_mac[ETH_ALEN], head[4];
	__u16 plen;

	in = (void *)(eth + 1);
	if ((void *)(in + 1) > end)
		return count(MQLB_ST_DROP_BAD, XDP_DROP);
	plen = bpf_ntohs(in->payload_len);
	if ((__u32)plen + 2 * sizeof(struct ipv6hdr) > cfg->mtu)
		return count(MQLB_ST_DROP_TOO_BIG, XDP_DROP);
	/* Keep traffic class and flow label: ECMP on the way hashes them. */
	__builtin_memcpy(head, in, 4);
	__builtin_memcpy(src_mac, eth->h_dest, ETH_ALEN);
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct ipv6hdr)))
		return count(MQLB_ST_DROP_BAD, XDP_DROP);
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	neth = data;
	out = (void *)(neth + 1);
	if ((void *)(out + 1) > end)
		return count(MQLB_ST_DROP_BAD, XDP_DROP);
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

SEC("xdp")
int mqlb_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct mqlb_flow f = {};
	struct mqlb_vip_key vk = {};
	struct mqlb_vip *vip;
	struct mqlb_real *r;
	struct mqlb_config *cfg;
	struct mqlb_vstat *vs;
	struct mqlb_rstat *rs;
	struct mqlb_conn nc = {};
	void *l4;
	__u32 real = 0, vnum = 0, zero = 0, len = (__u32)(end - data);
	int syn = 0;

	if ((void *)(eth + 1) > end)
		return count(MQLB_ST_PASS, XDP_PASS);
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end)
			return count(MQLB_ST_PASS, XDP_PASS);
		f.family = 4;
		f.src[0] = ip->saddr;
		f.dst[0] = ip->daddr;
		f.proto = ip->protocol;
		if (ip->frag_off & bpf_htons(0x3fff))
			return odd_packet(&f, MQLB_ST_DROP_FRAG);
		if (ip->ihl != 5)
			return odd_packet(&f, MQLB_ST_DROP_OPTIONS);
		l4 = ip + 1;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return count(MQLB_ST_PASS, XDP_PASS);
		f.family = 6;
		__builtin_memcpy(f.src, &ip6->saddr, 16);
		__builtin_memcpy(f.dst, &ip6->daddr, 16);
		f.proto = ip6->nexthdr;
		if (f.proto == IPPROTO_FRAGMENT)
			return odd_packet(&f, MQLB_ST_DROP_FRAG);
		if (f.proto == IPPROTO_HOPOPTS || f.proto == IPPROTO_ROUTING ||
		    f.proto == IPPROTO_DSTOPTS)
			return odd_packet(&f, MQLB_ST_DROP_OPTIONS);
		l4 = ip6 + 1;
	} else {
		return count(MQLB_ST_PASS, XDP_PASS);
	}

	if (f.proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > end)
			return count(MQLB_ST_PASS, XDP_PASS);
		f.sport = th->source;
		f.dport = th->dest;
		syn = th->syn && !th->ack;
	} else if (f.proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > end)
			return count(MQLB_ST_PASS, XDP_PASS);
		f.sport = uh->source;
		f.dport = uh->dest;
	} else {
		return count(MQLB_ST_PASS, XDP_PASS);
	}

	if (!vip_port(f.dport))
		return count(MQLB_ST_PASS, XDP_PASS);
	/* The fast path: an established flow needs no VIP lookup. A SYN is a
	 * new connection, whatever an old entry says: that is how a drained
	 * real stops getting new flows with reused ports. */
	if (!syn)
		real = established(&f, &vnum);
	if (!real) {
		__u32 slot, *rp, *gen;

		__builtin_memcpy(vk.addr, f.dst, sizeof vk.addr);
		vk.port = f.dport;
		vk.proto = f.proto;
		vk.family = f.family;
		vip = bpf_map_lookup_elem(&vips, &vk);
		if (!vip || (vip->flags & MQLB_VIP_ADDR) || vip->num >= MQLB_MAX_VIPS)
			return count(MQLB_ST_PASS, XDP_PASS);
		vnum = vip->num;
		vs = bpf_map_lookup_elem(&vip_stats, &vnum);
		gen = bpf_map_lookup_elem(&vipgen, &vnum);
		slot = vnum * ring_size + mqlb_flow_hash(&f, vip->flags & MQLB_VIP_SRC_HASH) % ring_size;
		rp = bpf_map_lookup_elem(&ring, &slot);
		count(MQLB_ST_LRU_MISS, 0);
		if (!syn && f.proto == IPPROTO_TCP)
			count(MQLB_ST_MISS_NOT_SYN, 0);
		if (vs)
			vs->lru_misses++;
		if (!rp || !*rp || *rp >= MQLB_MAX_REALS || !gen)
			return count(MQLB_ST_DROP_NO_REAL, XDP_DROP);
		real = *rp;
		nc.real = real;
		nc.vip = vnum;
		nc.gen = *gen;
		if (f.family == 4) {
			struct mqlb_flow4 k4 = flow4(&f);

			bpf_map_update_elem(&conns4, &k4, &nc, BPF_ANY);
			fcache_put(&k4, &nc);
		} else {
			bpf_map_update_elem(&conns6, &f, &nc, BPF_ANY);
		}
		count(MQLB_ST_NEW_FLOWS, 0);
	}
	r = bpf_map_lookup_elem(&reals, &real);
	cfg = bpf_map_lookup_elem(&config, &zero);
	if (!r || !(r->flags & MQLB_REAL_VALID) || !cfg)
		return count(MQLB_ST_DROP_NO_REAL, XDP_DROP);
	/* An established flow's packet is counted once, here: the loader
	 * makes lru_hits of packets - new_flows. */
	vs = bpf_map_lookup_elem(&vip_stats, &vnum);
	if (vs) {
		vs->packets++;
		vs->bytes += len;
		if (nc.real)
			vs->new_flows++;
	}
	rs = bpf_map_lookup_elem(&real_stats, &real);
	if (rs) {
		rs->packets++;
		rs->bytes += len;
		if (nc.real)
			rs->new_flows++;
	}

	if (encap == MQLB_ENCAP_IPIP) {
		int v = f.family == 4 ? encap4(ctx, r, cfg) : encap6(ctx, r, cfg);

		return v == XDP_TX ? count(MQLB_ST_FWD, XDP_TX) : v;
	}
	/* Direct routing: the real has the VIP on lo; only the MACs change. */
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, r->mac, ETH_ALEN);
	return count(MQLB_ST_FWD, XDP_TX);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";

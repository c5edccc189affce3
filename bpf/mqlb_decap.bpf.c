/* SPDX-License-Identifier: (MIT OR GPL-2.0) */
/* mqlb_decap.bpf.c: IPIP and IPv6-in-IPv6 decapsulation in XDP for the
 * broker hosts behind mqlb-xdp --encap ipip (no ipip module needed). */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "mqlb_kern_user.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MQLB_ST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline int count(__u32 what, int verdict)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &what);

	if (v)
		*v += 1;
	return verdict;
}

/* Drop the outer header: move the Ethernet header forward over it, then
 * let the stack see the inner packet as if it had arrived that way. */
static __always_inline int strip(struct xdp_md *ctx, int outer, __u16 proto)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data, *neth;
	struct ethhdr copy;

	if ((void *)(eth + 1) > end)
		return count(MQLB_ST_DECAP_PASS, XDP_PASS);
	__builtin_memcpy(&copy, eth, sizeof copy);
	if (bpf_xdp_adjust_head(ctx, outer))
		return count(MQLB_ST_DROP_BAD, XDP_DROP);
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	neth = data;
	if ((void *)(neth + 1) > end)
		return count(MQLB_ST_DROP_BAD, XDP_DROP);
	__builtin_memcpy(neth->h_dest, copy.h_dest, ETH_ALEN);
	__builtin_memcpy(neth->h_source, copy.h_source, ETH_ALEN);
	neth->h_proto = bpf_htons(proto);
	return count(MQLB_ST_DECAP, XDP_PASS);
}

SEC("xdp")
int mqlb_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return count(MQLB_ST_DECAP_PASS, XDP_PASS);
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1), *in = (void *)(ip + 1);

		/* Fragmented or optioned outer headers go to the stack as they are. */
		if ((void *)(in + 1) > end || ip->protocol != IPPROTO_IPIP || ip->ihl != 5 ||
		    (ip->frag_off & bpf_htons(0x3fff)) || in->version != 4)
			return count(MQLB_ST_DECAP_PASS, XDP_PASS);
		return strip(ctx, sizeof(struct iphdr), ETH_P_IP);
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1), *in = (void *)(ip6 + 1);

		if ((void *)(in + 1) > end || ip6->nexthdr != IPPROTO_IPV6 || in->version != 6)
			return count(MQLB_ST_DECAP_PASS, XDP_PASS);
		return strip(ctx, sizeof(struct ipv6hdr), ETH_P_IPV6);
	}
	return count(MQLB_ST_DECAP_PASS, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* SPDX-License-Identifier: (MIT OR GPL-2.0) */
/* xdp_pass.bpf.c: passes every packet. The tests attach it to the veth
 * peer of an XDP_TX interface, which only receives with an XDP program. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";

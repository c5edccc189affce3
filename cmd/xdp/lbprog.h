/* SPDX-License-Identifier: MIT */
/* lbprog.h: which program of bpf/mqlb_xdp.bpf.c a loader loads and attaches:
 * the one of its encapsulation; the other is not loaded. */
#ifndef MQLB_LBPROG_H
#define MQLB_LBPROG_H

#include "mqlb_kern_user.h"
#include "mqlb_xdp.skel.h"

/* Call it between open and load, with the encap the .rodata gets. */
static inline struct bpf_program *lb_prog(struct mqlb_xdp_bpf *sk, __u32 encap)
{
	int ipip = encap == MQLB_ENCAP_IPIP;

	bpf_program__set_autoload(ipip ? sk->progs.mqlb_xdp : sk->progs.mqlb_xdp_ipip, false);
	return ipip ? sk->progs.mqlb_xdp_ipip : sk->progs.mqlb_xdp;
}

#endif
